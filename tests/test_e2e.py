"""End to end: the real pipeline, with dvc, on tiny params, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

TINY = {
    # Big enough that the SFT model writes some valid answers, so the judge finds pairs (~40 of 80).
    "model": {"max_length": 128, "tiny": {"vocab_size": 400, "hidden_size": 96, "num_layers": 2, "num_heads": 2,
                                          "intermediate_size": 192, "epochs": 3, "learning_rate": 5e-3,
                                          "batch_size": 32}},
    "sft": {"epochs": 1},
    "sample": {"max_new_tokens": 48},
    "train": {"epochs": 1, "batch_size": 8, "logging_steps": 1, "eval_steps": 2,
              "eval_fraction": 0.2},
    "eval": {"max_new_tokens": 48, "bootstrap_samples": 200},
}
# Two training processes against one: the pairs arrive in another order, and distributed evaluation pads the
# held-out pairs to a multiple of the process count, so the validation numbers move a little (measured: loss
# 1.511 vs 1.502, margin 0.0061 vs 0.0073, accuracy 0.429 vs 0.438, final KL 0.385 vs 0.384).
TOLERANCE = {"loss": 0.05, "rewards/margins": 0.05, "rewards/accuracies": 0.1}
ROWS = {"sft.jsonl": 800, "prompts.jsonl": 80, "eval.jsonl": 40}  # of every task's shipped files


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()} | \
        {k: v for k, v in base.items() if k not in over}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request) -> Path:
    root = request.config.rootpath
    dest = tmp_path_factory.mktemp("repo")
    for f in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.split():
        if not (root / f).exists():  # deleted in the working tree, not yet committed
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for name, n in ROWS.items():  # smaller data: the head of each shipped file
        for path in (dest / params["paths"]["data"]).glob(f"*/{name}"):
            path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                                              "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def environ(env: dict | None = None) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", **(env or {})}


def sh(repo: Path, *cmd: str, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=environ(env), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def reproduced(repo) -> str:
    out = sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    return out


def test_repro_writes_the_three_way_comparison(repo, reproduced):
    assert "report: reports/report.md" in reproduced
    assert "\r" not in reproduced  # no library's progress bar in dvc's log (TRL's poured carriage returns)
    assert "Base vs SFT vs SFT+DPO" in sh(repo, "python", "-m", "stages.report", "--show")  # what make run prints
    ev = json.loads((repo / "metrics/eval.json").read_text())
    for metric in ("format_conformance", "severity_match", "faithfulness", "mean_tokens"):
        assert set(ev[metric]) == {"base", "sft", "dpo"}, metric
    pw = ev["pairwise_dpo_vs_sft"]
    assert pw["wins"] + pw["losses"] + pw["ties"] == pw["n"] == ev["n_prompts"] == ROWS["eval.jsonl"]
    assert pw["ci_low"] <= pw["win_rate"] <= pw["ci_high"]
    for key in ("pairwise_dpo_vs_sft", "pairwise_dpo_vs_base", "pairwise_sft_vs_base"):  # every pair, raw and
        assert ev[key]["lc_ci_low"] <= ev[key]["lc_win_rate"] <= ev[key]["lc_ci_high"]  # length-controlled
    trust = ev["judge_reliability"]
    assert trust["backend"] == "rubric" and trust["position_flip_rate"] == 0.0 and trust["self_consistency"] == 1.0
    assert ev["machine"]["threads"] >= 1 and ev["machine"]["torch_cpu_capability"]
    judge = json.loads((repo / "metrics/judge.json").read_text())
    assert judge["pairs"] + judge["ties"] == judge["prompts"] == ROWS["prompts.jsonl"]
    report = (repo / "reports/report.md").read_text()
    assert "| Metric | Base | SFT | SFT+DPO | Δ DPO over SFT |" in report
    assert "Preferred over Base" in report and "## Judge reliability" in report
    # The committed seeds result is the defaults'; these tiny params are others, and the report says so.
    assert "One training seed stands behind this verdict" in report
    pairs = [json.loads(x) for x in (repo / "artifacts/preferences.jsonl").read_text().splitlines()]
    assert {"prompt", "chosen", "rejected"} <= set(pairs[0])


def test_the_report_page_shows_what_the_jsonl_files_say(repo, reproduced):
    """reports/report.html of this run in headless Chromium: every held-out prompt, every kept pair, and each
    filter leaves exactly the rows the run's JSONL files name."""
    from tests.support.page import Page

    rows = lambda name: [json.loads(x) for x in (repo / "artifacts" / name).read_text().splitlines()]  # noqa: E731
    outputs, judgments = rows("eval_outputs.jsonl"), rows("judgments.jsonl")
    assert [j["id"] for j in judgments if j["kept"]] == [p["id"] for p in rows("preferences.jsonl")]
    page = Page(repo / "reports" / "report.html")
    try:
        assert page.ids("eval") == [r["id"] for r in outputs]
        for outcome in ("win", "loss", "tie"):
            page.click(f"#eval-outcome button[data-val='{outcome}']")
            assert page.ids("eval") == [r["id"] for r in outputs if r["pairwise_dpo_vs_sft"]["outcome"] == outcome]
        page.click("#tab-pairs")
        assert page.ids("pairs") == [j["id"] for j in judgments if j["kept"]]
        page.click("#pairs-status button[data-val='tie']")
        assert page.ids("pairs") == [j["id"] for j in judgments if j["dropped"] == "tie"]
        assert page.console() == []
    finally:
        page.close()


def test_dpo_reference_is_the_sft_model(repo, reproduced):
    """With the SFT model as reference and a fresh adapter, the first logged rewards are ~0."""
    train = json.loads((repo / "metrics/train.json").read_text())
    assert abs(train["first_step"]["rewards/chosen"]) < 1e-3
    assert abs(train["first_step"]["rewards/margins"]) < 1e-3
    assert (repo / "models/dpo/adapter_config.json").exists()
    assert train["kl"]["final"] >= 0 and train["kl"]["max"] >= train["kl"]["final"]
    assert train["kl"]["final_ci"][0] <= train["kl"]["final"] <= train["kl"]["final_ci"][1]
    assert (repo / "dvclive/train/plots/metrics/kl_ci_low.tsv").exists()  # the band around the KL curve
    kl_rows = (repo / "dvclive/train/plots/metrics/kl.tsv").read_text().splitlines()
    assert kl_rows[0] == "step\tkl" and kl_rows[1].startswith("0\t")  # measured from step 0, logged by step
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert ev["kl_dpo_vs_sft"]["kl"] > 0
    assert (repo / "dvclive/train/plots/metrics/rewards/margins.tsv").exists()


def test_each_adapter_says_what_made_it(repo, reproduced):
    """The Hugging Face convention: a card and the resolved trainer settings beside each adapter, no machine
    path in them; the report's copy of the card adds the 3-way eval."""
    for folder, settings in (("models/dpo", "training_args.json"), ("models/sft", "sft_args.json")):
        card, args = (repo / folder / "README.md").read_text(), (repo / folder / settings).read_text()
        assert card.startswith("---\nlibrary_name: peft\n") and str(repo) not in card + args
        assert "output_dir" not in json.loads(args)
    assert "| beta | 0.1 |" in (repo / "models/dpo/README.md").read_text()
    assert json.loads((repo / "models/dpo/training_args.json").read_text())["beta"] == 0.1
    assert "## Evaluation: base vs SFT vs SFT+DPO" in (repo / "reports/model_card.md").read_text()


def test_same_params_same_outputs(repo, reproduced):
    for stage in ("prepare", "sft", "sample", "judge", "train"):
        sh(repo, "dvc", "repro", "-f", "-s", stage)
    assert sh(repo, "git", "status", "--porcelain", "dvc.lock", "metrics") == ""


def test_dvc_reads_the_committed_results(repo, reproduced):
    assert "pairwise_dpo_vs_sft.win_rate" in sh(repo, "dvc", "metrics", "show")
    sh(repo, "dvc", "params", "diff")
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json"))
    margins = next(v for k, v in plots["data"].items() if k.startswith("Reward margin"))
    points = [p for entry in margins for p in entry["content"]["data"]["values"]]
    assert len(points) > 2 and all("margins" in p and "step" in p for p in points)


def test_dvc_exp_show_opens_with_the_headline(repo, reproduced):
    """What a user compares runs by comes first in `dvc exp show` (in a terminal: the first screen of its pager),
    and the details are still there."""
    columns = sh(repo, "dvc", "exp", "show", "--csv").splitlines()[0].split(",")
    first = columns[columns.index("parent") + 1:][:12]
    assert first == ["dpo_vs_sft.win_rate", "dpo_vs_sft.ci_low", "dpo_vs_sft.ci_high", "format_conformance.SFT",
                     "format_conformance.SFT+DPO", "severity_match.SFT", "severity_match.SFT+DPO",
                     "faithfulness.SFT", "faithfulness.SFT+DPO", "kl", "beta", "lr"]
    assert "pairwise_dpo_vs_sft.lc_win_rate" in columns and "train.beta" in columns
    assert "pairwise_dpo_vs_sft.ci_low" in sh(repo, "dvc", "metrics", "show", "metrics/eval.json")


def test_a_fresh_clone_pulls_from_a_remote_and_reruns_nothing(repo, reproduced, tmp_path):
    """Artefacts travel through a DVC remote (a local folder here; S3, GCS, SSH... the same way)."""
    store = tmp_path / "store"
    sh(repo, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    sh(repo, "dvc", "push")
    clone = tmp_path / "clone"
    sh(repo, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    sh(clone, "dvc", "pull")
    assert (clone / "models/dpo/adapter_config.json").exists()
    out = sh(clone, "dvc", "repro")
    assert "Running stage" not in out, out
    assert "up to date" in sh(clone, "dvc", "status")


def test_a_stage_killed_midway_leaves_nothing_dvc_accepts_and_reruns_to_the_same_result(repo, reproduced):
    """SIGKILL to dvc and the train stage mid-training (a machine dying): no half-written adapter or
    metrics, DVC sees the stage as not done, and the rerun gives the uninterrupted run's result."""
    import signal
    import time

    def adapter() -> dict:
        folder = repo / "models/dpo"
        return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}

    before = adapter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.time()
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loss = repo / "dvclive/train/plots/metrics/loss.tsv"  # DVCLive starts it afresh, then appends each log
    while not (loss.exists() and loss.stat().st_mtime > start and len(loss.read_text().splitlines()) > 2):
        assert proc.poll() is None and time.time() < start + 300, "train finished or stalled before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-training: steps logged, the run not finished
    proc.wait()
    # The adapter is either the last complete one or gone, never half-written: it is renamed into place whole.
    assert adapter() in (before, {})
    assert "train" in sh(repo, "dvc", "status")  # the curves it was rewriting no longer match dvc.lock
    sh(repo, "dvc", "repro")
    assert sh(repo, "git", "status", "--porcelain", "dvc.lock", "metrics") == ""
    assert not list((repo / "models").glob(".dpo.*"))  # the killed run's temporary folder is cleaned up


def test_a_beta_experiment_reuses_samples_and_judgments(repo, reproduced):
    out = sh(repo, "dvc", "exp", "run", "-S", "train.beta=0.3")
    assert "Running stage 'train'" in out and "Running stage 'eval'" in out
    for stage in ("prepare", "sft", "sample", "judge", "eval_baselines"):  # the base's and SFT's outputs too
        assert f"Running stage '{stage}'" not in out, out
    table = sh(repo, "dvc", "exp", "show", "--md", "--no-pager")
    assert "beta" in table and "0.3" in table and "0.1" in table and "severity_match" in table


def test_two_processes_generate_byte_for_byte_what_one_does(repo, reproduced):
    """sample and eval (both stages) as 2 processes under torchrun (gloo on CPU), each a share of the batches, and batches of
    another size: run-time settings (config.RUNTIME), so an experiment with them re-runs nothing; forced to run,
    the samples and the eval outputs have the md5 the one-process baseline committed, and judging is not due."""
    baseline_params(repo)
    sh(repo, "dvc", "repro")  # an earlier test may have left another experiment applied (run-cache restores)
    out = sh(repo, "dvc", "exp", "run", "-S", "sample.num_processes=2", "-S", "eval.num_processes=2",
             "-S", "sample.batch_size=7", "-S", "eval.batch_size=7")
    assert "Running stage" not in out, out
    out = sh(repo, "dvc", "repro", "--force", "--single-item", "sample", "eval_baselines", "eval")  # the params above
    assert all(f"Running stage '{s}'" in out for s in ("sample", "eval_baselines", "eval"))
    due = json.loads(subprocess.run(["dvc", "status", "--json"], cwd=repo, env=environ(), capture_output=True,
                                    text=True, check=True).stdout)
    assert not {"judge", "train"} & set(due), due  # the same samples: nothing downstream of them changed

    def md5s(lock: dict) -> dict:  # eval.json aside: it names the machine, threads included (1 a process)
        return {o["path"]: o["md5"] for stage in ("sample", "eval_baselines", "eval")
                for o in lock["stages"][stage]["outs"]
                if o["path"] != "metrics/eval.json"}

    committed = yaml.safe_load(sh(repo, "git", "show", "HEAD:dvc.lock"))
    assert md5s(yaml.safe_load((repo / "dvc.lock").read_text())) == md5s(committed)
    ev, before = json.loads((repo / "metrics/eval.json").read_text()), json.loads(sh(repo, "git", "show",
                                                                                    "HEAD:metrics/eval.json"))
    assert ev.pop("machine")["threads"] == 1 and before.pop("machine")["threads"] >= 1
    assert ev == before  # every metric the same


def test_queued_experiments_run_two_at_a_time(repo, reproduced):
    """A sweep on DVC's experiment queue: `dvc exp run --run-all -j 2` runs queued experiments in parallel,
    each in its own temporary workspace, sampling and judging taken from the cache."""
    baseline_params(repo)
    for beta in ("0.05", "0.5"):
        sh(repo, "dvc", "exp", "run", "--queue", "-S", f"train.beta={beta}")
    out = run_all(repo, tasks=2)
    assert "Running stage 'train'" in out
    assert "Running stage 'sample'" not in out and "Running stage 'judge'" not in out
    rows = json.loads(sh(repo, "dvc", "exp", "show", "--json", "--no-pager"))
    betas = {rev["data"]["params"]["params.yaml"]["data"]["train"]["beta"]
             for commit in rows for exp in commit.get("experiments") or [] for rev in exp["revs"]
             if rev["data"].get("metrics")}
    assert {0.05, 0.5} <= betas


def run_all(repo: Path, tasks: int, timeout: float = 900) -> str:
    """`dvc exp run --run-all -j 2` and its output. DVC has a known hang here (treeverse/dvc#10398, seen in
    this project's CI): a queue worker whose idle monitor fires while its task still runs never exits after
    the task, and `--run-all` waits for it forever. Once every task has ended (the workers' logs say so), a
    worker still alive after a grace period is stopped as the README tells a user to: by its pid file."""
    celery = repo / ".dvc/tmp/exps/celery"
    log = repo / ".dvc/tmp/run-all.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["dvc", "exp", "run", "--run-all", "-j", "2"], cwd=repo, env=environ(),
                                stdout=f, stderr=subprocess.STDOUT, text=True)
    deadline, ended_at = time.monotonic() + timeout, None
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"dvc exp run --run-all still running after {timeout} s"
        worker_logs = "".join(p.read_text(errors="replace") for p in celery.glob("dvc-exp-worker-*.out"))
        ended = sum(line.count("tasks.run_exp[") for line in worker_logs.splitlines()
                    if " succeeded in " in line or " raised " in line)
        if ended >= tasks:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > 30:
                for pid_file in celery.glob("dvc-exp-worker-*.pid"):
                    try:
                        os.kill(int(pid_file.read_text()), 15)
                    except (ProcessLookupError, ValueError):
                        pass
                proc.wait(timeout=60)
        time.sleep(2)
    out = log.read_text()
    assert proc.returncode == 0 or ended_at is not None, out[-3000:]
    return out


def test_two_training_processes_match_one(repo, reproduced):
    """train.num_processes=2: torchrun, two CPU processes (gloo), half of every batch each; process 0 writes.
    Same pairs, same global batch: the results match the one-process baseline within a tolerance (the two
    processes see the pairs in a different order)."""
    baseline_params(repo)
    one = json.loads(sh(repo, "git", "show", "HEAD:metrics/train.json"))  # the workspace's may be another exp's
    out = sh(repo, "dvc", "exp", "run", "-S", "train.num_processes=2")
    assert "2 processes" in out and "Running stage 'sample'" not in out
    two = json.loads((repo / "metrics/train.json").read_text())
    assert (two["pairs_train"], two["pairs_eval"]) == (one["pairs_train"], one["pairs_eval"])
    assert two["first_step"]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # the reference is still SFT
    # Accuracy moves in steps of one held-out pair (1/7 here): measured 0.571 (1 process) vs 0.688 (2), the
    # padded duplicate counted twice. Less than one pair apart is a match.
    tolerance = {**TOLERANCE, "rewards/accuracies": max(TOLERANCE["rewards/accuracies"], 1 / one["pairs_eval"])}
    for key in ("loss", "rewards/margins", "rewards/accuracies"):
        assert two["eval_final"][key] == pytest.approx(one["eval_final"][key], abs=tolerance[key]), key
    assert two["kl"]["final"] == pytest.approx(one["kl"]["final"], abs=0.05)
    assert (repo / "models/dpo/adapter_config.json").exists()


def test_precomputed_reference_log_probs_match_the_per_step_reference(repo, reproduced):
    """train.precompute_ref_log_probs (the default): the SFT reference runs once over the pairs before training
    instead of every step. The reference is the same model, so the baseline matches a run with the per-step
    reference within tolerance."""
    baseline_params(repo)
    one = json.loads(sh(repo, "git", "show", "HEAD:metrics/train.json"))  # the workspace's may be another exp's
    assert "precompute_ref_log_probs: true" in (repo / "params.yaml").read_text()
    out = sh(repo, "dvc", "exp", "run", "-S", "train.precompute_ref_log_probs=false")
    assert "Running stage 'train'" in out and "Running stage 'judge'" not in out
    pre = json.loads((repo / "metrics/train.json").read_text())
    assert pre["first_step"]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    for key in ("loss", "rewards/margins", "rewards/accuracies"):
        assert pre["eval_final"][key] == pytest.approx(one["eval_final"][key], abs=TOLERANCE[key]), key


def test_claude_as_judge_end_to_end(repo, reproduced, tmp_path):
    """judge.backend=anthropic against a Messages API server on 127.0.0.1, through dvc, with a key in the
    environment only: the judge and eval stages use it, and the key is written nowhere."""
    import uuid

    from tests.support.fake_anthropic import FakeAnthropic, policy_answer

    key = f"sk-ant-e2e-{uuid.uuid4().hex}"  # made here, so no source file holds it

    with FakeAnthropic(policy_answer) as fake:
        out = sh(repo, "dvc", "exp", "run", "-S", "judge.backend=anthropic", "-S", f"judge.base_url={fake.base_url}",
                 "-S", f"judge.cache_dir={tmp_path / 'cache'}", env={"ANTHROPIC_API_KEY": key})
        assert "Running stage 'judge'" in out and "Running stage 'sample'" not in out
        assert fake.message_count > 0
    judge = json.loads((repo / "metrics/judge.json").read_text())
    assert judge["backend"] == "anthropic" and judge["usage"]["cost_usd"] > 0
    assert judge["agreement_with_rubric"] == 1.0  # this server judges by the written policy
    assert judge["invalid_rate"] == 0 and judge["position_consistency"] > 0.9
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert ev["judge"]["backend"] == "anthropic" and ev["judge"]["answers"] > 0
    assert key not in out
    for path in [*repo.rglob("*"), *(tmp_path / "cache").rglob("*")]:  # .git, .dvc and the cache included
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def baseline_params(repo: Path) -> None:
    """An experiment leaves its params in the workspace; the next one starts from the committed ones."""
    sh(repo, "git", "checkout", "HEAD", "--", "params.yaml")


def test_the_second_task_runs_with_one_param_changed(repo, reproduced):
    baseline_params(repo)
    out = sh(repo, "dvc", "exp", "run", "-S", "task.name=number_summary", "-S",
             "task.module=dpo_pipeline/tasks/number_summary.py")
    for stage in ("prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report"):
        assert f"Running stage '{stage}'" in out, stage
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert "severity_match" not in ev
    for metric in ("format_conformance", "numbers_kept", "faithfulness"):
        assert set(ev[metric]) == {"base", "sft", "dpo"}, metric
    assert ev["n_prompts"] == ROWS["eval.jsonl"]
    pairs = [json.loads(x) for x in (repo / "artifacts/preferences.jsonl").read_text().splitlines()]
    assert "Summarise in at most" in pairs[0]["prompt"][0]["content"]
    report = (repo / "reports/report.md").read_text()
    assert "| Numbers kept |" in report and "| Severity match |" not in report


def test_my_gpt2_model_my_sft_adapter_and_an_ultrafeedback_parquet(repo, reproduced, tmp_path):
    """The user's week-2 setup: a GPT-2-architecture base and a LoRA SFT adapter in local folders, and a
    preference file in ultrafeedback_binarized's schema: sample and judge only convert, train uses the file,
    eval and the report compare all three models."""
    from tests.support.models import save_adapter_for, save_tiny
    from tests.support.ultrafeedback import ULTRAFEEDBACK, uf_row, write_parquet

    base = save_tiny("gpt2", tmp_path / "gpt2", chat_template=False)
    adapter = save_adapter_for(base, tmp_path / "gpt2-sft")
    rows = [uf_row(f"Incident {i}: checkout-api is completely down. Triage it.", f"p{i}",
                   f'{{"severity": "SEV1", "service": "checkout-api", "summary": "outage {i}"}}',
                   f"It is probably fine {i}.") for i in range(30)]
    prefs = write_parquet(tmp_path / "prefs.parquet", rows, ULTRAFEEDBACK)
    baseline_params(repo)
    out = sh(repo, "dvc", "exp", "run", "-S", f"model.base={base}", "-S", f"model.sft={adapter}",
             "-S", f"preferences.source={prefs}")
    assert "sample: skipped, the preference pairs come from" in out
    assert (repo / "artifacts/samples.jsonl").read_text() == ""
    judge = json.loads((repo / "metrics/judge.json").read_text())
    assert (judge["source"], judge["format"], judge["pairs"]) == (str(prefs), "conversational", 30)
    assert "backend" not in judge  # nothing judged: no judge backend is named
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["pairs_train"] + train["pairs_eval"] == 30
    dpo = json.loads((repo / "models/dpo/adapter_config.json").read_text())
    assert sorted(dpo["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    assert json.loads((repo / "models/sft/manifest.json").read_text())["kind"] == "adapter"
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert set(ev["faithfulness"]) == {"base", "sft", "dpo"}
    report = (repo / "reports/report.md").read_text()
    assert "| Metric | Base | SFT | SFT+DPO | Δ DPO over SFT |" in report and "30 pairs from" in report


def template_answer(body: dict) -> dict:
    """A judge of the template task on the local Messages API server: a finished sentence first, then length."""
    from tests.support.fake_anthropic import section

    text = body["messages"][0]["content"]
    rank = lambda r: (r.strip().endswith((".", "!", "?")), len(r.split()))  # noqa: E731
    if body["tools"][0]["name"] == "record_score":
        finished, words = rank(section(text, "response"))
        return {"score": 1 + 2 * finished + min(2, words // 10), "reason": "a finished sentence, and length"}
    a, b = rank(section(text, "response_a")), rank(section(text, "response_b"))
    return {"winner": "tie" if a == b else "A" if a > b else "B", "reason": "a finished sentence, then length"}


def test_a_task_from_the_template_my_sft_adapter_and_claude(repo, reproduced, tmp_path):
    """The lightest task of one's own: the template copied as it stands, its data without sft.jsonl, a
    Qwen2-architecture base with a LoRA SFT adapter, and Claude Opus 5.5 judging (the local Messages API
    server): every stage runs; no rubric, pre-training text or SFT data is needed."""
    import uuid

    from tests.support.fake_anthropic import FakeAnthropic
    from tests.support.models import save_adapter_for, save_tiny

    base = save_tiny("qwen2", tmp_path / "qwen2")
    adapter = save_adapter_for(base, tmp_path / "qwen2-sft")
    shutil.copy(repo / "examples" / "task_template.py", repo / "my_task.py")
    data = repo / "data" / "my_task"
    data.mkdir()
    (data / "policy.md").write_text("Answer in one finished sentence of at most 60 words.\n")
    for split, n in (("prompts", 24), ("eval", 12)):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}-{i}", "prompt": f"Describe incident {split} {i} in one sentence."}) + "\n"
            for i in range(n)))
    baseline_params(repo)
    key = f"sk-ant-e2e-{uuid.uuid4().hex}"
    try:
        with FakeAnthropic(template_answer) as fake:
            out = sh(repo, "dvc", "exp", "run", "-S", "task.name=my_task", "-S", "task.module=my_task.py",
                     "-S", f"model.base={base}", "-S", f"model.sft={adapter}", "-S", "judge.backend=anthropic",
                     "-S", "judge.model=claude-opus-5-5", "-S", f"judge.base_url={fake.base_url}",
                     "-S", f"judge.cache_dir={tmp_path / 'cache'}", env={"ANTHROPIC_API_KEY": key})
            assert fake.message_count > 0
        for stage in ("sft_data", "prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report"):
            assert f"Running stage '{stage}'" in out, stage
        assert "0 SFT pairs from data/my_task/sft.jsonl (none: no such file)" in " ".join(out.split())
        judge = json.loads((repo / "metrics/judge.json").read_text())
        assert judge["backend"] == "anthropic" and judge["pairs"] > 0 and "agreement_with_rubric" not in judge
        ev = json.loads((repo / "metrics/eval.json").read_text())
        assert set(ev["brief"]) == set(ev["format_conformance"]) == {"base", "sft", "dpo"}
        assert ev["judge_reliability"]["reference_agreement"] is None and ev["n_prompts"] == 12
        headline = json.loads((repo / "metrics/headline.json").read_text())
        assert list(headline) == ["dpo_vs_sft", "format_conformance", "brief", "faithfulness", "kl", "beta", "lr"]
        assert "| At most 60 words |" in (repo / "reports/report.md").read_text()
        assert key not in out
    finally:
        (repo / "my_task.py").unlink()
        shutil.rmtree(data)
        baseline_params(repo)


def test_vllm_samples_and_evaluates_end_to_end(repo, reproduced):
    """generation.engine=vllm through dvc: vLLM (its own environment) samples and generates eval's answers of
    base, SFT (the adapter as a LoRA request) and SFT+DPO (a merged folder); KL and training stay in
    transformers. The tiny model gets vLLM's smallest CPU head size, 32."""
    vllm = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    if not vllm.exists() and not os.environ.get("CI"):
        pytest.skip("no vLLM environment here: `make vllm` creates it (CI always has it)")
    baseline_params(repo)
    prompts = [json.loads(x)["id"] for x in (repo / "data/incident_triage/prompts.jsonl").read_text().splitlines()]
    try:
        out = sh(repo, "dvc", "exp", "run", "-S", "generation.engine=vllm", "-S", f"generation.vllm_python={vllm}",
                 "-S", "model.tiny.hidden_size=64")
        for stage in ("sample", "judge", "train", "eval_baselines", "eval", "report"):
            assert f"Running stage '{stage}'" in out, stage
        assert out.count("requests to vLLM") == 3  # sample; base and SFT in one engine; SFT+DPO
        samples = [json.loads(x) for x in (repo / "artifacts/samples.jsonl").read_text().splitlines()]
        assert [r["id"] for r in samples] == prompts
        assert all(0 < c["tokens"] <= TINY["sample"]["max_new_tokens"] for r in samples for c in r["responses"])
        ev = json.loads((repo / "metrics/eval.json").read_text())
        assert ev["n_prompts"] == ROWS["eval.jsonl"] and set(ev["format_conformance"]) == {"base", "sft", "dpo"}
        assert ev["kl_dpo_vs_sft"]["kl_ci_low"] <= ev["kl_dpo_vs_sft"]["kl"] <= ev["kl_dpo_vs_sft"]["kl_ci_high"]
    finally:
        baseline_params(repo)


def test_a_served_llm_judge_end_to_end(repo, reproduced, tmp_path_factory, tmp_path):
    """judge.backend=openai through dvc against vLLM's OpenAI-compatible server on 127.0.0.1, serving
    SmolLM2-135M-Instruct held to the verdict's schema by response_format: the judge and eval stages use it,
    every answer valid, at a price of 0. Three temperatures, so each candidate is scored and best vs worst make
    the pair (asked pairwise, SmolLM2 names A whichever order: both orders make every such verdict a tie)."""
    from tests.support.vllm import VLLM_PYTHON, smollm2_folder, vllm_server

    if not VLLM_PYTHON.exists() and not os.environ.get("CI"):
        pytest.skip("no vLLM environment here: `make vllm` creates it (CI always has it)")
    baseline_params(repo)
    try:
        with vllm_server(smollm2_folder(tmp_path_factory.getbasetemp()), "smollm2", tmp_path / "vllm.log") as server:
            out = sh(repo, "dvc", "exp", "run", "-S", "judge.backend=openai", "-S", f"judge.base_url={server.base_url}",
                     "-S", "judge.model=smollm2", "-S", "+judge.prices.smollm2={input_per_mtok: 0, output_per_mtok: 0}",
                     "-S", "sample.temperatures=[0.7,1.0,1.3]", "-S", "sample.max_prompts=40",
                     "-S", "eval.max_prompts=8", "-S", "judge.reliability_repeats=4",
                     "-S", f"judge.cache_dir={tmp_path / 'cache'}", env={"OPENAI_API_KEY": ""})
        for stage in ("sample", "judge", "train", "eval", "report"):
            assert f"Running stage '{stage}'" in out, stage
        judge = json.loads((repo / "metrics/judge.json").read_text())
        assert judge["backend"] == "openai" and judge["candidates"] == 3 and judge["pairs"] > 0
        assert judge["invalid_rate"] == 0 and judge["usage"]["cost_usd"] == 0
        ev = json.loads((repo / "metrics/eval.json").read_text())
        assert ev["judge"]["backend"] == "openai" and ev["judge"]["answers"] > 0 and ev["judge"]["invalid"] == 0
    finally:
        baseline_params(repo)


def test_two_rounds_of_iterative_dpo(repo, reproduced):
    """Round 2 samples from round 1's policy and trains on top of it; round 1 is not re-run; eval compares
    every round; a later round's setting re-runs that round only."""
    # The workspace may hold another experiment's outputs and lock: back to the committed baseline, whole (the
    # git-tracked metrics, curves and report are outputs too)
    sh(repo, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.yaml", "dvc.lock", "metrics", "dvclive", "reports")
    sh(repo, "dvc", "checkout", "-f")
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}
    committed = sh(repo, "git", "show", "HEAD:metrics/eval.json")
    sh(repo, sys.executable, "-m", "tools.rounds", "2")
    try:
        out = sh(repo, "dvc", "repro")
        for stage in ("prepare", "sft", "sample", "judge", "train", "eval_baselines"):
            assert f"Running stage '{stage}'" not in out
        for stage in ("sample_r2", "judge_r2", "train_r2", "eval", "report"):
            assert f"Running stage '{stage}'" in out
        ev = json.loads((repo / "metrics" / "eval.json").read_text())
        assert set(ev["faithfulness"]) == {"base", "sft", "dpo", "dpo_r2"}
        for key in ("pairwise_dpo_vs_sft", "pairwise_dpo_r2_vs_sft", "pairwise_dpo_r2_vs_dpo"):
            assert 0 <= ev[key]["ci_low"] <= ev[key]["win_rate"] <= ev[key]["ci_high"] <= 1
        assert ev["kl_dpo_r2_vs_sft"]["kl"] > 0
        cis = json.loads((repo / "metrics" / "eval_ci.json").read_text())["faithfulness"]
        assert {"delta_dpo_sft", "delta_dpo_r2_sft", "delta_dpo_r2_dpo"} <= set(cis)  # paired, over the round before
        # round 1's numbers are the same models on the same prompts: unchanged by a second round
        before = json.loads(committed)
        assert ev["pairwise_dpo_vs_sft"] == before["pairwise_dpo_vs_sft"]
        assert ev["kl_dpo_vs_sft"] == before["kl_dpo_vs_sft"]
        # round 2 sampled its own responses, from round 1's policy
        first = [json.loads(x) for x in (repo / "artifacts" / "samples.jsonl").read_text().splitlines()]
        second = [json.loads(x) for x in (repo / "rounds" / "2" / "samples.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in second] == [r["prompt"] for r in first]  # iterate.prompts: reuse
        assert [r["responses"] for r in second] != [r["responses"] for r in first]
        report = (repo / "reports" / "report.md").read_text()
        assert "## Iterative DPO: 2 rounds" in report and (repo / "reports" / "rounds.png").stat().st_size > 0
        assert "DPO round 2" in report.splitlines()[4]  # the table's header has a column for round 2
        # the reference of later rounds is a setting of those rounds only
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["iterate"]["reference"] = "sft"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert set(json.loads(sh(repo, "dvc", "status", "--json"))) == {"train_r2"}
        # `dvc exp run -S rounds=3` alone cannot add stages: eval says what to run
        params["rounds"] = 3
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run([sys.executable, "-m", "stages.eval"], cwd=repo, env=environ(), capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "python -m tools.rounds 3" in proc.stderr, proc.stderr
    finally:
        sh(repo, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.yaml", "dvc.lock", "metrics", "dvclive",
           "reports")
        sh(repo, "dvc", "checkout", "-f")


def test_a_reward_model_judges_the_pipeline_and_the_simpo_profile(repo, reproduced, tmp_path):
    """judge.backend=reward_model, a tiny reward model trained here on the rubric's pairs: it scores both
    candidates of each prompt (the pair: the higher reward vs the lower; nothing asked in two orders), the report
    gives the kept pairs' reward gap, and eval's judged metrics come from rewards (the mean reward in place of
    faithfulness, win rates by comparing rewards). Then docs/judge.md's SimPO-style profile: five candidates at
    one temperature, best vs worst of five."""
    from tests.support.models import train_reward_model

    sft = [json.loads(x) for x in (repo / "data/incident_triage/sft.jsonl").read_text().splitlines()]
    rm = train_reward_model(tmp_path / "rm", sft[:150])
    judge_settings = ["-S", "judge.backend=reward_model", "-S", f"judge.reward_model={rm}",
                      "-S", f"judge.cache_dir={tmp_path / 'cache'}"]
    baseline_params(repo)
    try:
        out = sh(repo, "dvc", "exp", "run", *judge_settings)
        for stage in ("judge", "train", "eval", "report"):
            assert f"Running stage '{stage}'" in out, stage
        assert "Running stage 'sample'" not in out and "Running stage 'eval_baselines'" not in out
        judge = json.loads((repo / "metrics/judge.json").read_text())
        assert (judge["backend"], judge["candidates"], judge["position_consistency"]) == ("reward_model", 2, None)
        assert judge["pairs"] > 0 and judge["pairs"] + judge["ties"] == judge["prompts"] == ROWS["prompts.jsonl"]
        gap = judge["reward_gap"]
        assert gap["n"] == judge["pairs"] and 0 < gap["min"] <= gap["median"] <= gap["max"]
        assert 0 <= judge["agreement_with_rubric"] <= 1 and judge["calls"] == 2 * ROWS["prompts.jsonl"]
        ev = json.loads((repo / "metrics/eval.json").read_text())
        assert "faithfulness" not in ev and set(ev["reward"]) == {"base", "sft", "dpo"}
        pw = ev["pairwise_dpo_vs_sft"]
        assert pw["n"] == ROWS["eval.jsonl"] and pw["ci_low"] <= pw["win_rate"] <= pw["ci_high"]
        trust = ev["judge_reliability"]
        assert trust["backend"] == "reward_model" and trust["position_flip_rate"] is None
        assert trust["self_consistency"] == 1.0 and trust["reference_backend"] == "rubric"
        report = (repo / "reports/report.md").read_text()
        assert "Reward gap of the kept pairs" in report and "| Reward (reward model, mean) |" in report
        assert "reward" in json.loads((repo / "metrics/headline.json").read_text())
        out = sh(repo, "dvc", "exp", "run", *judge_settings, "-S", "sample.temperatures=[0.8,0.8,0.8,0.8,0.8]",
                 "-S", "sample.top_p=0.95")
        assert "Running stage 'sample'" in out and "Running stage 'judge'" in out
        judge = json.loads((repo / "metrics/judge.json").read_text())
        assert judge["candidates"] == 5 and judge["pairs"] > 0 and judge["calls"] == 5 * ROWS["prompts.jsonl"]
        assert set(judge["chosen_by_temperature"]) == {"0.8"}
    finally:
        baseline_params(repo)
