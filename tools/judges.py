"""Judges side by side: two or more judges asked about the same pairs, and how often each two agree, with a 95%
bootstrap CI, so a cheap judge can be checked against a dear one on a sample before paying for all.

    python -m tools.judges --judges rubric reward_model              (50 pairs of paths.samples)
    python -m tools.judges --judges reward_model anthropic --n 200   (Claude on 400 requests: tools.estimate)
    python -m tools.judges --judges rubric reward_model --from preferences --json
    python -m tools.judges --judges anthropic:claude-opus-4-7 openai:qwen2.5-7b@http://127.0.0.1:8000/v1

A judge is BACKEND[:MODEL][@BASE_URL]: params.yaml's judge section with `backend` changed and, where given,
the model (`judge.model` for anthropic and openai, `judge.reward_model` for reward_model) and the server
(anthropic and openai). Without @BASE_URL, a judge of params.yaml's own backend keeps `judge.base_url`; one of
another backend gets the SDK's (ANTHROPIC_BASE_URL / OPENAI_BASE_URL, else the vendor's). The cache, the
prices and the rest are the params'; each paid judge keeps to `judge.max_cost_usd` on its own. The pairs are
a seeded sample (`--seed`, default the params' seed) of `--n` prompts of paths.samples (two distinct
candidates of each) or of the kept pairs of paths.preferences, each shown in a seeded order. A judge that may
favour a position is asked in both orders and a disagreement is a tie, as the stages ask it; a reward model
scores each response once. Two judges agree on a pair when both answered it validly and their verdicts (A, B
or tie) are the same; "decisive" counts only the pairs where neither said tie. The CIs resample the pairs.
Answers are cached as the stages' are, so the pipeline reuses what this paid for.
"""

from __future__ import annotations

import argparse
import json
import random
import typing
from itertools import combinations

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dpo_pipeline import cli
from dpo_pipeline.config import JudgeParams, Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.stats import bootstrap_ci
from dpo_pipeline.files import read_jsonl, read_text
from dpo_pipeline.judging.base import Judge, Judged, pairwise_both_orders
from dpo_pipeline.judging.registry import make_judge
from dpo_pipeline.tasks import get_task

BACKENDS = typing.get_args(JudgeParams.model_fields["backend"].annotation)  # what judge.backend may be
Item = tuple[str, str, str]  # (prompt, response A, response B)


def text(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def sample_pairs(params: Params, source: str, n: int, seed: int) -> list[Item]:
    """`n` pairs (all when there are fewer), each in a seeded order: two distinct candidates of a sampled
    prompt, or a kept preference pair."""
    rng = random.Random(seed)
    if source == "samples":
        rows = read_jsonl(params.paths.samples, required=("prompt", "responses"))
        found = [(r["prompt"], *rng.sample(texts, 2)) for r in rows
                 if len(texts := list(dict.fromkeys(c["text"] for c in r["responses"]))) >= 2]
        where = params.paths.samples
    else:
        rows = read_jsonl(params.paths.preferences, required=("prompt", "chosen", "rejected"), strings=("id",))
        found = [(text(r["prompt"]), text(r["chosen"]), text(r["rejected"])) for r in rows]
        found = [item for item in found if item[1] != item[2]]
        where = params.paths.preferences
    if not found:
        raise UserError(f"{where}: no prompt with two different responses to ask the judges about")
    picked = rng.sample(found, min(n, len(found)))
    return [(p, a, b) if rng.random() < 0.5 else (p, b, a) for p, a, b in picked]


class Spec(typing.NamedTuple):
    """A judge on the command line: BACKEND[:MODEL][@BASE_URL], as written and as parsed."""
    text: str
    backend: str
    model: str | None
    base_url: str | None


def parse_spec(text: str) -> Spec:
    """argparse's `type=` for --judges: the syntax checked before anything is read or asked."""
    backend = text.split("@", 1)[0].split(":", 1)[0]
    rest = text[len(backend):]  # "", ":MODEL...", or "@URL"
    if backend not in BACKENDS:
        raise argparse.ArgumentTypeError(f"{text!r}: the backend is one of {', '.join(BACKENDS)}")
    if backend in ("anthropic", "openai"):
        model, at, url = rest.removeprefix(":").partition("@")
        if at and not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"{text!r}: the server after @ is a URL, e.g. http://127.0.0.1:8000/v1")
        return Spec(text, backend, model or None, url if at else None)
    if backend == "reward_model" and rest.startswith(":"):
        return Spec(text, backend, rest[1:], None)  # a folder's path may hold an @
    if rest:
        why = "the rubric takes no model and no server" if backend == "rubric" \
            else "a reward model takes no server: reward_model:FOLDER_OR_HUB_ID"
        raise argparse.ArgumentTypeError(f"{text!r}: {why}")
    return Spec(text, backend, None, None)


def judge_settings(params: Params, spec: Spec) -> dict:
    """The judge section a spec stands for: params.yaml's with its backend, model and server."""
    changes: dict = {"backend": spec.backend}
    if spec.backend != params.judge.backend:  # params' server is for params' backend
        changes["base_url"] = None
    if spec.model:
        changes["reward_model" if spec.backend == "reward_model" else "model"] = spec.model
    if spec.base_url:
        changes["base_url"] = spec.base_url
    return params.judge.model_dump() | changes


def build(params: Params, spec: Spec) -> Judge:
    """The judge a spec names, validated as params.yaml would be (a priced model, a reward model's folder)."""
    try:
        cfg = JudgeParams.model_validate(judge_settings(params, spec))
    except ValidationError as e:
        raise UserError(f"--judges {spec.text}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return make_judge(cfg, get_task(params.task), read_text(params.task_files.policy))


def agreement(a: list[Judged], b: list[Judged], samples: int, seed: int) -> dict:
    """How often two judges' verdicts are the same, over the pairs both answered validly, and over those where
    neither said tie (decisive), each with its 95% bootstrap CI."""
    def share(same: list[float]) -> dict:
        if not same:
            return {"n": 0, "agreement": None, "ci_low": None, "ci_high": None}
        lo, hi = bootstrap_ci(same, samples, seed)
        return {"n": len(same), "agreement": round(sum(same) / len(same), 4), "ci_low": round(lo, 4),
                "ci_high": round(hi, 4)}

    both = [(x.verdict.winner, y.verdict.winner) for x, y in zip(a, b) if x.verdict and y.verdict]
    return {"all": share([float(x == y) for x, y in both]),
            "decisive": share([float(x == y) for x, y in both if "tie" not in (x, y)])}


def summary(judge: Judge, judged: list[Judged]) -> dict:
    valid = [j.verdict.winner for j in judged if j.verdict is not None]
    return {"answered": len(valid), "ties": valid.count("tie"), "invalid": len(judged) - len(valid),
            "position_flips": sum(not j.consistent for j in judged if j.verdict is not None)
            if judge.positional else None,
            "sent": judge.usage.spending() if judge.remote else "offline, nothing paid"}


def main(params: Params, args: argparse.Namespace) -> None:
    seed = params.seed if args.seed is None else args.seed
    items = sample_pairs(params, args.source, args.n, seed)
    judged, judges = {}, {}
    built = {spec.text: build(params, spec) for spec in args.judges}  # every spec checked before anything is asked
    for spec, judge in built.items():
        judged[spec] = pairwise_both_orders(judge, items)
        judges[spec] = summary(judge, judged[spec])
    result = {"pairs": len(items), "source": args.source, "seed": seed, "judges": judges,
              "agreement": [{"judges": [a, b], **agreement(judged[a], judged[b], params.eval.bootstrap_samples, seed)}
                            for a, b in combinations(built, 2)]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


def show(result: dict) -> None:
    console = Console(width=max(Console().width, 120))
    table = Table(title=f"Judges on the same {result['pairs']} pairs ({result['source']}, seed {result['seed']})")
    for col in ("judge", "answered", "ties", "invalid", "position flips", "sent"):
        table.add_column(col, justify="left" if col in ("judge", "sent") else "right")
    for name, s in result["judges"].items():
        table.add_row(name, str(s["answered"]), str(s["ties"]), str(s["invalid"]),
                      "-" if s["position_flips"] is None else str(s["position_flips"]), s["sent"])
    console.print(table)
    table = Table(title="Agreement (the same verdict: A, B or tie), 95% bootstrap CI over pairs")
    for col in ("judges", "pairs", "agreement", "decisive pairs", "decisive agreement"):
        table.add_column(col, justify="left" if col == "judges" else "right")

    def cell(s: dict) -> str:
        return "-" if s["agreement"] is None else f"{s['agreement']:.1%} [{s['ci_low']:.1%}, {s['ci_high']:.1%}]"

    for row in result["agreement"]:
        table.add_row(" vs ".join(row["judges"]), str(row["all"]["n"]), cell(row["all"]), str(row["decisive"]["n"]),
                      cell(row["decisive"]))
    console.print(table)


class TwoOrMore(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if len(set(values)) < 2:
            parser.error(f"{option_string}: name at least two different judges")
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("--judges", nargs="+", type=parse_spec, required=True, action=TwoOrMore, metavar="JUDGE",
                   help=f"two or more of BACKEND[:MODEL][@BASE_URL], BACKEND one of {', '.join(BACKENDS)}; the rest "
                        "of each judge's settings are params.yaml's")
    p.add_argument("--n", type=cli.arg_type(int, lambda n: n > 0, "a whole number > 0"), default=50,
                   help="pairs to ask about (default: %(default)s)")
    p.add_argument("--from", dest="source", choices=("samples", "preferences"), default="samples",
                   help="two candidates of a sampled prompt, or a kept preference pair (default: %(default)s)")
    p.add_argument("--seed", type=cli.arg_type(int, lambda n: n >= 0, "a whole number >= 0"), default=None,
                   help="which pairs and in which order (default: params.yaml's seed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
