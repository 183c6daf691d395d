"""The builtin base model: a small Llama with its own byte-level BPE tokenizer, trained from scratch on the
task's raw text (`model.base: builtin:tiny`), so the whole pipeline runs offline in minutes on a CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from dpo_pipeline.config import ModelParams
from dpo_pipeline.models.training import TrainingProgress, batching, common_args, seeded_batches

# A minimal chat template: `<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>\n`. The rendered prompt is a
# prefix of the rendered prompt+completion, which TRL's completion-only loss relies on.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


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
            num_train_epochs=t.epochs, learning_rate=t.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=0.05, weight_decay=0.01, logging_steps=50, **batching(t.batch_size, t.micro_batch_size),
            **common_args(tmp, seed),
        )
        trainer = seeded_batches(Trainer)(model=model, args=args, train_dataset=ds,
                                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                                          callbacks=[TrainingProgress("pre-training the builtin model")])
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "final_loss": round(result.training_loss, 4), "vocab_size": len(tokenizer)}
