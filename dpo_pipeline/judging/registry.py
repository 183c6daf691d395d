"""The one place judge backends are named: `judge.backend` -> a Judge. Callers get a Judge and use only its
interface (base.py), so adding a backend is one class and one line here."""

from __future__ import annotations

from dpo_pipeline.config import JudgeParams
from dpo_pipeline.judging.base import Judge
from dpo_pipeline.tasks import Task, need



def make_judge(cfg: JudgeParams, task: Task, policy: str, *, send: bool = True) -> Judge:
    """The configured judge. `send=False` builds one that estimates costs but can send nothing, so it needs
    no API key (tools.estimate)."""
    if cfg.backend == "rubric":
        need(task, "rubric_score")
        return reference_judge(task)
    if cfg.backend == "reward_model":  # imported here: torch and transformers only when a reward model judges
        from dpo_pipeline.judging.reward_model import RewardModelJudge
        return RewardModelJudge(cfg)
    if cfg.backend == "openai":  # any OpenAI-compatible server; a key only where it asks for one
        from dpo_pipeline.judging.openai_compat import OpenAIJudge, api_key_from_env
        return OpenAIJudge(cfg, policy, api_key_from_env(cfg) if send else None)
    # Imported here: the SDK is only needed when Claude judges.
    from dpo_pipeline.judging.claude import AnthropicJudge, api_key_from_env

    return AnthropicJudge(cfg, policy, api_key_from_env() if send else None)


def reference_judge(task: Task) -> Judge | None:
    """The offline, deterministic judge every other backend's agreement is measured against; None for a task
    without `rubric_score` (agreement with it is then reported as None)."""
    from dpo_pipeline.judging.rubric import RubricJudge

    if getattr(task, "rubric_score", None) is None:
        return None
    return RubricJudge(task)
