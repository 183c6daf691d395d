"""Where models come from and where they run: resolving a hub id or local folder (referenced, never copied
into the DVC cache), the manifests `prepare` and `sft` write, the device and dtype, and loading base, SFT
and SFT+DPO.

Every stage after `prepare` loads models only through AutoModelForCausalLM / AutoTokenizer (+ PEFT): from
the folder `prepare` wrote (the builtin model), or from where the manifest says a hub or local model is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dpo_pipeline.config import Paths
from dpo_pipeline.errors import UserError
from dpo_pipeline.rounds import adapters, model_key

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
    """What a stage output holds: a model saved in it, or a manifest naming a model elsewhere. A manifest
    with no `path` describes the model saved beside it (a converted builtin)."""
    manifest = Path(out_dir) / MANIFEST
    if manifest.exists():
        return {"path": str(out_dir), **json.loads(manifest.read_text())}
    if not Path(out_dir).is_dir():
        raise UserError(f"{out_dir}: not found; run `dvc repro` (the stage that writes it comes first)")
    return {"path": str(out_dir), "kind": "adapter" if (Path(out_dir) / "adapter_config.json").exists() else "full"}


# ---------------------------------------------------------------------------------------------------------
# Loading


def device() -> str:
    # Under torchrun each process drives the GPU of its local rank.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


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


def base_config(paths: Paths):
    """The base model's config, read without its weights (its context length decides what prompts fit)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_folder(paths.base_model)["path"])


def load_base(paths: Paths) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_folder(paths.base_model)["path"], dtype=dtype()).to(device())


def load_sft(paths: Paths) -> PreTrainedModel:
    """The SFT model, which is also DPO's reference policy: base + SFT adapter merged, or a full model."""
    from peft import PeftModel

    sft = model_folder(paths.sft_model)
    if sft["kind"] == "full":
        return AutoModelForCausalLM.from_pretrained(sft["path"], dtype=dtype()).to(device())
    return PeftModel.from_pretrained(load_base(paths), sft["path"]).merge_and_unload()


def load_merged(paths: Paths, k: int, sft: PreTrainedModel | None = None) -> PreTrainedModel:
    """Round k's policy as plain weights: the SFT model with the DPO adapters of rounds 1..k merged in turn
    (k = 0: the SFT model). Round k+1 samples from it and trains its own adapter on top of it. `sft`: the SFT
    model already in memory, merged into (the caller passes a copy it may lose), not read again."""
    from peft import PeftModel

    model = load_sft(paths) if sft is None else sft
    for adapter in adapters(paths, k):
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def policies(paths: Paths, rounds: int) -> Iterator[tuple[str, PreTrainedModel]]:
    """Eval's models in turn, each in eval mode: ("base", ...), ("sft", ...), then each round's policy with its
    own adapter unmerged (disabled, it is the round before): ("dpo", ...), ("dpo_r2", ...) (rounds.model_key).
    Each weight file is read once: SFT is the base with its adapter merged in place (the caller is done with
    the base by then), round 1 goes on SFT, and round k+1 on round k with its adapter merged, so N rounds cost
    N merges, not N squared. The weights are the ones load_sft and load_merged build, by the same operations
    in the same order."""
    from peft import PeftModel

    base = load_base(paths)
    yield "base", base.eval()
    sft_info = model_folder(paths.sft_model)
    sft = load_sft(paths) if sft_info["kind"] == "full" else \
        PeftModel.from_pretrained(base, sft_info["path"]).merge_and_unload()
    del base
    yield "sft", sft.eval()
    # Round 1 on a copy of SFT when there are later rounds (the caller keeps SFT: their KL reference), else on
    # SFT itself: one model in memory at a time, as with a 7B on one GPU
    policy = copy.deepcopy(sft) if rounds > 1 else sft
    del sft
    for k in range(1, rounds + 1):
        model = PeftModel.from_pretrained(policy, adapters(paths, k)[-1])
        yield model_key(k), model.eval()
        if k < rounds:
            policy = model.merge_and_unload()
