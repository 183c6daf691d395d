"""Models: the builtin tiny base model, resolving and loading base / SFT / SFT+DPO, LoRA targets, and batched
generation.

Every stage after `prepare` loads models only through AutoModelForCausalLM / AutoTokenizer (+ PEFT): from
the folder `prepare` wrote (the builtin model), or from where the manifest `prepare` or `sft` wrote says a
hub or local model is (a real model is referenced, not copied into the DVC cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase,
                          TrainerCallback)

from stages.chat import user
from stages.config import ModelParams, Paths, UserError
from stages.progress import progress as progress_bar

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
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          callbacks=[TrainingProgress("pre-training the builtin model")])
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "final_loss": round(result.training_loss, 4), "vocab_size": len(tokenizer)}


class TrainingProgress(TrainerCallback):
    """A progress bar over optimizer steps for transformers/TRL trainers (their tqdm bars are off: the log
    dicts go to dvclive). Drawn by the main process only; it touches no RNG, so results do not change."""

    def __init__(self, description: str) -> None:
        self.description, self.bar = description, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar("steps")
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ---------------------------------------------------------------------------------------------------------
# Resolving external models: referenced, never copied into the DVC cache

MANIFEST = "manifest.json"
# Used when a tokenizer has none (e.g. GPT-2): the builtin template's layout, ending each turn with the
# tokenizer's own end-of-sequence token so generation stops where a turn ends.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tree_sha256(folder: Path) -> str:
    """One hash over a folder's file names and contents (a 1 GB model takes a few seconds)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def resolve(key: str, name: str, revision: str | None = None) -> dict:
    """A local folder or a hub id, resolved to what a manifest records: the folder, the hub commit, a hash.
    A hub id is looked up in the local Hugging Face cache or downloaded (never hangs: short timeouts)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return {"name": name, "path": str(local.resolve()), "revision": None, "sha256": tree_sha256(local)}
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{key}: {name!r} is not a model folder (not found)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = snapshot_download(name, revision=revision, etag_timeout=10)
    except HFValidationError:
        raise UserError(f"{key}: {name!r} is neither a local folder nor a valid hub id") from None
    except OSError as e:  # offline, unknown repo or revision: huggingface_hub's errors are OSErrors
        raise UserError(f"{key}: cannot get {name!r} from the hub ({str(e).splitlines()[0]}); without network "
                        "use a local folder, or download it once and set HF_HUB_OFFLINE=1") from None
    return {"name": name, "path": folder, "revision": Path(folder).name, "sha256": None}


def write_manifest(out_dir: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def model_folder(out_dir: str | Path) -> dict:
    """What a stage output holds: a model saved in it, or a manifest naming a model elsewhere."""
    manifest = Path(out_dir) / MANIFEST
    if manifest.exists():
        return json.loads(manifest.read_text())
    if not Path(out_dir).is_dir():
        raise UserError(f"{out_dir}: not found; run `dvc repro` (the stage that writes it comes first)")
    return {"path": str(out_dir), "kind": "adapter" if (Path(out_dir) / "adapter_config.json").exists() else "full"}


# ---------------------------------------------------------------------------------------------------------
# Loading


def device() -> str:
    # Under torchrun each process drives the GPU of its local rank.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def use_bf16() -> bool:
    """bf16 where the GPU supports it (Ampere and later): half the memory of float32 and its range, so no
    loss scaling. Elsewhere float32: CPU results stay exactly reproducible."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def dtype() -> torch.dtype:
    return torch.bfloat16 if use_bf16() else torch.float32


def load_tokenizer(paths: Paths) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, or a full SFT model's own when it has one."""
    sft = model_folder(paths.sft_model) if Path(paths.sft_model).exists() else {}
    has_own = sft.get("kind") == "full" and (Path(sft["path"]) / "tokenizer_config.json").exists()
    return tokenizer_from(sft["path"] if has_own else model_folder(paths.base_model)["path"])


def tokenizer_from(path: str | Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path)
    if tok.chat_template is None:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(paths: Paths) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_folder(paths.base_model)["path"], dtype=dtype()).to(device())


def load_sft(paths: Paths) -> PreTrainedModel:
    """The SFT model, which is also DPO's reference policy: base + SFT adapter merged, or a full model."""
    from peft import PeftModel

    sft = model_folder(paths.sft_model)
    if sft["kind"] == "full":
        return AutoModelForCausalLM.from_pretrained(sft["path"], dtype=dtype()).to(device())
    return PeftModel.from_pretrained(load_base(paths), sft["path"]).merge_and_unload()


def load_dpo(paths: Paths) -> PreTrainedModel:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_sft(paths), paths.dpo_model)


def load_policy(name: str, paths: Paths) -> PreTrainedModel:
    model = {"base": load_base, "sft": load_sft, "dpo": load_dpo}[name](paths)
    return model.eval()


# Every attention and MLP projection, by `config.model_type`: what "all-linear" means for these
# architectures, written out so a user sees (and can trim) the list. Others get PEFT's "all-linear".
LORA_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
                    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def lora_config(model: PreTrainedModel, targets: str | list[str], r: int, alpha: float, dropout: float):
    """A LoRA config for `model`: targets "auto" (by architecture) or the given module names, checked."""
    from peft import LoraConfig

    model_type = model.config.model_type
    modules = LORA_TARGETS.get(model_type, "all-linear") if targets == "auto" else targets
    if isinstance(modules, list):
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if missing := sorted(set(modules) - names):
            raise UserError(f"model.lora_target_modules: no module named {', '.join(missing)} in this "
                            f"{model_type} model")
    # GPT-2 keeps its projections as Conv1D with transposed weights; PEFT needs to be told.
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                      fan_in_fan_out=model_type == "gpt2", task_type="CAUSAL_LM")


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


def chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list) -> list[str]:
    """Prompts (a user message's text, or a conversation as a message list) rendered for generation."""
    return [tokenizer.apply_chat_template(p if isinstance(p, list) else user(p), tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def fitting(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, max_new_tokens: int) -> list[int]:
    """Indices of the prompts that leave room for `max_new_tokens` in the model's context; a longer prompt
    would crash generation (positions past the context) or be cut, so stages drop it and say how many."""
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer(chat_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
    return [i for i, n in enumerate(lengths) if n + max_new_tokens <= context]


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, *,
             temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
             label: str = "generating") -> list[dict]:
    """One response per prompt: {"text", "tokens"}. Batched with left padding; each batch reseeds from
    `seed`, so the same prompts and params give the same responses whatever ran before."""
    tokenizer.padding_side = "left"
    out: list[dict] = []
    with progress_bar("prompts") as progress:
        bar = progress.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = chat_prompts(tokenizer, batch)
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


@torch.no_grad()
def sequence_kl(model, tokenizer: PreTrainedTokenizerBase, prompts: list, *, max_new_tokens: int, seed: int,
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
def _log_ratio(model, tokenizer, prompts: list, max_new_tokens: int) -> tuple[float, int]:
    """Sum over sampled responses of log policy - log reference, and the number of response tokens."""
    texts = chat_prompts(tokenizer, prompts)
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
