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


def length_controlled(outcomes: list[float], length_diffs: list[float], samples: int, seed: int,
                      level: float = 0.95) -> dict:
    """The win rate with the length difference controlled for, AlpacaEval 2 style.

    A logistic model of each prompt's outcome (win 1, tie 0.5, loss 0) on x = tanh(d / sd(d)), d = the
    first model's response length minus the second's: P(win) = sigmoid(a + b x). The length-controlled win
    rate is the model's prediction at equal lengths, sigmoid(a); b is how much the judge's verdicts follow
    length. With a CI from refitting on prompts resampled with replacement (seeded, like `bootstrap_ci`).
    """
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    a, b = _fit_logistic(x[None, :], y[None, :])
    idx = np.random.default_rng(seed).integers(0, len(y), size=(samples, len(y)))
    boot_a, _ = _fit_logistic(x[idx], y[idx])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(_sigmoid(boot_a), [tail, 100 - tail])
    return {"lc_win_rate": round(float(_sigmoid(a[0])), 4), "lc_ci_low": round(float(lo), 4),
            "lc_ci_high": round(float(hi), 4), "length_coef": round(float(b[0]), 4)}


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6, steps: int = 60):
    """Newton's method for sigmoid(a + b x) against soft labels y, one fit per row of (x, y) at once. A small
    ridge keeps a unanimous or separable sample finite (all wins: a ~ 17, sigmoid(a) rounds to 1)."""
    a, b = np.zeros(len(x)), np.zeros(len(x))
    for _ in range(steps):
        p = _sigmoid(a[:, None] + b[:, None] * x)
        r, w = y - p, p * (1 - p)
        ga, gb = r.sum(1) - ridge * a, (r * x).sum(1) - ridge * b
        haa, hab, hbb = w.sum(1) + ridge, (w * x).sum(1), (w * x * x).sum(1) + ridge
        det = haa * hbb - hab * hab
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if max(np.abs(da).max(), np.abs(db).max()) < 1e-9:
            break
    return a, b
