"""reports/report.html: the page a user opens first to read every preference pair and eval answer. Units on
what it embeds, then the page in headless Chromium: the committed default run's page, and a page built here
from rows whose filters' answers are known."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import PAIRWISE, model_metrics, models
from dpo_pipeline.reporting.page import (NEAR_IDENTICAL, TEMPLATE, page_data, pair_rows, similarity, write_page)
from dpo_pipeline.tasks import get_task
from tests.support.page import Page

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
PATHS = PARAMS.paths
DEFAULT_PAGE = ROOT / PATHS.reports / "report.html"
SCREENSHOTS = ROOT / "docs" / "images"


def committed(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


# --- what the page embeds ------------------------------------------------------------------------------------

def sample(id_: str, a: str, b: str) -> dict:
    return {"id": id_, "prompt": f"prompt {id_}", "responses": [{"text": a, "temperature": 0.7, "tokens": 3},
                                                                {"text": b, "temperature": 1.2, "tokens": 3}]}


def pref(id_: str, chosen: str, rejected: str, **extra) -> dict:
    return {"id": id_, "prompt": [{"role": "user", "content": f"prompt {id_}"}],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
            "chosen_temperature": 1.2, "rejected_temperature": 0.7, "judge": "rubric", "reason": "B follows", **extra}


def judgment(id_: str, kept: bool, winner: str | None, dropped: str | None = None) -> dict:
    return {"id": id_, "picks": [0, 1], "kept": kept, "dropped": dropped, "winner": winner,
            "orders": [{"winner": winner, "reason": "first"}, {"winner": {"A": "B", "B": "A"}.get(winner, winner),
                                                               "reason": "second"}]}


def test_near_identical_is_shared_words_not_characters():
    assert similarity("a b c d e f g h i j", "a b c d e f g h i k") == 0.9
    assert similarity("SEV1 outage", "SEV3 outage") == 0.5
    assert similarity("", "") == 1.0


def test_a_kept_pair_is_chosen_vs_rejected_and_a_dropped_one_its_candidates():
    samples = [sample("p1", "old answer", "new answer"), sample("p2", "same", "same words here")]
    rows = pair_rows([pref("p1", "new answer", "old answer")],
                     [judgment("p1", True, "B"), judgment("p2", False, "tie", "position")], samples, PATHS)
    kept, dropped = rows
    # The judge preferred candidate B (T=1.2), shown on the left as chosen: so "A" was the right-hand column.
    assert (kept["a"], kept["b"], kept["ta"], kept["aLeft"], kept["dropped"]) == ("new answer", "old answer", 1.2,
                                                                                  False, None)
    assert (dropped["a"], dropped["b"], dropped["dropped"], dropped["aLeft"]) == ("same", "same words here",
                                                                                  "position", True)
    # Label noise swapped chosen and rejected: the left column is now the judge's loser, candidate A.
    flipped = pair_rows([pref("p1", "old answer", "new answer", label_flipped=True)], [judgment("p1", True, "B")],
                        samples, PATHS)[0]
    assert flipped["flipped"] and flipped["aLeft"]


def test_judgments_of_another_run_name_the_files():
    with pytest.raises(UserError, match=re.escape(f"{PATHS.judgments}: 'p9' is not in {PATHS.preferences}")):
        pair_rows([pref("p1", "x", "y")], [judgment("p9", True, "A")], [], PATHS)


def synthetic(n_eval: int, n_pairs: int, words: int = 12, seed: int = 0) -> tuple[dict, list[dict], list[dict]]:
    """The committed eval metrics (the headline table), with eval rows and pairs made up: every outcome,
    metric change and length difference known."""
    rng = random.Random(seed)
    metrics = model_metrics(get_task(PARAMS.task))
    text = lambda k: " ".join(f"w{rng.randrange(50)}" for _ in range(k))  # noqa: E731
    records = []
    for i in range(n_eval):
        answers = {name: {"text": text(words), "tokens": rng.randrange(20, 40),
                          **{m.source_field: rng.choice([0.0, 1.0]) for m in metrics if m.kind == "rate"},
                          "faithfulness": rng.randrange(1, 6)} for name in models()}
        records.append({"id": f"eval-{i:05d}", "prompt": f"incident {i}: {text(6)}", **answers,
                        **{k: {"outcome": rng.choice(["win", "loss", "tie"]), "reason": "because"}
                           for k in ("pairwise_dpo_vs_sft", "pairwise_dpo_vs_base", "pairwise_sft_vs_base")}})
    pairs = []
    for i in range(n_pairs):
        a = text(words)
        b = a if i % 7 == 0 else text(words)  # every 7th near-identical (the same words)
        pairs.append({"id": f"prompts-{i:05d}", "prompt": f"prompt {i}", "a": a, "b": b, "ta": 0.7, "tb": 1.2,
                      "dropped": "position" if i % 11 == 5 else None, "aLeft": True, "winner": "A",
                      "orders": [{"winner": "A", "reason": "r1"}, {"winner": "B", "reason": "r2"}], "reason": None,
                      "flipped": i % 13 == 3, "sim": similarity(a, b)})
    ev, cis, judge = committed(PATHS.eval_metrics), committed(PATHS.eval_ci), committed(PATHS.judge_metrics)
    return page_data(ev, cis, judge, records, pairs, metrics, models(), "sampled", 50), records, pairs


def test_the_size_budget_keeps_every_answer_and_the_worrying_pairs_first(tmp_path):
    data, records, pairs = synthetic(40, 3000, words=60)
    metrics = model_metrics(get_task(PARAMS.task))
    ev, cis, judge = committed(PATHS.eval_metrics), committed(PATHS.eval_ci), committed(PATHS.judge_metrics)
    whole = write_page(tmp_path / "whole.html", data, "t")
    budget = whole / 3 / 1e6
    small = page_data(ev, cis, judge, records, pairs, metrics, models(), "sampled", budget)
    size = write_page(tmp_path / "small.html", small, "t")
    assert size <= budget * 1e6 and len(small["eval"]) == 40
    shown = {p["id"] for p in small["pairs"]}
    worrying = {p["id"] for p in pairs if p["dropped"] == "position" or p["flipped"] or p["sim"] >= NEAR_IDENTICAL}
    assert worrying <= shown and 0 < len(shown) < len(pairs)
    assert small["judge"]["shown"] == len(shown) and small["judge"]["total"] == len(pairs)


def test_the_page_fetches_nothing_and_the_same_run_writes_the_same_bytes(tmp_path):
    template = TEMPLATE.read_text()
    # Any of these would make the browser fetch something: the page must open offline, from a CI artifact.
    for fetching in (r"\bsrc\s*=", r"https?://", r"\bfetch\(", "XMLHttpRequest", r"@import", r"url\("):
        assert not re.search(fetching, template), fetching
    data, _, _ = synthetic(5, 5)
    assert write_page(tmp_path / "a.html", data, "t") == write_page(tmp_path / "b.html", data, "t")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


# --- in a real browser -------------------------------------------------------------------------------------

@pytest.fixture
def default_page():
    page = Page(DEFAULT_PAGE)
    yield page
    page.close()


def test_the_default_runs_page_shows_every_eval_prompt_and_pair(default_page, tmp_path):
    """The committed page of the defaults against the committed metrics of the same run: every held-out
    prompt, every kept pair and every judged prompt, the verdict counts the eval JSONL adds up to."""
    page, ev, judge = default_page, committed(PATHS.eval_metrics), committed(PATHS.judge_metrics)
    assert page.console() == []
    held_out = [json.loads(line)["id"] for line in
                (ROOT / PARAMS.task_files.eval_prompts).read_text().splitlines()][:ev["n_prompts"]]
    assert page.ids("eval") == held_out
    assert "Severity match" in page.driver.find_element("id", "headline").text
    page.click("#tab-pairs")
    kept = page.ids("pairs")
    assert len(kept) == len(set(kept)) == judge["pairs"]
    page.click("#pairs-status button[data-val='all']")
    assert page.count("pairs") == judge["prompts"]
    page.click("#pairs-status button[data-val='identical']")
    assert page.count("pairs") == judge["usage"]["identical_skipped"]
    page.click("#pairs-status button[data-val='kept']")
    shot(page, tmp_path, "report-pairs.png")
    page.click("#tab-eval")
    for outcome, counted in (("loss", "losses"), ("win", "wins"), ("tie", "ties")):
        page.click(f"#eval-outcome button[data-val='{outcome}']")
        assert page.count("eval") == ev[PAIRWISE][counted]
        if outcome == "win":  # the picture: where DPO changed an answer for the better
            shot(page, tmp_path, "report-page.png")
    local = ROOT / PATHS.eval_outputs  # the JSONL itself where this checkout has the run's artifacts
    if local.exists() and local.stat().st_mtime <= DEFAULT_PAGE.stat().st_mtime:
        rows = [json.loads(line) for line in local.read_text().splitlines()]
        page.click("#eval-outcome button[data-val='loss']")
        assert page.ids("eval") == [r["id"] for r in rows if r[PAIRWISE]["outcome"] == "loss"]
    assert page.console() == []


def shot(page: Page, tmp_path: Path, name: str) -> None:
    """Every run takes the picture; UPDATE_SCREENSHOTS=1 makes it the one the README and docs show."""
    page.driver.execute_script("window.scrollTo(0, 0)")
    page.driver.save_screenshot(str(tmp_path / name))
    assert (tmp_path / name).stat().st_size > 10_000  # a blank page is a few kB
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, SCREENSHOTS / name)


def test_each_filter_leaves_exactly_the_rows_it_names(tmp_path):
    data, records, pairs = synthetic(130, 260)
    write_page(tmp_path / "report.html", data, "synthetic")
    page = Page(tmp_path / "report.html")
    try:
        assert page.ids("eval") == [r["id"] for r in records]
        page.click("#eval-outcome button[data-val='loss']")
        assert page.ids("eval") == [r["id"] for r in records if r[PAIRWISE]["outcome"] == "loss"]
        # Severity right under SFT, wrong under SFT+DPO, among the losses.
        select = page.driver.find_element("id", "eval-metric")
        select.find_element("css selector", "option[value='severity_match:worse']").click()
        assert page.ids("eval") == [r["id"] for r in records if r[PAIRWISE]["outcome"] == "loss"
                                    and r["sft"]["severity_match"] == 1 and r["dpo"]["severity_match"] == 0]
        select.find_element("css selector", "option[value='']").click()
        page.click("#eval-outcome button[data-val='all']")
        length = page.driver.find_element("id", "eval-len")
        length.clear()
        length.send_keys("10")
        assert page.ids("eval") == [r["id"] for r in records if abs(r["dpo"]["tokens"] - r["sft"]["tokens"]) >= 10]
        length.clear()
        page.driver.find_element("id", "eval-search").send_keys("incident 12:")
        assert page.ids("eval") == ["eval-00012"]

        page.click("#tab-pairs")
        assert page.ids("pairs") == [p["id"] for p in pairs if p["dropped"] is None]
        page.click("#pairs-status button[data-val='position']")
        assert page.ids("pairs") == [p["id"] for p in pairs if p["dropped"] == "position"]
        page.click("#pairs-status button[data-val='all']")
        page.click("#pairs-flipped")
        assert page.ids("pairs") == [p["id"] for p in pairs if p["flipped"]]
        page.click("#pairs-flipped")
        page.click("#pairs-near")
        assert page.ids("pairs") == [p["id"] for p in pairs if p["sim"] >= NEAR_IDENTICAL]

        # A permalink opens its prompt's page whatever the filters were, the card marked.
        page.open((tmp_path / "report.html").resolve().as_uri() + "#eval/eval-00123")
        card = page.driver.find_element("css selector", "#eval-list .card.target")
        assert card.get_attribute("data-id") == "eval-00123" and card.is_displayed()
        assert page.console() == []
    finally:
        page.close()


def test_a_permalink_opens_its_card_just_below_the_filter_bar_and_the_diff_takes_no_side(tmp_path):
    """At 1400x1000 a permalinked card's header is just below the sticky filter bar: not under it, and not a
    band lower. The words one answer lacks are highlighted alike in both columns, the legend says so."""
    data, _, pairs = synthetic(30, 260, words=40)
    write_page(tmp_path / "report.html", data, "synthetic")
    page = Page(tmp_path / "report.html", width=1400, height=1000)
    try:
        for link in ("pair/prompts-00120", "pair/prompts-00003", "eval/eval-00012"):  # none the last of its page
            page.open((tmp_path / "report.html").resolve().as_uri() + f"#{link}")
            card, header, bar = page.driver.execute_script(
                "const c = document.querySelector('.card.target'), v = c.closest('section');"
                "return [c.id, c.querySelector('.top').getBoundingClientRect().top,"
                "        v.querySelector('.bar').getBoundingClientRect().bottom];")
            assert card == link and bar <= header <= bar + 16, (link, header, bar)

        page.open((tmp_path / "report.html").resolve().as_uri() + "#pair/prompts-00001")
        chosen, rejected = page.driver.find_elements("css selector", "#pairs-list .card.target pre")
        pair = next(p for p in pairs if p["id"] == "prompts-00001")
        for col, mine, other in ((chosen, pair["a"], pair["b"]), (rejected, pair["b"], pair["a"])):
            marked = {m.text for m in col.find_elements("tag name", "mark")}
            assert set(mine.split()) - set(other.split()) <= marked <= set(mine.split())
        colours = {m.value_of_css_property("background-color") for m in
                   page.driver.find_elements("css selector", "#pairs-list .card.target mark")}
        assert len(colours) == 1  # one highlight: neither side reads as the wrong one
        assert not page.driver.find_elements("css selector", "#pairs-list ins, #pairs-list del")
        legend = page.driver.find_element("id", "pairs-legend")
        assert legend.find_element("tag name", "mark").value_of_css_property("background-color") in colours
        assert "not the colour, says which answer the judge chose" in legend.text
        assert page.console() == []
    finally:
        page.close()
