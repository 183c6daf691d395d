"""Where models run: the device of this process and the dtype used there."""

from __future__ import annotations

import os

import torch


def device() -> str:
    # Under torchrun each process drives the GPU of its local rank.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def use_bf16() -> bool:
    """bf16 where the GPU supports it (Ampere and later): half the memory of float32 and its range, so no
    loss scaling. Elsewhere float32: CPU results stay exactly reproducible."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def dtype() -> torch.dtype:
    return torch.bfloat16 if use_bf16() else torch.float32
