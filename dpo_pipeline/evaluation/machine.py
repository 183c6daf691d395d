"""What made a run's numbers: the machine eval.json records beside them."""

from __future__ import annotations

from pathlib import Path

import torch


def machine() -> dict:
    """What made these numbers. Floats differ across CPU types (another CPU gave another `models/base` from
    the first stage on), so results name the processor, the vector extensions torch used and its threads."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    info = {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__.split("+")[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
