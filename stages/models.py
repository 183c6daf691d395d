"""Models: the builtin tiny base model, loading base / SFT / SFT+DPO, and batched generation.

Every stage after `prepare` loads models only through AutoModelForCausalLM / AutoTokenizer (+ PEFT), from
the folder `prepare` wrote, exactly as it would load a hub model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from rich.progress import Progress
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from stages.chat import user
from stages.config import ModelParams, Paths, UserError

# A minimal chat template: `<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>\n`. The rendered prompt is a
# prefix of the rendered prompt+completion, which TRL's completion-only loss relies on.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


# ---------------------------------------------------------------------------------------------------------
# The builtin base model: a small Llama trained from scratch on the task's raw text


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=1024)


def train_tiny_base(texts: list[str], cfg: ModelParams, seed: int, out_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import (DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, PrinterCallback,
                              Trainer, TrainingArguments, set_seed)

    set_seed(seed)
    t = cfg.tiny
    tokenizer = build_tokenizer(texts, t.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads, intermediate_size=t.intermediate_size,
        max_position_embeddings=max(256, cfg.max_length), tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    ds = Dataset.from_dict({"text": [x + tokenizer.eos_token for x in texts]})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.max_length),
                batched=True, remove_columns=["text"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=t.epochs, per_device_train_batch_size=t.batch_size,
            learning_rate=t.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.01,
            logging_steps=50, save_strategy="no", report_to="none", seed=seed, data_seed=seed,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "final_loss": round(result.training_loss, 4), "vocab_size": len(tokenizer)}


# ---------------------------------------------------------------------------------------------------------
# Loading


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path)
    if tok.chat_template is None:
        raise UserError(f"model.base: the tokenizer in {path} has no chat template; use an instruct/chat model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(paths: Paths) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(paths.base_model, dtype=torch.float32).to(device())


def load_sft(paths: Paths) -> PreTrainedModel:
    """Base + SFT adapter, merged: the SFT model, which is also DPO's reference policy."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(paths), paths.sft_model).merge_and_unload()


def load_dpo(paths: Paths) -> PreTrainedModel:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_sft(paths), paths.dpo_model)


def load_policy(name: str, paths: Paths) -> PreTrainedModel:
    model = {"base": load_base, "sft": load_sft, "dpo": load_dpo}[name](paths)
    return model.eval()


def save_adapter(model: PreTrainedModel, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    # PEFT keeps target_modules as a set, so their order in adapter_config.json follows Python's per-process
    # string hashing. Sorted, identical params give byte-identical adapters (and DVC hashes).
    path = Path(out_dir) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
             temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
             label: str = "generating") -> list[dict]:
    """One response per prompt: {"text", "tokens"}. Batched with left padding; each batch reseeds from
    `seed`, so the same prompts and params give the same responses whatever ran before."""
    tokenizer.padding_side = "left"
    out: list[dict] = []
    with Progress(transient=not os.environ.get("CI")) as progress:
        bar = progress.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(user(p), tokenize=False, add_generation_prompt=True)
                     for p in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(seed + start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
                else {"do_sample": False}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                n = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
                out.append({"text": tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), "tokens": n})
            progress.advance(bar, len(batch))
    return out


def load_pretrained(name_or_path: str, out_dir: Path) -> dict:
    """A hub id or local folder, loaded and saved into the pipeline's base-model folder."""
    try:
        tokenizer = load_tokenizer(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except OSError as e:
        raise UserError(f"model.base: cannot load {name_or_path!r}: {str(e).splitlines()[0]}") from None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def sequence_kl(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, max_new_tokens: int, seed: int,
                batch_size: int = 64) -> dict:
    """Monte-Carlo KL(policy || reference) for a PEFT model whose reference is the model with its adapter
    disabled: sample y ~ policy(.|x) at temperature 1, sum log policy(y_t) - log reference(y_t) over y's tokens,
    average over sequences ("kl"); "kl_per_token" divides by the tokens instead."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    total, tokens = 0.0, 0
    # Sampling reseeds torch; fork the RNG so a measurement during training leaves training's draws alone.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        for start in range(0, len(prompts), batch_size):
            torch.manual_seed(seed + start)
            batch_total, batch_tokens = _log_ratio(model, tokenizer, prompts[start:start + batch_size],
                                                   max_new_tokens)
            total, tokens = total + batch_total, tokens + batch_tokens
    model.train(was_training)
    return {"kl": total / len(prompts), "kl_per_token": total / max(tokens, 1)}


@torch.no_grad()
def _log_ratio(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[float, int]:
    """Sum over sampled responses of log policy - log reference, and the number of response tokens."""
    texts = [tokenizer.apply_chat_template(user(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    prompt_len = enc["input_ids"].shape[1]
    gen = seqs[:, prompt_len:]
    # A response's tokens run up to and including its first end-of-sequence token; the rest is padding.
    is_eos = (gen == tokenizer.eos_token_id).long()
    response = (is_eos.cumsum(1) - is_eos) == 0
    mask = torch.cat([enc["attention_mask"], response.long()], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions count real tokens only

    def logprobs() -> torch.Tensor:
        logits = model(input_ids=seqs, attention_mask=mask, position_ids=positions).logits[:, prompt_len - 1:-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)

    policy = logprobs()
    with model.disable_adapter():
        reference = logprobs()
    return ((policy - reference) * response).sum().item(), int(response.sum().item())
