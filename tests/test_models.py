"""Model plumbing on micro models: the builtin tokenizer's chat template, loading through the Auto classes
(as a hub model would be), resolving local folders and hub ids into manifests, SFT adapters and full SFT
models, LoRA targets for GPT-2 and Qwen2, the chat-template fallback, and seeded generation."""

from __future__ import annotations

import pytest

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.config import ModelParams
from dpo_pipeline.models.generation import generate
from dpo_pipeline.models.loading import tokenizer_from as load_tokenizer
from dpo_pipeline.models.tiny import build_tokenizer, train_tiny_base
from tests.support.models import TEXTS


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    cfg = ModelParams(base="builtin:tiny", revision=None, sft=None, lora_target_modules="auto", max_length=128,
                      quantization=None,
                      tiny=dict(
        vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=1,
        learning_rate=1e-3, batch_size=16, micro_batch_size=4))
    out = tmp_path_factory.mktemp("base")
    info = train_tiny_base(TEXTS, cfg, seed=0, out_dir=out)
    return out, info


def test_chat_template_prompt_is_a_prefix_of_the_conversation():
    tok = build_tokenizer(TEXTS, 320)
    prompt = tok.apply_chat_template(user("disk full"), tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user("disk full") + assistant('{"severity": "SEV3"}'), tokenize=False)
    assert full.startswith(prompt)
    assert full.rstrip().endswith(tok.eos_token)
    assert tok.decode(tok(prompt)["input_ids"]) == prompt  # byte-level BPE round-trips


def test_builtin_model_loads_through_auto_classes(micro):
    from transformers import AutoModelForCausalLM

    path, info = micro
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    assert load_tokenizer(str(path)).chat_template


def test_generation_is_seeded_and_batch_independent(micro):
    from transformers import AutoModelForCausalLM

    path, _ = micro
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path))
    prompts = [f"Pager alert. search is unreachable {i}." for i in range(6)]
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)
    a = generate(model, tok, prompts, batch_size=6, **kw)
    assert a == generate(model, tok, prompts, batch_size=6, **kw)
    assert a != generate(model, tok, prompts, batch_size=6, **{**kw, "seed": 6})
    assert all(0 < r["tokens"] <= 12 for r in a)
    # Seeded by the prompt: the same responses in batches of 1, 4 (a ragged last batch) or in another order,
    # and with top-k / top-p truncation too
    assert generate(model, tok, prompts, batch_size=1, **kw) == a
    assert generate(model, tok, prompts[::-1], batch_size=4, **kw) == a[::-1]
    cut = dict(kw, top_k=5, top_p=0.9)
    assert generate(model, tok, prompts, batch_size=4, **cut) == generate(model, tok, prompts, batch_size=6, **cut)
    greedy = dict(kw, temperature=0)
    assert generate(model, tok, prompts, batch_size=2, **greedy) == generate(model, tok, prompts, batch_size=6,
                                                                                **greedy)


def test_counter_noise_samples_softmax_and_depends_on_its_row_only():
    """The accelerator's noise (run here on the CPU, where the same integer ops give the same bits): the
    argmax of logits + noise is a draw from softmax(logits), and a row's noise is a function of its key, the
    step and the token alone."""
    import torch

    from dpo_pipeline.models.generation import gumbel

    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, float("-inf")])
    keys = torch.arange(2000, dtype=torch.int64) * 7919
    draws = torch.cat([(logits + gumbel(keys, step, 5)).argmax(-1) for step in range(10)])
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    assert torch.allclose(freq, torch.softmax(logits.double(), 0), atol=0.01), freq  # 3 sd is ~0.01
    assert freq[4] == 0  # a token the warpers removed is never drawn
    noise = gumbel(keys[:3], 4, 1000)
    assert torch.equal(noise[1], gumbel(keys[1:2], 4, 1000)[0])  # alone or in a batch: the same
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], gumbel(keys[:1], 5, 1000)[0])
    assert noise.isfinite().all()


def test_cpu_noise_is_a_generator_per_prompt():
    """On a CPU each row draws from a torch generator seeded by its prompt, as it always has: the committed
    outputs stay what they were."""
    import torch

    from dpo_pipeline.models.generation import PromptNoise

    scores = torch.zeros(2, 50)
    got = PromptNoise([11, 12])(torch.zeros(2, 3, dtype=torch.long), scores)
    u = torch.rand(50, generator=torch.Generator().manual_seed(12)).clamp(torch.finfo(torch.float32).tiny,
                                                                          1 - torch.finfo(torch.float32).eps)
    assert torch.equal(got[1], -torch.log(-torch.log(u)))


def test_kl_of_a_fresh_adapter_is_zero_and_grows_when_it_changes(micro):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_pipeline.models.kl import kl_summary, sequence_kls

    def sequence_kl(model, tok, prompts, max_new_tokens, seed, reference=None):
        return kl_summary(sequence_kls(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed,
                                       reference=reference), 1000, seed)

    path, _ = micro
    tok = load_tokenizer(str(path))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    prompts = [f"Pager alert. search is unreachable {i}." for i in range(8)]
    kw = dict(max_new_tokens=10, seed=0)
    # Exactly 0, not about 0: LoRA's B starts at zero (KLMonitor.start logs this 0 without sampling)
    assert sequence_kl(model, tok, prompts, **kw)["kl"] == 0.0
    torch.manual_seed(0)  # the move is the same whichever tests ran before
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.2 * torch.randn_like(p))
    state = torch.random.get_rng_state()
    moved = sequence_kl(model, tok, prompts, **kw)
    assert moved["kl"] > 0.01 and moved["kl_per_token"] > 0  # a KL estimate from samples of the policy
    assert 0 <= moved["kl_ci_low"] < moved["kl"] < moved["kl_ci_high"]  # with its noise over the 8 sequences
    assert torch.equal(torch.random.get_rng_state(), state)  # measuring leaves the caller's RNG alone
    # A separate reference model (a later DPO round against SFT) gives the same estimate when it is the same
    # weights as the disabled adapter
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    assert sequence_kl(model, tok, prompts, **kw, reference=base)["kl"] == pytest.approx(moved["kl"], abs=1e-4)


def _nudged(path, scale: float):
    """The micro model under a LoRA adapter moved by `scale`: a policy a known, small distance from its
    reference (the adapter disabled)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_kl_of_one_token_is_the_exact_kl_of_the_first_distribution(micro):
    """With one new token the sequence KL is the KL of the first position's two distributions, whatever token
    was drawn: the estimate is exact there, not a sample of it (on any CPU, to float rounding)."""
    import torch

    from dpo_pipeline.models.generation import chat_prompts
    from dpo_pipeline.models.kl import sequence_kls

    path, _ = micro
    tok, model = load_tokenizer(str(path)), _nudged(path, 0.2)
    prompts = [f"Pager alert. search is unreachable {i}." for i in range(4)]
    got = sequence_kls(model, tok, prompts, max_new_tokens=1, seed=0)
    for prompt, (kl, _, tokens) in zip(prompts, got):
        ids = tok(chat_prompts(tok, [prompt]), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            with model.disable_adapter():
                q = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
        assert tokens == 1
        # float32 log-softmax against float64: rounding of ~1e-7 a term over a 320-token vocabulary
        assert kl == pytest.approx(float((p.exp() * (p - q)).sum()), rel=1e-4, abs=1e-6)


def test_kl_is_never_negative_where_the_log_ratio_estimate_is(micro):
    """A policy very near its reference (true KL ~3e-4 nats a sequence): a sequence's sampled log-ratio sum
    (k1) spreads far wider than the KL (its variance is about twice the KL), so each sequence's k1 is below
    zero about half the time and over 32 sequences some are on any CPU (all 32 above: ~2^-32), and k1's mean
    is negative about as often as not (it was the tiny run's -0.0623). The exact per-position KL is >= 0 for
    every sequence, and so is everything built on it, with a CI tens of times narrower."""
    from dpo_pipeline.models.kl import kl_summary, sequence_kls

    path, _ = micro
    tok, model = load_tokenizer(str(path)), _nudged(path, 0.01)
    prompts = [f"Pager alert. {s} is unreachable {i}." for i, s in enumerate(["search", "payments"] * 16)]
    values = sequence_kls(model, tok, prompts, max_new_tokens=10, seed=0)
    exact, k1 = kl_summary(values, 1000, 0), kl_summary(values, 1000, 0, estimator="k1")
    assert min(k1_sum for _, k1_sum, _ in values) < 0
    assert min(kl for kl, _, _ in values) >= 0 and 0 <= exact["kl_ci_low"] <= exact["kl"] <= exact["kl_ci_high"]
    assert exact["kl"] > 0 and exact["kl_per_token"] > 0
    assert exact["kl_ci_high"] - exact["kl_ci_low"] < (k1["kl_ci_high"] - k1["kl_ci_low"]) / 5


def test_a_process_share_of_the_kl_batches_gets_the_values_the_whole_list_does(micro):
    """What eval's KL under several processes stands on: process r scores batches r, r + N, ... joined into one
    list, cut again into the same batches; its per-sequence values equal those of one process over every
    prompt, and `interleave` puts the shares back in the prompts' order (so the estimate is byte-identical)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_pipeline.models.kl import sequence_kls
    from dpo_pipeline.models.parallel import interleave

    path, _ = micro
    tok = load_tokenizer(str(path))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
    prompts = [f"Pager alert. {s} is unreachable {i}." for i, s in enumerate(["search", "payments "] * 5)]
    kw = dict(max_new_tokens=10, seed=0, batch_size=3)
    whole = sequence_kls(model, tok, prompts, **kw)
    assert len(whole) == 10 and all(n > 0 for *_, n in whole) and len({kl for kl, *_ in whole}) == 10
    batches = [prompts[s:s + 3] for s in range(0, 10, 3)]  # 3, 3, 3, 1
    shares = [sequence_kls(model, tok, [p for b in batches[r::2] for p in b], **kw) for r in range(2)]
    assert interleave(shares, len(prompts), 3) == whole
    assert interleave([sequence_kls(model, tok, prompts[:3], **kw), [], []], 3, 3) == whole[:3]  # idle processes


def test_prompts_too_long_for_the_context_are_found_not_crashed_on(micro):
    from transformers import AutoModelForCausalLM

    from dpo_pipeline.models.generation import fitting

    path, _ = micro
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path))
    context = model.config.max_position_embeddings
    prompts = ["search is down.", "search is down. " * context, "payments is slow."]
    assert fitting(model.config, tok, prompts, max_new_tokens=16) == [0, 2]
    out = generate(model, tok, [prompts[i] for i in fitting(model.config, tok, prompts, 16)], temperature=0, top_p=1.0,
                   max_new_tokens=16, batch_size=4, seed=0)
    assert len(out) == 2


def test_micro_batches_take_each_step_the_examples_of_one_padded_batch(tmp_path):
    """model.tiny.micro_batch_size / sft.micro_batch_size: each optimizer step's examples, cut by length into
    micro-batches, are the ones the default sampler puts in one batch, for any seed and epoch, with less padding.
    transformers' own batch_rebalance sampler shuffles with seed 42 whatever the seed: seeded_batches mends it."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from dpo_pipeline.models.training import batching, common_args, seeded_batches

    ds = Dataset.from_dict({"input_ids": [[i] * (1 + i * 37 % 23) for i in range(48)]})  # lengths 1..23

    def steps(trainer_class, seed: int, epoch: int, micro_batches: int) -> tuple[list[list[int]], int]:
        """Each step's example ids (sorted), and the tokens computed with each micro-batch padded."""
        args = TrainingArguments(remove_unused_columns=False, **batching(8, 8 // micro_batches),
                                 **common_args(str(tmp_path), seed))
        trainer = trainer_class(model=torch.nn.Linear(1, 1), args=args, train_dataset=ds,
                                data_collator=lambda rows: {"ids": [r["input_ids"] for r in rows]})
        loader = trainer.get_train_dataloader()
        loader.set_epoch(epoch)  # as Trainer's loop does, the wrapped sampler included
        if hasattr(inner := getattr(loader.batch_sampler, "batch_sampler", None), "set_epoch"):
            inner.set_epoch(epoch)
        micro = [b["ids"] for b in loader]
        padded = sum(len(b) * max(map(len, b)) for b in micro)
        return [sorted(x[0] for b in micro[i:i + micro_batches] for x in b)
                for i in range(0, len(micro), micro_batches)], padded

    for seed, epoch in [(0, 0), (0, 1), (7, 0), (42, 1)]:
        whole, padded = steps(Trainer, seed, epoch, 1)
        cut, cut_padded = steps(seeded_batches(Trainer), seed, epoch, 4)
        assert len(whole) == 6 and cut == whole, (seed, epoch)
        assert cut_padded < 0.8 * padded
    # transformers still seeds its sampler with 42: the day this fails, it seeds it itself; drop seeded_batches
    assert steps(Trainer, 7, 0, 4)[0] != steps(Trainer, 7, 0, 1)[0]


def test_progress_shows_count_elapsed_rate_and_eta(monkeypatch):
    import io
    import re

    from rich.console import Console

    from dpo_pipeline.progress import progress

    monkeypatch.setenv("CI", "1")  # keep the finished bar on screen
    out = io.StringIO()
    with progress("prompts", console=Console(file=out, width=160)) as p:
        bar = p.add_task("sampling", total=4)
        for _ in range(4):
            p.advance(bar)
    line = out.getvalue().strip().splitlines()[-1]
    assert "sampling" in line and "4/4" in line and "100%" in line, line
    assert re.search(r"\d+:\d\d:\d\d", line), line  # elapsed and ETA as h:mm:ss
    assert re.search(r"[\d,.]+ prompts/s", line), line
    assert "ETA" in line, line


def test_each_round_is_its_adapter_on_the_round_before_merged_and_eval_keeps_sft(micro, tmp_path):
    """The one way a round's policy is made (models/loading.py): round k is its own adapter unmerged on the SFT
    model with rounds 1..k-1 merged in turn, as PEFT builds it step by step here; load_merged(k) is that merged;
    round_policies yields them in eval mode and leaves the SFT model it is given as it was (eval's KL
    reference for every round after the first)."""
    from pathlib import Path

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_pipeline.config import load_params
    from dpo_pipeline.models.loading import load_base, load_merged, load_round, load_sft, round_policies
    from dpo_pipeline.models.lora import save_adapter
    from dpo_pipeline.rounds import adapters

    path, _ = micro
    paths = load_params(Path(__file__).resolve().parents[1] / "params.yaml").paths.model_copy(update={
        "base_model": str(path), "sft_model": str(tmp_path / "sft"), "dpo_model": str(tmp_path / "dpo"),
        "rounds": str(tmp_path / "rounds")})
    torch.manual_seed(0)
    for out in [paths.sft_model, *adapters(paths, 3)]:  # adapters that differ and move the weights (B != 0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.1 * torch.randn_like(p))
        save_adapter(model, Path(out))

    def weights(model) -> dict:
        return {k: v.clone() for k, v in model.state_dict().items()}

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    by_hand = PeftModel.from_pretrained(load_base(paths), paths.sft_model).merge_and_unload()
    assert same(weights(load_sft(paths)), weights(by_hand))
    sft = load_sft(paths).eval()
    sft_weights, seen = weights(sft), []
    for k, (name, model) in enumerate(round_policies(paths, 3, sft), 1):
        seen.append(name)
        assert not model.training
        expected = PeftModel.from_pretrained(by_hand, adapters(paths, k)[-1])
        assert same(weights(model), weights(expected)) and same(weights(load_round(paths, k)), weights(expected))
        by_hand = expected.merge_and_unload()
        assert same(weights(load_merged(paths, k)), weights(by_hand))
    assert seen == ["dpo", "dpo_r2", "dpo_r3"]
    assert same(weights(sft), sft_weights) and not same(sft_weights, weights(by_hand))


def test_the_training_summary_rounds_and_never_reads_minus_zero():
    """A step at the reference logs margins of exactly 0 that float rounding can sign negative; metrics and the
    report show 0.0."""
    from dpo_pipeline.models.dpo import summarize

    history = [{"loss": 0.6931, "rewards/chosen": -1e-9, "rewards/rejected": 0.0, "rewards/margins": -1e-9,
                "rewards/accuracies": 0.0},
               {"eval_loss": 0.69, "eval_rewards/margins": -0.0, "eval_rewards/accuracies": 0.0},
               {"loss": 0.412345, "rewards/chosen": 0.5, "rewards/rejected": -1.0, "rewards/margins": 1.234567,
                "rewards/accuracies": 0.875}]
    s = summarize(history)
    assert str(s["first_step"]["rewards/margins"]) == "0.0" and str(s["first_step"]["rewards/chosen"]) == "0.0"
    assert str(s["eval_first"]["rewards/margins"]) == "0.0"
    assert s["final"] == {"loss": 0.4123, "rewards/margins": 1.2346, "rewards/accuracies": 0.875}
