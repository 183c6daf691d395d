"""What each per-model metric of metrics/eval.json is, declared once.

eval computes them, report and figures label and scale them, diagnostics and the gate decide what a
change means, the sweep and the pull-request comment pick the headline ones: all from this list, none
from a metric's name. A new model-level metric is one `Metric` here (and its computation in eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dpo_pipeline.rounds import model_key, round_of
from dpo_pipeline.tasks import Task

MODELS = ("base", "sft", "dpo")
MODEL_LABELS = {"base": "Base", "sft": "SFT", "dpo": "SFT+DPO"}
# Every pair of models is judged in both orders, the first named as "A" (its outcome is the first's):
# eval.json's entries, each a win rate with its CI and its length-controlled twin. DPO vs SFT is the verdict.
PAIRS = {"pairwise_dpo_vs_sft": ("dpo", "sft"), "pairwise_dpo_vs_base": ("dpo", "base"),
         "pairwise_sft_vs_base": ("sft", "base")}
PAIRWISE = "pairwise_dpo_vs_sft"


def models(rounds: int = 1) -> tuple[str, ...]:
    """The models eval compares: base, SFT, round 1's SFT+DPO, then each later round's policy."""
    return MODELS + tuple(model_key(k) for k in range(2, rounds + 1))


def pairs(rounds: int = 1) -> dict[str, tuple[str, str]]:
    """PAIRS, then for each later round: that round vs SFT, and vs the round before (did it still help?)."""
    out = dict(PAIRS)
    for k in range(2, rounds + 1):
        out[vs_sft_key(k)] = (model_key(k), "sft")
        out[vs_before_key(k)] = (model_key(k), model_key(k - 1))
    return out


def vs_sft_key(k: int) -> str:
    """Round k's policy against SFT in eval.json: round 1's is PAIRWISE, the verdict."""
    return f"pairwise_{model_key(k)}_vs_sft"


def vs_before_key(k: int) -> str:
    """Round k > 1's policy against the round before's in eval.json."""
    return f"pairwise_{model_key(k)}_vs_{model_key(k - 1)}"


def model_label(name: str) -> str:
    """"SFT+DPO" for round 1 (as ever), "DPO round 2" for later rounds."""
    return MODEL_LABELS.get(name) or f"DPO round {round_of(name)}"


def pair_label(key: str) -> str:
    """"SFT+DPO vs SFT"."""
    first, second = PAIRS.get(key) or pair_models(key)
    return f"{model_label(first)} vs {model_label(second)}"


def pair_models(key: str) -> tuple[str, str]:
    """"pairwise_dpo_r3_vs_dpo_r2" -> ("dpo_r3", "dpo_r2")."""
    first, second = key.removeprefix("pairwise_").split("_vs_")
    return first, second


@dataclass(frozen=True)
class Metric:
    key: str            # the entry in eval.json: {key: {base, sft, dpo}}
    label: str          # for tables and charts
    # rate: share in [0, 1]; score: the judge's 1-5; reward: a reward model's float, on its own scale; count: a mean
    kind: Literal["rate", "score", "reward", "count"]
    source: Literal["heuristic", "judge"]    # computed from the text, or asked of the judge
    higher_is_better: bool | None            # None: neither (a length is not better or worse by itself)
    field: str = ""     # the per-response field averaged (eval_outputs.jsonl); defaults to key

    @property
    def name(self) -> str:
        """How prose names it: "severity match"."""
        return self.key.replace("_", " ")

    @property
    def scale(self) -> tuple[float, float] | None:
        """Its bounds; None: unbounded (a count, a reward)."""
        return {"rate": (0.0, 1.0), "score": (1.0, 5.0)}.get(self.kind)

    @property
    def per_prompt(self) -> bool:
        """Averaged over prompts with a bootstrap CI, and compared DPO vs SFT prompt by prompt."""
        return self.kind in ("rate", "score", "reward")

    @property
    def source_field(self) -> str:
        return self.field or self.key


FAITHFULNESS = Metric("faithfulness", "Faithfulness (judge, 1-5)", "score", "judge", True)
# A reward model gives a float on its own scale and no reason: its mean reward stands where the 1-5
# faithfulness would, under its own name, never converted to 1-5 (docs/judge.md).
REWARD = Metric("reward", "Reward (reward model, mean)", "reward", "judge", True)
JUDGED = {"score": FAITHFULNESS, "reward": REWARD}  # by what the judge answers pointwise (Judge.pointwise)
LENGTH = Metric("mean_tokens", "Mean length (tokens)", "count", "heuristic", None, field="tokens")


def model_metrics(task: Task, judged: Metric = FAITHFULNESS) -> list[Metric]:
    """eval.json's per-model metrics in display order: the task's rates (its METRICS, each a heuristic rate
    in [0, 1], higher better), the judge's pointwise metric (`judged`: faithfulness 1-5, or a reward model's
    mean reward), the mean length."""
    return [Metric(key, label, "rate", "heuristic", True) for key, label in task.METRICS.items()] + \
        [judged, LENGTH]


def judged_metric(found: dict) -> Metric:
    """The judge's pointwise metric that an eval.json (or one model's entry of an eval_outputs.jsonl record)
    holds: a reward model's reward, else faithfulness."""
    return REWARD if REWARD.key in found else FAITHFULNESS


def headline(metrics: list[Metric]) -> list[Metric]:
    """The metrics a change is judged by (gate, diagnostics, sweep, PR comment): those with a direction."""
    return [m for m in metrics if m.higher_is_better is not None]


# The judge's reliability rates in eval.json's `judge_reliability` (dpo_pipeline/judging/reliability.py computes
# them): label, and whether higher is better. All are shares in [0, 1] of the judge's own answers.
RELIABILITY = {
    "position_flip_rate": ("Position flip rate", False),
    "self_consistency": ("Self-consistency", True),
    "truth_agreement": ("Agreement with ground truth", True),
    "reference_agreement": ("Agreement with the rubric", True),
}
