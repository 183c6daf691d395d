"""Small statistics for the eval: pairwise win rate and a bootstrap confidence interval over prompts."""

from __future__ import annotations

import numpy as np

OUTCOME = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def win_rate(outcomes: list[str]) -> float:
    """(wins + ties/2) / n."""
    return float(np.mean([OUTCOME[o] for o in outcomes]))


def bootstrap_ci(values: list[float], samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling prompts with replacement."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def pairwise_summary(outcomes: list[str], samples: int, seed: int) -> dict:
    lo, hi = bootstrap_ci([OUTCOME[o] for o in outcomes], samples, seed)
    return {
        "win_rate": round(win_rate(outcomes), 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
        "wins": outcomes.count("win"),
        "losses": outcomes.count("loss"),
        "ties": outcomes.count("tie"),
        "n": len(outcomes),
    }
