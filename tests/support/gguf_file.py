"""A tiny llama GGUF file with its tokenizer and chat template, as llama.cpp writes them."""

from __future__ import annotations

import json
from pathlib import Path

from dpo_pipeline.models.tiny import CHAT_TEMPLATE, build_tokenizer
from tests.support.models import TEXTS


def write_tiny_gguf(path: Path) -> Path:
    """A seeded, randomly initialised llama (2 layers, hidden 32) as a GGUF file with F32 tensors: the
    metadata keys and tensor names transformers' GGUF loader reads (integrations/ggml.py,
    modeling_gguf_pytorch_utils.py), and a byte-level BPE tokenizer stored the way llama.cpp stores one."""
    import gguf
    import numpy as np

    tok = build_tokenizer(TEXTS, 320)
    bpe = json.loads(tok.backend_tokenizer.to_str())["model"]
    # GPT2Tokenizer adds <|endoftext|> (its default unk) when the vocabulary lacks it: in the file, the
    # tokenizer's size matches the model's.
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get) + ["<|endoftext|>"]
    special = set(tok.all_special_tokens) | {"<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"}
    hidden, ffn, heads, kv_heads, layers = 32, 64, 4, 2, 2

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    # The tokenizer: "gpt2" is llama.cpp's name for byte-level BPE; CONTROL tokens stay whole when encoding.
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([" ".join(pair) for pair in bpe["merges"]])
    w.add_bos_token_id(tok.eos_token_id)  # as GPT-2: one token begins and ends a text
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # Tensors in torch order (out, in); no `output.weight`, so the loader ties the embeddings.
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int, norm: bool = False) -> None:
        data = np.ones(shape) if norm else 0.02 * rng.standard_normal(shape)  # norms start at 1, as llama's
        w.add_tensor(name, data.astype(np.float32))

    add("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden, norm=True)
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", hidden * kv_heads // heads, hidden)
        add(f"blk.{i}.attn_v.weight", hidden * kv_heads // heads, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden, norm=True)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    add("output_norm.weight", hidden, norm=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
