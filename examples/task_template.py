"""A task of your own: copy this file, fill in the two required parts, and point params.yaml at it.

    cp examples/task_template.py my_task.py
    dvc exp run -S task.name=my_task -S task.module=my_task.py     (or edit params.yaml's `task` section)

Its data goes in data/my_task/, one JSON object a line:
    policy.md       what a good response is, in words: the judge applies it (Claude reads it as its brief)
    prompts.jsonl   {"id": ..., "prompt": ...}: the prompts preference pairs are sampled from
    eval.jsonl      {"id": ..., "prompt": ...}: held-out prompts, in no other file
    sft.jsonl       {"id": ..., "prompt": ..., "response": ...}: only when the pipeline trains the SFT adapter
                    (model.sft: null) or pre-trains builtin:tiny; not needed with your own model.sft
"""

from __future__ import annotations

# --- required: the heuristic metrics eval computes on every response (key -> label for tables and charts).
# Each is a rate in [0, 1], higher is better. The judge's 1-5 faithfulness and the length are added to them.
METRICS = {
    "format_conformance": "Format conformance",
    "brief": "At most 60 words",
}


def response_metrics(prompt: str, response: str) -> dict[str, float]:
    """Each METRICS key's value for one response (eval refuses any other set of keys)."""
    text = response.strip()
    return {"format_conformance": float(bool(text) and text[-1] in ".!?"),  # a finished sentence
            "brief": float(len(text.split()) <= 60)}


# --- optional hooks: each is needed only in some runs, and a run that needs a missing one stops and names it.
#
# def rubric_score(prompt: str, response: str) -> tuple[int, str]:
#     """judge.backend: rubric (the offline judge) only: a 1-5 score by policy.md and a one-line reason.
#     With it, a Claude run also reports Claude's agreement with this rubric."""
#
# def correct(prompt: str, response: str) -> bool | None:
#     """If your data has a ground truth: is this response right? (None: cannot tell.) The judge's agreement
#     with it is then reported beside its verdicts."""
#
# def pretrain_text(prompt: str, response: str) -> str:
#     """model.base: builtin:tiny only: how an SFT pair reads as raw text for pre-training from scratch."""


# --- optional, in a file of its own: a generator for synthetic data. `python -m tools.make_data` runs
# generate() from my_task_data.py beside this file (it may `from my_task import ...`); no stage runs it, so
# editing it re-runs nothing. dpo_pipeline/tasks/incident_triage_data.py is a worked one.
#
# def generate(seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
#     """The data files {"sft": [...], "prompts": [...], "eval": [...]}, the same bytes for the same arguments."""
