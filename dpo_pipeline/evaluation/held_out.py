"""The held-out prompts eval runs on: in no other split of the task's data, and decoded alike by every model
(stages eval_baselines and eval)."""

from __future__ import annotations

from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl


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


def decode(model, tokenizer, prompts: list[str], params: Params, name: str) -> list[dict]:
    """`name`'s outputs with eval's decoding and seed, the same for every model, so base, SFT and SFT+DPO
    differ by their weights only (with num_processes > 1, a share of the batches each)."""
    from dpo_pipeline.models import parallel

    cfg = params.eval
    return parallel.generate(model, tokenizer, prompts, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=params.seed,
                             label=f"eval {name}")


def requests(prompts: list[str], params: Params, lora: bool = False) -> dict:
    """The same decoding and seeds as `decode`, as one group of vLLM requests (models/engines.py)."""
    cfg = params.eval
    return {"prompts": prompts, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "seed": params.seed, "lora": lora}
