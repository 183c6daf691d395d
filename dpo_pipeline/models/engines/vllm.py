"""The vLLM engine (`generation.engine: vllm`): the policy served from its folders, each prompt one request,
run by `vllm_worker` in the vLLM environment's interpreter.

What each model is to vLLM: the base model its folder; the SFT model the base with the SFT adapter as a
`LoRARequest` (no merged copy; a full SFT model its own folder), so base and SFT share one engine start;
round k's policy a merged folder written for the call (vLLM applies one adapter at a time, and round k stacks
k + 1). Prompts are rendered and tokenized here with the pipeline's chat template and tokenizer, and the
output ids decoded here, so rows look as the transformers engine writes them: {"text", "tokens"}. Each
request carries the seed the transformers engine uses for that prompt, so a response does not depend on the
other prompts; vLLM's sampler is not ours, so the texts differ from the transformers engine's. With
num_processes N the requests of an engine start are cut into N consecutive blocks, an engine each, a GPU each,
all from the stage's one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from dpo_pipeline.config import Params, Paths
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.models.engines import vllm_worker
from dpo_pipeline.models.engines.base import Engine, Job, Policy
from dpo_pipeline.models.generation import chat_prompts, prompt_seed
from dpo_pipeline.models.loading import load_merged, load_tokenizer
from dpo_pipeline.models.manifest import model_folder

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # where the worker module resolves in the other env


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, params: Params, section: Literal["sample", "eval"]):
        super().__init__(params, section)
        python, n, gpus = Path(params.generation.vllm_python), self.settings.num_processes, gpu_count()
        if not python.exists():
            raise UserError(f"generation.vllm_python: {python} not found; create the vLLM environment with "
                            "`make vllm` (or set generation.engine: transformers)")
        if gpus and n > gpus:
            raise UserError(f"{section}.num_processes: {n} vLLM engines, one a GPU, but this machine has {gpus} GPUs")

    def generate(self, jobs: list[Job], label: str) -> list[list[dict]]:
        rows: list[list[dict]] = []
        for run in starts(self.params.paths, jobs):
            names = " and ".join(dict.fromkeys(job.name for job in run))
            with serving(self.params.paths, [job.policy for job in run]) as served:
                groups = [group(job, lora=job.policy.round == 0 and "lora" in served) for job in run]
                rows += run_groups(self.params, served, groups, f"{label} {names}", self.settings.num_processes)
        return rows


def starts(paths: Paths, jobs: list[Job]) -> list[list[Job]]:
    """The jobs cut into engine starts: consecutive jobs one engine serves together (one policy, or the base
    beside the SFT adapter on it)."""
    def folder(policy: Policy):  # what the engine starts from: a round's merged policy is a folder of its own
        if policy.round is None:
            return model_folder(paths.base_model).path
        return served_sft(paths)["model"] if policy.round == 0 else ("round", policy.round)

    runs: list[list[Job]] = []
    keys = [folder(job.policy) for job in jobs]
    for i, job in enumerate(jobs):
        if i and keys[i] == keys[i - 1]:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


@contextmanager
def serving(paths: Paths, policies: list[Policy]) -> Iterator[dict]:
    """What one engine start serves for `policies` (as `starts` groups them): {"model", "lora"?}."""
    if any(p.round for p in policies):  # round k >= 1: alone in its start
        with served_policy(paths, policies[0].round) as served:
            yield served
    elif any(p.round == 0 for p in policies):
        yield served_sft(paths)
    else:
        yield {"model": model_folder(paths.base_model).path}


def group(job: Job, lora: bool) -> dict:
    """A job as the worker's request group; `lora`: the served adapter applies."""
    d = job.decoding
    return {"prompts": job.prompts, "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
            "max_new_tokens": d.max_new_tokens, "seed": d.seed, "lora": lora}


def served_sft(paths: Paths) -> dict:
    """The SFT model as vLLM serves it: the base with the adapter as a LoRA request, or a full model."""
    base, sft = model_folder(paths.base_model).path, model_folder(paths.sft_model)
    if sft.kind == "full":
        return {"model": sft.path}
    return {"model": base, "lora": lora(sft.path)}


def lora(folder: str) -> dict:
    """The adapter vLLM will apply, with the rank it must be started with; what vLLM cannot apply is refused."""
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    if cfg.get("modules_to_save") or cfg.get("use_dora"):
        raise UserError(f"model.sft: the adapter in {folder} has {'DoRA' if cfg.get('use_dora') else 'modules_to_save'}"
                        ", which vLLM cannot serve; use generation.engine: transformers")
    return {"path": str(Path(folder).resolve()), "rank": max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])}


@contextmanager
def served_policy(paths: Paths, k: int) -> Iterator[dict]:
    """Round k's policy (k = 0: the SFT model) as vLLM serves it; k >= 1 as a merged folder, removed after."""
    if k == 0:
        yield served_sft(paths)
        return
    with tempfile.TemporaryDirectory(prefix=f"policy-r{k}-") as folder:
        model = load_merged(paths, k)
        model.save_pretrained(folder)
        load_tokenizer(paths).save_pretrained(folder)
        del model
        yield {"model": folder}


def vllm_request(params: Params, served: dict, groups: list[dict], tokenizer=None) -> dict:
    """The worker's request: the served model, and one request per prompt of each group with that prompt's
    seed, the one the transformers engine uses for it (models/generation.prompt_seed)."""
    tokenizer = tokenizer or load_tokenizer(params.paths)
    requests, longest = [], 0
    for g in groups:
        ids = tokenizer(chat_prompts(tokenizer, g["prompts"]), add_special_tokens=False)["input_ids"]
        longest = max([longest, *(len(x) + g["max_new_tokens"] for x in ids)])
        requests += [{"prompt_token_ids": x, "lora": bool(g.get("lora")), "seed": prompt_seed(g["seed"], p),
                      "temperature": g["temperature"], "top_k": g["top_k"], "top_p": g["top_p"],
                      "max_tokens": g["max_new_tokens"], "stop_token_ids": [tokenizer.eos_token_id]}
                     for x, p in zip(ids, g["prompts"])]
    import torch

    gpu = torch.cuda.is_available()
    return {"model": served["model"], "tokenizer": tokenizer.name_or_path, "lora": served.get("lora"),
            "dtype": ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if gpu else "float32",
            "max_model_len": longest, "enforce_eager": not gpu,  # CPU: compiling costs ~2 min, gains ~4%
            "gpu_memory_utilization": params.generation.vllm_gpu_memory_utilization, "requests": requests}


def run_groups(params: Params, served: dict, groups: list[dict], label: str, n: int = 1) -> list[list[dict]]:
    """One engine start: `groups` ({prompts, temperature, top_k, top_p, max_new_tokens, seed, lora}) as requests
    cut into n consecutive blocks, an engine each, started together; each group's rows in its prompts' order."""
    gpus = gpu_count()
    if gpus:
        import torch

        torch.cuda.empty_cache()  # what this process's models left cached goes back to the engines
    tokenizer = load_tokenizer(params.paths)
    request = vllm_request(params, served, groups, tokenizer)
    requests = request["requests"]
    print(f"{label}: {len(requests)} requests to vLLM ({params.generation.vllm_python}"
          + (f", {n} engines" if n > 1 else "") + ")", flush=True)
    blocks = [{**request, "requests": requests[len(requests) * i // n:len(requests) * (i + 1) // n]}
              for i in range(n)]
    rows = []
    for out in run_engines(params, blocks, label, gpus):
        ids = out["token_ids"]
        n_tokens = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
        rows.append({"text": tokenizer.decode(ids[:n_tokens], skip_special_tokens=True).strip(), "tokens": n_tokens})
    result, start = [], 0
    for g in groups:
        result.append(rows[start:start + len(g["prompts"])])
        start += len(g["prompts"])
    return result


def run_engines(params: Params, blocks: list[dict], label: str, gpus: int) -> list[dict]:
    """One worker a block, all started together; their outputs in the blocks' order."""
    cfg = params.generation
    # In-process engine core: vLLM's scheduling, and so its batches and sampled tokens, repeat run to run.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "VLLM_CPU_KVCACHE_SPACE": f"{cfg.vllm_kv_cache_gib:g}",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # engine i on the i-th GPU this process sees (CUDA_VISIBLE_DEVICES may already name a subset)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
    with tempfile.TemporaryDirectory(prefix="vllm-") as tmp:
        procs = []
        for i, block in enumerate(blocks):
            req_path, out_path = Path(tmp) / f"request{i}.json", Path(tmp) / f"outputs{i}.jsonl"
            req_path.write_text(json.dumps(block))
            log = open(Path(tmp) / f"log{i}.txt", "w+")
            procs.append((subprocess.Popen([cfg.vllm_python, "-m", vllm_worker.__name__, str(req_path), str(out_path)],
                                           env={**env, "CUDA_VISIBLE_DEVICES": devices[i]} if gpus else env,
                                           stdout=log, stderr=subprocess.STDOUT, text=True), log, out_path))
        outputs = []
        try:
            for proc, log, out_path in procs:
                proc.wait()
                log.seek(0)
                if proc.returncode != 0:
                    last = [line for line in log.read().splitlines() if line.strip()][-1:] or ["no output"]
                    raise ServiceError(f"vLLM failed ({label}, exit {proc.returncode}): {last[0][:300]}")
                outputs += [json.loads(line) for line in out_path.read_text().splitlines()]
        finally:  # one engine failed or the stage was stopped: the others go too
            for proc, log, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
    return outputs


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
