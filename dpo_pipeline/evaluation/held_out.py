"""The held-out prompts eval runs on: in no other split of the task's data, and decoded alike by every model
(stages eval_baselines and eval)."""

from __future__ import annotations

from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.engines.base import Decoding


def refuse_overlap(params: Params, rows: list[dict]) -> None:
    """Held-out means held out: an eval prompt that is also an SFT or sampling prompt is refused."""
    files = params.task_files
    # The SFT pairs as stage sft_data copied them (none when the task has no sft.jsonl).
    for path, name in ((params.paths.sft_data, files.sft_data), (files.prompts, files.prompts)):
        seen = {r["prompt"]: r["id"] for r in read_jsonl(path, required=("id", "prompt"), empty=True)}
        for r in rows:
            if r["prompt"] in seen:
                raise UserError(f"{files.eval_prompts}: id {r['id']!r} has the prompt of {name} id "
                                f"{seen[r['prompt']]!r}; held-out prompts must be in no other split")


def decoding(params: Params) -> Decoding:
    """Eval's decoding and seed, the same for every model, so base, SFT and SFT+DPO differ by their weights
    only (every engine seeds each prompt by itself from it)."""
    cfg = params.eval
    return Decoding(cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, params.seed)
