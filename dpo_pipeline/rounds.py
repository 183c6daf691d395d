"""Iterative DPO's conventions, written once: what round k's stages are called, where its files go, what its
model is named in eval.json, and which adapters make its policy.

Round 1 is the pipeline's own sample -> judge -> train stages and files (`paths.samples`, `paths.dpo_model`,
...), so `rounds: 1` is the plain pipeline. Round k > 1 has stages sample_r<k>, judge_r<k>, train_r<k>
(`python -m tools.rounds` writes them into dvc.yaml) and its files in <paths.rounds>/<k>/. Its policy is the SFT
model with the adapters of rounds 1..k applied in turn: each round trains a fresh LoRA on top of the previous
round's merged policy.
"""

from __future__ import annotations

import re
from pathlib import Path

from dpo_pipeline.config import Params, Paths
from dpo_pipeline.errors import UserError

STAGES = ("sample", "judge", "train")  # the stages every round has
# What a round writes, by the `paths` key round 1 writes it under: round k's are <paths.rounds>/<k>/<file>.
FILES = {"samples": "samples.jsonl", "preferences": "preferences.jsonl", "judgments": "judgments.jsonl",
         "judge_metrics": "judge.json",
         "train_metrics": "train.json", "dpo_model": "dpo", "train_live": "train_live"}


def stage_name(stage: str, k: int) -> str:
    return stage if k == 1 else f"{stage}_r{k}"


def model_key(k: int) -> str:
    """Round k's policy in eval.json and eval_outputs.jsonl: "dpo" (round 1, as always), "dpo_r2", ..."""
    return "dpo" if k == 1 else f"dpo_r{k}"


def round_of(key: str) -> int | None:
    """model_key's inverse; None for "base" and "sft"."""
    if key == "dpo":
        return 1
    m = re.fullmatch(r"dpo_r(\d+)", key)
    return int(m.group(1)) if m and int(m.group(1)) > 1 else None


def round_paths(paths: Paths, k: int) -> Paths:
    """The paths the round-k stages read and write: round 1's are the pipeline's own. `paths` is params.yaml's
    (round 1's), never another round's."""
    if k == 1:
        return paths
    return paths.model_copy(update={key: f"{paths.rounds}/{k}/{file}" for key, file in FILES.items()})


def adapters(paths: Paths, k: int) -> list[str]:
    """The DPO adapters whose application to the SFT model, in order, is round k's policy (k = 0: none);
    `paths` is params.yaml's."""
    return [round_paths(paths, j).dpo_model for j in range(1, k + 1)]


def declared(dvc_yaml: str | Path = "dvc.yaml") -> int | None:
    """How many rounds dvc.yaml has stages for (1 + its train_r<k> stages); None without a dvc.yaml (a stage
    run on its own, outside the pipeline)."""
    import yaml

    if not Path(dvc_yaml).exists():
        return None
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    return 1 + sum(1 for name in stages if re.fullmatch(r"train_r\d+", name))


def check(params: Params, k: int) -> None:
    """A round-k stage (`--round k`) runs only while params.yaml asks for k rounds (dvc.yaml may still have an
    old round's stages: `python -m tools.rounds` rewrites them)."""
    if k > params.rounds:
        raise UserError(f"--round {k}: params.yaml's rounds is {params.rounds}, so there is no round {k}; run "
                        "`python -m tools.rounds` to write dvc.yaml's round stages for params.yaml's rounds (or "
                        f"`python -m tools.rounds {k}` for {k} rounds)")


def check_declared(params: Params, dvc_yaml: str | Path = "dvc.yaml") -> None:
    """eval and report compare params.yaml's rounds with dvc.yaml's round stages: `dvc exp run -S rounds=3`
    alone cannot add stages (DVC does not generate stages from a param)."""
    n = declared(dvc_yaml)
    if n is not None and n != params.rounds:
        raise UserError(f"params.yaml: rounds is {params.rounds} but dvc.yaml has stages for {n} round"
                        f"{'s' if n > 1 else ''}; run `python -m tools.rounds {params.rounds}` (it writes the "
                        "round stages into dvc.yaml), then `dvc repro`")


def prompt_block(params: Params, k: int, n_pool: int) -> slice:
    """Which prompts of prompts.jsonl round k samples: round 1's (the first sample.max_prompts, or all),
    again (iterate.prompts reuse), or the k-th block of sample.max_prompts (fresh)."""
    n = params.sample.max_prompts
    if k == 1 or params.iterate.prompts == "reuse":
        return slice(0, n)
    if n is None or k * n > n_pool:
        have = "all of them" if n is None else f"{n} a round"
        raise UserError(f"iterate.prompts fresh: round {k} needs new prompts but prompts.jsonl has {n_pool} and "
                        f"sample.max_prompts takes {have}; set sample.max_prompts <= {n_pool // params.rounds} "
                        "or iterate.prompts reuse")
    return slice((k - 1) * n, k * n)
