"""generation.engine vllm: the SFT adapter served as a LoRA request (no merged copy) in the base's engine start,
one seeded request per prompt, reruns byte-identical, and bad settings refused in one line. The engine runs in
the vLLM environment (`make vllm`, which `make test` runs): required in CI, skipped elsewhere when it is missing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.models.generation import prompt_seed
from tests.support.models import TEXTS
from tests.support.stages import run_stage

ROOT = Path(__file__).resolve().parents[1]
VLLM = ROOT / ".venv-vllm" / "bin" / "python"
needs_vllm = pytest.mark.skipif(not VLLM.exists() and not os.environ.get("CI"),
                                reason="no vLLM environment here: `make vllm` creates it (CI always has it)")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A workdir whose models/base is a tiny Llama (head size 32, as vLLM's CPU attention takes) and whose
    models/sft is a LoRA adapter on it, nudged far enough to change what is sampled."""
    from dpo_pipeline.config import ModelParams
    from dpo_pipeline.models.tiny import train_tiny_base
    from tests.support.models import save_adapter_for

    work = tmp_path_factory.mktemp("vllm")
    cfg = ModelParams(base="builtin:tiny", revision=None, sft=None, lora_target_modules="auto", max_length=128,
                      quantization=None,
                      tiny=dict(vocab_size=320, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                                epochs=1, learning_rate=3e-3, batch_size=16, micro_batch_size=None))
    train_tiny_base(TEXTS, cfg, seed=0, out_dir=work / "models" / "base")
    save_adapter_for(work / "models" / "base", work / "models" / "sft", nudge=0.5)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generation"] |= {"engine": "vllm", "vllm_python": str(VLLM), "vllm_kv_cache_gib": 1}
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return {"work": work, "params": load_params(work / "params.yaml")}


def test_the_adapter_is_served_as_a_lora_request_at_its_rank(served, monkeypatch):
    from dpo_pipeline.models.engines.vllm import served_sft

    monkeypatch.chdir(served["work"])
    sft = served_sft(served["params"].paths)
    assert sft == {"model": "models/base", "lora": {"path": str(served["work"] / "models" / "sft"), "rank": 4}}


def test_an_adapter_vllm_cannot_serve_is_refused_naming_why(served, tmp_path):
    from dpo_pipeline.models.engines.vllm import lora

    shutil.copytree(served["work"] / "models" / "sft", tmp_path / "dora")
    cfg = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(UserError, match=r"^model.sft: the adapter in .*dora has DoRA, which vLLM cannot serve; "
                                        r"use generation.engine: transformers$"):
        lora(str(tmp_path / "dora"))


def test_a_missing_vllm_environment_is_one_line_naming_the_fix(served, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(served["work"], work)
    shutil.copytree(ROOT / "data", work / "data")
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["generation"]["vllm_python"] = "no/such/python"
    raw["sample"]["max_prompts"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_stage("sample", work)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: generation.vllm_python: no/such/python not found; "
                                                         "create the vLLM environment with `make vllm` (or set "
                                                         "generation.engine: transformers)")
    assert not (work / "artifacts" / "samples.jsonl").exists()


def test_one_engine_start_serves_base_beside_the_sft_adapter_and_each_round_alone(served, monkeypatch, tmp_path):
    """The stages' jobs cut into engine starts: consecutive jobs on the base and the SFT adapter share one (each
    start loads the model once), a full SFT model and each round's merged policy get their own."""
    from dpo_pipeline.models.engines.base import BASE, SFT, Decoding, Job, Policy
    from dpo_pipeline.models.engines.vllm import starts

    monkeypatch.chdir(served["work"])
    paths = served["params"].paths
    jobs = [Job(p, ["x"], Decoding(1.0, 0, 1.0, 8, 0), p.name)
            for p in (BASE, SFT, SFT, Policy(1), Policy(1), Policy(2, unmerged=True), BASE)]
    assert [[j.name for j in run] for run in starts(paths, jobs)] == [["base", "sft", "sft"], ["dpo", "dpo"],
                                                                      ["dpo_r2"], ["base"]]
    (tmp_path / "full").mkdir()  # a full SFT model: a folder of its own, no adapter_config.json
    full = paths.model_copy(update={"sft_model": str(tmp_path / "full")})
    assert [[j.name for j in run] for run in starts(full, jobs[:3])] == [["base"], ["sft", "sft"]]


@needs_vllm
def test_several_engines_each_answer_their_block_as_one_engine_would(served, monkeypatch):
    """num_processes N with vLLM: the requests in N consecutive blocks, an engine each (a GPU each where there
    are GPUs), in order: block i gets what one engine given block i alone gets."""
    from dpo_pipeline.models.engines import vllm

    monkeypatch.chdir(served["work"])
    params, sft = served["params"], vllm.served_sft(served["params"].paths)
    groups = [{"prompts": [f"Pager alert. {s} is unreachable {i}." for i in range(5)], "temperature": 1.0,
               "top_k": 0, "top_p": 1.0, "max_new_tokens": 12, "seed": 3, "lora": lora}
              for s, lora in (("search", False), ("billing", True))]
    together = vllm.run_groups(params, sft, groups, "test", 2)
    assert together == [vllm.run_groups(params, sft, [g], "test")[0] for g in groups]


@needs_vllm
def test_seeded_per_prompt_lora_applied_and_reruns_byte_identical(served, monkeypatch, capsys):
    from dpo_pipeline.models.engines import vllm
    from dpo_pipeline.models.engines.base import BASE, SFT, Decoding, Job
    from dpo_pipeline.models.engines.registry import make_engine

    monkeypatch.chdir(served["work"])
    params = served["params"]
    prompts = [f"Pager alert. search is unreachable {i}." for i in range(6)]

    def group(ps, seed=5, lora=False):
        return {"prompts": ps, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 16, "seed": seed,
                "lora": lora}

    sft = vllm.served_sft(params.paths)
    groups = [group(prompts), group(prompts, lora=True), group(prompts, seed=6)]
    request = vllm.vllm_request(params, sft, groups)  # each prompt seeded as the transformers engine seeds it
    assert [r["seed"] for r in request["requests"][:6]] == [prompt_seed(5, p) for p in prompts]
    assert [r["lora"] for r in request["requests"]] == [False] * 6 + [True] * 6 + [False] * 6
    first = vllm.run_groups(params, sft, groups, "test")
    base, tuned, reseeded = first
    assert all(0 < r["tokens"] <= 16 for r in base)
    assert reseeded != base  # the seed decides
    assert all(t != b for t, b in zip(tuned, base))  # the adapter changes every response
    # A rerun, through the engine as the stages ask for it (base and SFT in one engine start): byte for byte
    capsys.readouterr()
    jobs = [Job(policy, prompts, Decoding(1.0, 0, 1.0, 16, seed), policy.name)
            for policy, seed in ((BASE, 5), (SFT, 5), (BASE, 6))]
    assert make_engine(params, "sample").generate(jobs, "test") == first
    assert capsys.readouterr().out.count("requests to vLLM") == 1
    # The adapter is applied to its requests only: each group alone gets what it got beside the others.
    assert vllm.run_groups(params, sft, [groups[0]], "test") == [base]
    assert vllm.run_groups(params, sft, [groups[1]], "test") == [tuned]
