"""The generation engine seam: every `generation.engine` name resolves to an Engine through the one registry,
an unknown name is refused by config in one line, and the transformers engine generates from exactly the
weights the stages generate from (base, SFT, round k merged, or with its own adapter unmerged as eval measures
its KL). The vLLM engine's own tests are in test_vllm.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from dpo_pipeline.config import GenerationParams, load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.models.engines.base import BASE, SFT, Decoding, Engine, Job, Policy
from dpo_pipeline.models.engines.registry import ENGINES, make_engine

ROOT = Path(__file__).resolve().parents[1]


def with_engine(name: str, num_processes: int = 1):
    params = load_params(ROOT / "params.yaml")
    # vllm_python must exist for the vLLM engine to be built; nothing is run with it here
    return params.model_copy(update={
        "generation": params.generation.model_copy(update={"engine": name, "vllm_python": sys.executable}),
        "sample": params.sample.model_copy(update={"num_processes": num_processes})})


def test_the_registry_resolves_every_engine_name_config_allows():
    names = get_args(GenerationParams.model_fields["engine"].annotation)
    assert sorted(ENGINES) == sorted(names) == ["transformers", "vllm"]
    for name in names:
        engine = make_engine(with_engine(name), "sample")
        assert isinstance(engine, Engine) and type(engine) is ENGINES[name] and engine.name == name
        assert engine.settings == engine.params.sample  # the section's batch size and processes


def test_an_unknown_engine_is_refused_by_config_in_one_line(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generation"]["engine"] = "sglang"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == (f"{tmp_path / 'params.yaml'}: generation.engine: Input should be 'transformers' or "
                              "'vllm' (got 'sglang')")


def test_processes_the_stage_runs_as():
    """transformers: num_processes processes under torchrun, a share of the batches each; vLLM: one process
    that starts num_processes engines itself (a GPU each; here, on no GPU, any number)."""
    import torch

    assert make_engine(with_engine("transformers", 2), "sample").processes == 2
    if not torch.cuda.is_available():
        assert make_engine(with_engine("vllm", 2), "sample").processes == 1


def test_policy_names_are_eval_model_keys():
    assert [p.name for p in (BASE, SFT, Policy(1), Policy(2, unmerged=True))] == ["base", "sft", "dpo", "dpo_r2"]


@pytest.fixture(scope="module")
def rounds_workdir(tmp_path_factory):
    """A tiny Qwen2 base, an SFT adapter and two rounds' DPO adapters, each nudged enough to change outputs."""
    from dpo_pipeline.rounds import adapters
    from tests.support.models import save_adapter_for, save_tiny

    work = tmp_path_factory.mktemp("engines")
    base = save_tiny("qwen2", work / "base")
    params = with_engine("transformers")
    paths = params.paths.model_copy(update={"base_model": str(base), "sft_model": str(work / "sft"),
                                            "dpo_model": str(work / "dpo"), "rounds": str(work / "rounds")})
    for out in [paths.sft_model, *adapters(paths, 2)]:
        save_adapter_for(base, Path(out), nudge=0.3)
    return params.model_copy(update={"paths": paths})


def test_the_transformers_engine_generates_from_the_weights_the_stages_load(rounds_workdir):
    """Jobs on base, SFT and round 2 (merged: later rounds sample from it; unmerged: eval generates and
    measures KL with it), in one call, are what generation.generate gives on those models loaded directly."""
    from peft import PeftModel

    from dpo_pipeline.models.generation import generate
    from dpo_pipeline.models.loading import load_base, load_merged, load_sft, load_tokenizer
    from dpo_pipeline.rounds import adapters

    params, paths = rounds_workdir, rounds_workdir.paths
    prompts = [f"Pager alert. search is unreachable {i}." for i in range(5)]
    decoding = Decoding(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, seed=3)
    policies = [BASE, SFT, SFT, Policy(2), Policy(2, unmerged=True)]
    rows = make_engine(params, "sample").generate([Job(p, prompts, decoding, p.name) for p in policies], "test")
    tokenizer = load_tokenizer(paths)
    models = [load_base(paths), load_sft(paths), load_sft(paths), load_merged(paths, 2),
              PeftModel.from_pretrained(load_merged(paths, 1), adapters(paths, 2)[-1])]
    assert rows == [generate(m.eval(), tokenizer, prompts, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8,
                             batch_size=params.sample.batch_size, seed=3) for m in models]
    assert rows[0] != rows[1] and rows[1] == rows[2]


def test_eval_measures_kl_on_the_weights_the_engine_serves_it(rounds_workdir):
    """round_policies (eval's KL models, built one on another) has round k's weights as load_round builds them
    from scratch, which the transformers engine serves for Policy(k, unmerged=True)."""
    import torch

    from dpo_pipeline.models.loading import load_round, load_sft, round_policies

    paths = rounds_workdir.paths
    seen = []
    for k, (name, model) in enumerate(round_policies(paths, 2, load_sft(paths).eval()), 1):
        expected = load_round(paths, k).state_dict()
        got = model.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[x], expected[x]) for x in got), name
        seen.append(name)
    assert seen == ["dpo", "dpo_r2"]
