"""Write the report (`paths.reports`/report.md, with its pictures), the page to read every pair and eval answer
side by side (`paths.reports`/report.html), the DPO adapter's model card with the eval
(`paths.reports`/model_card.md) and `paths.headline` (the numbers `dvc exp show` opens with), and
print the 3-way comparison.

    python -m stages.report         (run by `dvc repro` as stage `report`)
    python -m stages.report --show  (print the table of the current metrics; `make run` ends with it)
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.evaluation.schema import PAIRWISE, judged_metric, model_metrics, models
from dpo_pipeline.evaluation.seeds import fingerprint, verdict_line
from dpo_pipeline.files import read_jsonl, write_json, write_text
from dpo_pipeline.reporting.iterative import section
from dpo_pipeline.reporting.page import page_data, pair_rows, write_page
from dpo_pipeline.reporting.tables import headline_metrics, markdown, model_card, print_table
from dpo_pipeline.rounds import check_declared, round_paths
from dpo_pipeline.tasks import get_task


def main(params: Params, show: bool = False) -> None:
    paths, names = params.paths, models(params.rounds)
    ev, cis, judge, train = (json.loads(Path(p).read_text()) for p in (
        paths.eval_metrics, paths.eval_ci, paths.judge_metrics, paths.train_metrics))
    metrics = model_metrics(get_task(params.task), judged_metric(ev))  # a reward model's reward, or faithfulness
    if show:
        return print_table(ev, cis, metrics, names)
    check_declared(params)
    records = read_jsonl(paths.eval_outputs, required=("id", "prompt", *names))
    # Prompts where DPO and SFT were judged different come first: that is where DPO's effect shows.
    changed = [r for r in records if r[PAIRWISE]["outcome"] != "tie"]
    examples = (changed + [r for r in records if r not in changed])[:params.report.examples]
    # The pictures sit next to the report, so the markdown's relative links work wherever it is read.
    from dpo_pipeline.reporting.figures import bars, by_round, curves

    folder = Path(paths.reports)
    folder.mkdir(parents=True, exist_ok=True)
    curves(Path(paths.train_live) / "plots" / "metrics", folder / "training_curves.png")
    bars(ev, cis, metrics, folder / "eval_bars.png")
    rounds = []  # iterative DPO: each round's pairs and training, beside eval's verdicts on it
    if params.rounds > 1:
        rounds = [{"round": k, **{name: json.loads(Path(p).read_text()) for name, p in (
            ("judge", round_paths(paths, k).judge_metrics), ("train", round_paths(paths, k).train_metrics))}}
            for k in range(1, params.rounds + 1)]
        by_round(ev, cis, metrics, [r["train"] for r in rounds], folder / "rounds.png")
    seeds = json.loads(Path(paths.seeds).read_text()) if Path(paths.seeds).exists() else None
    write_text(folder / "report.md", markdown(ev, cis, judge, train, examples, params.report, metrics,
                                              params.preferences.generated,
                                              verdict_line(seeds, fingerprint(params.model_dump())), names,
                                              section(ev, cis, metrics, rounds, params.report) if rounds else []))
    write_json(paths.headline, headline_metrics(ev, metrics, params.train))
    # The adapter's card with the eval it could not know, here: paths.dpo_model is the train stage's output.
    card = (Path(paths.dpo_model) / "README.md").read_text()
    write_text(folder / "model_card.md", model_card(card, ev, cis, judge, metrics, params.preferences.generated,
                                                    names))
    # The page: round 1's pairs (the kept ones, and the dropped ones with their candidates) and every answer.
    pairs = pair_rows(read_jsonl(paths.preferences, required=("id", "prompt", "chosen", "rejected"), strings=("id",)),
                      read_jsonl(paths.judgments, required=("id", "kept", "orders"), empty=True),
                      read_jsonl(paths.samples, required=("id", "prompt", "responses"), empty=True), paths)
    source = "sampled from the SFT model" if params.preferences.generated else params.preferences.source
    size = write_page(folder / "report.html", page_data(ev, cis, judge, records, pairs, metrics, names, source,
                                                        params.report.page_max_mb), "Base vs SFT vs SFT+DPO")
    print(f"report: {folder / 'report.md'}, {folder / 'report.html'} ({size / 1e3:,.0f} kB: every pair and "
          "answer side by side) (the table: python -m stages.report --show)")


if __name__ == "__main__":
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--show", action="store_true", help="print the table of the current metrics; write nothing")
    cli.run(lambda params, args: main(params, show=args.show), parser)
