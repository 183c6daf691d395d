"""Data-parallel generation for the sample and eval stages, and the KL estimates of eval and of the train
stage's monitor: N processes under torchrun (gloo on CPU, one process per GPU with NCCL), each working on a
share of the batches; every process gets the gathered result and process 0 alone goes on to write.

The outputs depend neither on the number of processes nor on the batch size: `generation.generate` seeds
each prompt by the prompt itself (tested byte for byte). Process r takes batches r, r + N, ... of the list, so
the shares stay balanced when prompts are sorted by length or source.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def relaunch_if_needed(module: str, num_processes: int) -> None:
    """In the one process dvc started, with num_processes > 1: run `python -m module` (with this process's
    arguments, e.g. `--round 2`) as that many processes under torchrun and exit with their exit code (torchrun
    sets OMP_NUM_THREADS=1: no oversubscription)."""
    if num_processes > 1 and world()[1] == 1:
        sys.exit(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={num_processes}", "-m", module, *sys.argv[1:]]).returncode)


def init() -> None:
    """Join the process group (a no-op in one process); each process on its own GPU where there are GPUs."""
    if world()[1] == 1 or torch.distributed.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def finish() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def generate(model, tokenizer, prompts: list, *, batch_size: int, seed: int, label: str = "generating",
             **decoding) -> list[dict]:
    """`generation.generate` over this process's share of the batches, gathered in order on every process."""
    from dpo_pipeline.models.generation import generate as generate_batches

    rank, size = world()
    label = label if size == 1 else f"{label} [{rank + 1}/{size}]"
    return map_batches(lambda share: generate_batches(model, tokenizer, share, batch_size=batch_size, seed=seed,
                                                      label=label, **decoding), prompts, batch_size)


def map_batches(fn, items: list, batch_size: int) -> list:
    """`fn(items)` (one result per item, in batches of `batch_size` it cuts itself) with each process running it
    on its share of the batches: process r takes batches r, r + N, ... Those batches joined and cut again are
    the same batches, as all but the very last are full, so `fn` computes exactly what one process would, and
    the results come back in the items' order on every process."""
    rank, size = world()
    if size == 1:
        return fn(items)
    starts = range(0, len(items), batch_size)
    shares: list = [None] * size
    torch.distributed.all_gather_object(shares, fn([x for s in starts[rank::size] for x in items[s:s + batch_size]]))
    return interleave(shares, len(items), batch_size)


def interleave(shares: list[list], n: int, batch_size: int) -> list:
    """The processes' results back in the order of the n items: batch i is the (i // N)-th batch of share i % N."""
    size = len(shares)
    return [x for i in range(-(-n // batch_size))
            for x in shares[i % size][i // size * batch_size:(i // size + 1) * batch_size]]
