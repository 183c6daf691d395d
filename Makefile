# make run   : create .venv, install pinned dependencies, run the whole pipeline (dvc repro) and print
#              the 3-way table
# make show  : print the table of the current metrics again
# make test  : create .venv, install, run the test suite
# make gate  : the regression gate CI runs after the tests (reproduce, compare, beta sweep)
# make pr-report BASE=<ref> : the markdown diff a pull request gets (the CI workflow posts it)
# make data  : regenerate the shipped data/ files from params.yaml's `data` section
VENV   ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run show test gate pr-report data install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

run: install
	dvc repro
	python -m stages.report --show

show: install
	python -m stages.report --show

test: install
	python -m pytest

# The regression gate (CI runs it after the tests): reproduce the defaults, compare with the committed
# metrics, then sweep beta and check that a higher beta gives a lower KL.
gate: install
	dvc repro
	python -m tools.gate
	dvc exp run --queue -S 'train.beta=0.01,0.5'
	dvc exp run --run-all
	python -m tools.sweep --check

# The pull-request comment: params and metrics diff against BASE (PLOTS=dir also writes the plots diff).
pr-report: install
	@python -m tools.pr_report $(BASE) $(if $(PLOTS),--plots $(PLOTS))

data: install
	python -m tools.make_data

clean:
	rm -rf $(VENV) models artifacts .dvc/tmp
