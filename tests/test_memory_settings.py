"""The settings that make a big model fit, checked on the tiny default: DPO's micro-batches train what one
batch trains, activation checkpointing changes nothing but memory, and `model.quantization: nf4` runs the whole
pipeline on 4-bit linear layers (end to end, on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.tiny import train_tiny_base
from dpo_pipeline.tasks import incident_triage

ROOT = Path(__file__).resolve().parents[1]
ROWS = read_jsonl(ROOT / "data/incident_triage/sft.jsonl", required=("prompt", "response"))[:200]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The default builtin:tiny's shape (hidden 128, 4 layers), briefly pre-trained so its per-token losses
    differ from row to row as a real SFT model's do."""
    cfg = load_params(ROOT / "params.yaml").model
    cfg = cfg.model_copy(update={"max_length": 128, "tiny": cfg.tiny.model_copy(update={"epochs": 1})})
    out = tmp_path_factory.mktemp("tiny")
    train_tiny_base([incident_triage.pretrain_text(r["prompt"], r["response"]) for r in ROWS[80:]], cfg, seed=0,
                    out_dir=out)
    return out


def pairs(n: int, offset: int = 0):
    """n preference pairs: the right triage against another incident's (lengths differ, so padding does)."""
    from datasets import Dataset

    rows = ROWS[offset:offset + n + 1]
    return Dataset.from_list([{"prompt": user(a["prompt"]), "chosen": assistant(a["response"]),
                               "rejected": assistant(b["response"])} for a, b in zip(rows, rows[1:])])


def train_dpo(folder: Path, tmp_path: Path, n_train: int = 64, quantized: bool = False, **train):
    """The train stage's DPOTrainer (its DPOConfig, LoRA and reference: the adapter disabled) on `n_train`
    pairs (8 held out): 4 optimizer steps of 16 at a learning rate that moves the rewards within them. Returned
    untrained: its data loader gives the micro-batches training will get."""
    from transformers import AutoModelForCausalLM, PrinterCallback, set_seed
    from trl import DPOTrainer

    from dpo_pipeline.models.dpo import dpo_config
    from dpo_pipeline.models.loading import load_4bit, tokenizer_from
    from dpo_pipeline.models.lora import lora_config

    params = load_params(ROOT / "params.yaml")
    cfg = params.train.model_copy(update={"batch_size": 16, "epochs": 1, "learning_rate": 5e-3, "logging_steps": 1,
                                          "eval_steps": 1, **train})
    set_seed(0)
    model = load_4bit(folder) if quantized else AutoModelForCausalLM.from_pretrained(folder)
    trainer = DPOTrainer(model=model, args=dpo_config(str(tmp_path / "out"), 0, cfg, 128),
                         train_dataset=pairs(n_train), eval_dataset=pairs(8, offset=n_train + 1),
                         processing_class=tokenizer_from(folder),
                         peft_config=lora_config(model, "auto", cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    trainer.remove_callback(PrinterCallback)
    return trainer


def trained(trainer) -> tuple[dict[str, list[float]], dict]:
    """Each logged series (train and validation), and the trained LoRA weights."""
    trainer.train()
    series = {key: [h[key] for h in trainer.state.log_history if key in h] for key in KEYS}
    return series, {k: v.detach().float().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}


KEYS = ("loss", "rewards/margins", "rewards/accuracies", "eval_loss", "eval_rewards/margins",
        "eval_rewards/accuracies")


def nll_weighting(trainer) -> list[tuple[float, float]]:
    """Per optimizer step of a micro-batched trainer, from the reference's log-probs (the policy before its
    first update): how far the micro-batches' NLL term is from one batch's (the mean of each micro-batch's mean
    token NLL, less the mean over all the step's tokens), and rho, the most a micro-batch's tokens are
    re-weighted (its share of the step's micro-batches over its share of the step's tokens, less 1)."""
    loader, k = list(trainer.get_train_dataloader()), trainer.args.gradient_accumulation_steps
    out = []
    for step in range(0, len(loader), k):
        micro = loader[step:step + k]
        nll = [-float(b["ref_chosen_logps"].sum()) for b in micro]
        tokens = [int(b["completion_mask"].chunk(2)[0].sum()) for b in micro]  # the chosen rows come first
        whole = sum(nll) / sum(tokens)
        out.append((sum(x / n for x, n in zip(nll, tokens)) / k - whole,
                    max(abs(sum(tokens) / (k * n) - 1) for n in tokens)))
    return out


def at_reference(margin: float) -> bool:
    """Whether a logged mean margin says the policy is still the reference (0 up to float rounding)."""
    return abs(margin) < 1e-4


def moved(series: dict[str, list[float]], key: str) -> list[float]:
    """`key`'s values; an accuracy's only where the policy has left the reference (see below)."""
    if not key.endswith("accuracies"):
        return series[key]
    margins = series[key.replace("accuracies", "margins")]
    return [value for value, margin in zip(series[key], margins) if not at_reference(margin)]


def test_dpo_micro_batches_train_what_one_batch_trains(tiny, tmp_path):
    """train.micro_batch_size: batch 16 as 4 forward passes of 4 pairs (gradient accumulation) against one
    pass of 16: 4 optimizer steps (the first at learning rate 0, warm-up) and 5 validation passes.

    Pure DPO (`sft_weight` 0): the sigmoid loss is a mean over pairs and the trainer divides each
    micro-batch's mean by the 4 passes, so with equal micro-batches (the same pairs a step: consecutive slices
    of one shuffled order) it is the batch's mean. The runs then differ by float rounding only (summation
    order, ~1e-7 relative in float32, carried through 3 AdamW updates): 1e-5 on every logged number and
    trained weight. But an accuracy counts the pairs whose margin is above 0, and while the policy is still
    the reference every margin is 0 up to that rounding (the reference's log-probs were computed before
    training, padded otherwise): there it counts rounding, so accuracies are compared once the policy moved.

    The default, `sft_weight` 1, adds TRL's NLL term on the chosen tokens, which TRL 1.16 averages over each
    micro-batch's chosen tokens: its compute_loss takes no token count (num_items_in_batch), and DPO's batches
    have no `labels` for the trainer to count. So 4 x 4 weighs each micro-batch's mean token NLL alike where
    16 x 1 weighs each token alike: a micro-batch's tokens weigh 1 +- rho times as much (rho 0.1-0.25 here).
    While the policy is still the reference, the logged loss differs by exactly that re-weighting, computed
    from the reference's log-probs (to 1e-4). Afterwards the runs differ by the NLL gradient's re-weighting
    alone, so each trained series may differ by about rho times its own size: margins within rho x the
    largest margin, the loss by the re-weighting plus rho x its fall. Margins this early sit near 0, so up to
    2 pairs of a step's 16 (or of the 8 held out) may land on the other side of it in the accuracy."""
    import torch

    runs, weighting = {}, None
    for sft_weight in (0.0, 1.0):
        for micro in (None, 4):
            trainer = train_dpo(tiny, tmp_path / f"{sft_weight}-{micro}", sft_weight=sft_weight,
                                micro_batch_size=micro)
            if micro and sft_weight:
                weighting = nll_weighting(trainer)
            runs[sft_weight, micro] = trained(trainer)
    # --- pure DPO: float noise
    (whole, whole_lora), (cut, cut_lora) = runs[0.0, None], runs[0.0, 4]
    assert len(whole["loss"]) == 4 and len(whole["eval_loss"]) == 5
    for key in KEYS:
        assert moved(cut, key) == pytest.approx(moved(whole, key), abs=1e-5), key
    for name, weight in whole_lora.items():
        assert torch.allclose(cut_lora[name], weight, atol=1e-5), name
    # --- with the NLL term: its re-weighting, and no more
    (whole, _), (cut, _) = runs[1.0, None], runs[1.0, 4]
    rho = max(r for _, r in weighting)
    assert 0 < rho < 0.5
    for step, (difference, _) in enumerate(weighting):
        if at_reference(whole["rewards/margins"][step]) and at_reference(cut["rewards/margins"][step]):
            assert cut["loss"][step] - whole["loss"][step] == pytest.approx(difference, abs=1e-4), step
        else:
            fall = max(whole["loss"]) - min(whole["loss"])
            assert abs(cut["loss"][step] - whole["loss"][step] - difference) <= rho * fall, step
    # step 1 has learning rate 0, so at step 2 the policy is still the reference; then it trains
    assert at_reference(whole["rewards/margins"][1]) and not at_reference(whole["rewards/margins"][-1])
    for key, pairs_ in (("", 16), ("eval_", 8)):
        largest = max(map(abs, whole[key + "rewards/margins"]))
        assert cut[key + "rewards/margins"] == pytest.approx(whole[key + "rewards/margins"], abs=rho * largest), key
        accuracies = moved(cut, key + "rewards/accuracies"), moved(whole, key + "rewards/accuracies")
        assert accuracies[0] == pytest.approx(accuracies[1], abs=2 / pairs_), key
    largest = max(map(abs, whole["eval_loss"]))
    assert cut["eval_loss"] == pytest.approx(whole["eval_loss"], abs=rho * largest)


@pytest.mark.parametrize("quantized", [False, True], ids=["float32", "nf4"])
def test_activation_checkpointing_changes_no_number(tiny, tmp_path, quantized):
    """train.activation_checkpointing (and sft's): each layer's activations recomputed in the backward pass
    instead of kept, non-reentrant, under a frozen base with LoRA (in 4-bit too). The recomputation runs the
    same operations on the same numbers, so the logged losses, rewards and trained weights equal the run
    without it to float noise (1e-6), and the LoRA weights did get gradients (they moved)."""
    import torch

    runs = {}
    for on in (False, True):
        trainer = train_dpo(tiny, tmp_path / str(on), n_train=32, quantized=quantized, activation_checkpointing=on)
        runs[on] = trained(trainer)
        assert trainer.model.base_model.model.is_activation_checkpointing == on  # the trainer turns it on
    (plain, plain_lora), (checkpointed, checkpointed_lora) = runs[False], runs[True]
    for key in KEYS:
        assert checkpointed[key] == pytest.approx(plain[key], abs=1e-6), key
    assert any(float(w.abs().max()) > 0 for name, w in plain_lora.items() if "lora_B" in name)
    for name, weight in plain_lora.items():
        assert torch.allclose(checkpointed_lora[name], weight, atol=1e-6), name


def test_a_4bit_layer_keeps_its_gradient_after_an_evaluation_pass(tiny):
    """load_4bit's mend: bitsandbytes 0.50.2 on a CPU with AVX512-BF16 repacks a Linear4bit's weight, for good,
    for an inference kernel without a backward the first time the layer runs in eval mode without grad (as
    TRL's reference and validation passes do). Mended, the LoRA gradients after such a pass are those before
    it; on such a CPU, unmended, the gradient no longer flows down through the 4-bit weights, and the lower
    layers' LoRA weights get wrong ones (the day that fails, bitsandbytes has fixed it and the mend goes)."""
    import torch
    from bitsandbytes.functional import has_avx512bf16
    from bitsandbytes.nn import Linear4bit
    from peft import get_peft_model

    from dpo_pipeline.models.loading import load_4bit
    from dpo_pipeline.models.lora import lora_config

    def gradients(mend: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)
        model = load_4bit(tiny)
        if not mend:
            for layer in model.modules():
                if isinstance(layer, Linear4bit):
                    layer.support_avx512bf16_for_cpu = has_avx512bf16()
        model = get_peft_model(model, lora_config(model, "auto", r=4, alpha=8, dropout=0.0))
        with torch.no_grad():  # a trained adapter: gradients reach the layers below through the ones above
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.05 * torch.randn_like(p))
        x = torch.randint(0, 300, (2, 24))

        def step() -> dict:
            model.train()
            model.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        before = step()
        model.eval()
        with torch.no_grad():
            model(input_ids=x)
        return before, step()

    before, after = gradients(mend=True)
    assert before.keys() == after.keys() and len(before) == 2 * 7 * 4  # A and B, 7 projections, 4 layers
    for name, grad in before.items():
        assert torch.allclose(after[name], grad), name
    if has_avx512bf16():
        before, after = gradients(mend=False)
        assert not all(torch.allclose(after.get(name, 0 * grad), grad) for name, grad in before.items())


# --- the whole pipeline with a 4-bit base --------------------------------------------------------------------

SMALL = {  # test_e2e's tiny profile, smaller still: a 4-bit forward pass is slow on a CPU
    "model": {"max_length": 128, "quantization": "nf4",
              "tiny": {"vocab_size": 400, "hidden_size": 96, "num_layers": 2, "num_heads": 2,
                       "intermediate_size": 192, "epochs": 3, "learning_rate": 5e-3, "batch_size": 32}},
    "sft": {"epochs": 1, "micro_batch_size": None, "activation_checkpointing": True},
    "sample": {"max_new_tokens": 48},
    "train": {"epochs": 2, "batch_size": 8, "micro_batch_size": 4, "activation_checkpointing": True,
              "learning_rate": 3e-3, "logging_steps": 1, "eval_steps": 2, "eval_fraction": 0.2, "kl_every": 2,
              "kl_prompts": 8, "kl_max_new_tokens": 32},
    "eval": {"max_new_tokens": 48, "bootstrap_samples": 200},
}
DATA_ROWS = {"sft.jsonl": 800, "prompts.jsonl": 96, "eval.jsonl": 24}  # of the shipped files, the first


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in over.items()} | {k: v for k, v in base.items() if k not in over}


@pytest.mark.e2e
def test_the_default_pipeline_trains_on_a_4bit_base(tmp_path):
    """`dvc repro -S model.quantization=nf4` on a small profile, in a copy of the repository: sft and train
    hold the base in 4-bit NF4 (with micro-batches and activation checkpointing on, as a 24 GB card would run
    an 8B model), the rest of the pipeline runs as ever. The DPO reference is the quantized SFT model, so the
    rewards start at 0, then move; KL is never negative; the train stage records the Linear4bit layers it
    trained on (2 layers x 7 projections), and training again gives the same bytes."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, tmp_path / f)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for name, n in DATA_ROWS.items():
        for path in (tmp_path / params["paths"]["data"]).glob(f"*/{name}"):
            path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(params, SMALL), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "small"], ["dvc", "repro"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout + proc.stderr
    assert "(14 linear layers in nf4)" in out  # the sft stage trained on them too
    assert "autograd kernel was not registered" not in out
    train = json.loads((tmp_path / "metrics/train.json").read_text())
    assert train["quantization"] == {"method": "nf4", "linear4bit": 14}
    assert train["first_step"]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # the reference is the policy
    assert train["final"]["rewards/margins"] != pytest.approx(0.0, abs=1e-3)      # and it trained away from it
    assert train["eval_final"]["rewards/margins"] != train["eval_first"]["rewards/margins"]
    assert train["kl"]["final"] >= 0 and train["kl"]["max"] >= train["kl"]["final"]
    ev = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(ev["format_conformance"]) == {"base", "sft", "dpo"} and ev["kl_dpo_vs_sft"]["kl"] >= 0
    # the 4-bit policy was loaded from a temporary folder; the adapter names the base, and trains again the same
    adapter = json.loads((tmp_path / "models/dpo/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/base"
    lock = (tmp_path / "dvc.lock").read_text()
    proc = subprocess.run(["dvc", "repro", "-f", "-s", "train"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and (tmp_path / "dvc.lock").read_text() == lock, proc.stderr[-3000:]
