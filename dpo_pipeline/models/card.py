"""What made an adapter, written beside it in the Hugging Face convention: a model card (README.md, with the
YAML front matter the hub reads) and the trainer's resolved settings as JSON, so an adapter pushed to a hub
stands on its own. Nothing machine- or time-specific goes in: identical params give identical files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpo_pipeline.config import Lora, Params

# TrainingArguments keys that name a place on this machine (the stage trains in a temporary folder).
MACHINE_KEYS = ("output_dir", "logging_dir")
TAGS = {"dpo": ["dpo", "trl", "lora"], "sft": ["sft", "trl", "lora"]}


def write_settings(folder: str | Path, args, name: str) -> None:
    """`args.to_dict()` (TRL's DPOConfig/SFTConfig, tokens already redacted by transformers), machine paths
    left out, keys sorted."""
    settings = {k: v for k, v in args.to_dict().items() if k not in MACHINE_KEYS}
    (Path(folder) / name).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def hub_id(name: str | None) -> str | None:
    """`name` if it reads as a hub id (owner/name), else None: a builtin or a local folder names nothing the
    hub can link to."""
    if not name or name.startswith(("builtin:", ".", "/", "~")) or name.count("/") != 1:
        return None
    return None if Path(name).expanduser().exists() else name


def front_matter(params: Params, kind: str) -> str:
    source = params.preferences.source  # hf:<dataset id>: a hub dataset the card can link to
    meta = {"base_model": hub_id(params.model.base), "library_name": "peft", "tags": TAGS[kind],
            "datasets": [source.removeprefix("hf:")] if kind == "dpo" and source.startswith("hf:") else None}
    return "---\n" + yaml.safe_dump({k: v for k, v in meta.items() if v}, sort_keys=False) + "---\n"


def lora_rows(cfg: Lora, targets) -> list[tuple[str, str]]:
    """The settings both trainings share, as table rows."""
    warmup = f", warmup {cfg.warmup_ratio:.0%} of the steps (rounded up)" if cfg.warmup_ratio else ", no warmup"
    micro = "-" if cfg.micro_batch_size is None else cfg.micro_batch_size
    return [("learning rate", f"{cfg.learning_rate:g}"), ("scheduler", cfg.lr_scheduler + warmup),
            ("epochs", f"{cfg.epochs:g}"), ("batch / micro batch", f"{cfg.batch_size} / {micro}"),
            ("LoRA r / alpha / dropout", f"{cfg.lora_r} / {cfg.lora_alpha:g} / {cfg.lora_dropout:g}"),
            ("LoRA targets", ", ".join(sorted(targets)) if not isinstance(targets, str) else targets),
            ("activation checkpointing", "on" if cfg.activation_checkpointing else "off")]


def table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| Setting | Value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def model_line(params: Params) -> list[str]:
    model = params.model
    revision = f" (revision {model.revision})" if model.revision else ""
    quantized = f"; trained on its {model.quantization} 4-bit quantization (QLoRA)" if model.quantization else ""
    return [f"- Base model: `{model.base}`{revision}{quantized}"]


def dpo_card(params: Params, pairs_train: int, pairs_eval: int, targets, seed: int, round_num: int = 1) -> str:
    """The DPO adapter's card: what it sits on, the data, the DPO settings. The 3-way eval comes after
    training; the report stage writes the card with it (`paths.reports`/model_card.md)."""
    cfg = params.train
    sft = (f"`{params.model.sft}` (given as model.sft)" if params.model.sft else
           f"the LoRA adapter the pipeline's sft stage trained on the task's SFT pairs (`{params.paths.sft_model}`)")
    on = ("the SFT model" if round_num == 1 else
          f"the policy of DPO round {round_num - 1} (rounds 1..{round_num - 1} merged)")
    source = ("sampled from the SFT model and judged in pairs (judge: see metrics/judge.json and the report)"
              if params.preferences.generated else f"`{params.preferences.source}`")
    loss = cfg.loss_type + (f" + sft (RPO, weight {cfg.sft_weight:g})" if cfg.sft_weight else "")
    rows = [("beta", f"{cfg.beta:g}"), ("loss", loss)]
    if cfg.label_smoothing:
        rows.append(("label smoothing", f"{cfg.label_smoothing:g}"))
    rows += [*lora_rows(cfg, targets), ("max length", f"{params.model.max_length} tokens"),
             ("reference", "precomputed before training" if cfg.precompute_ref_log_probs else "the adapter disabled"),
             ("seed", str(seed))]
    return "\n".join([
        front_matter(params, "dpo"),
        f"# DPO LoRA adapter: {params.task.name}" + (f", round {round_num}" if round_num > 1 else ""), "",
        f"A LoRA adapter trained with TRL's DPOTrainer on top of {on}, merged into the base weights; the "
        "reference policy is that same model (the adapter disabled). Made by dpo-pipeline's train stage.", "",
        "## Models", "", *model_line(params), f"- SFT model: {sft}",
        "- This adapter: load the base, merge the SFT model" + (" and the earlier rounds" if round_num > 1 else "")
        + ", then apply this adapter with PEFT.", "",
        "## Data", "", f"- Task: `{params.task.name}`",
        f"- Preference pairs: {pairs_train + pairs_eval} ({pairs_train} trained on, {pairs_eval} held out for the "
        f"validation reward gap), {source}", "",
        "## DPO settings", "", *table(rows), "",
        "Every resolved trainer setting (TRL's `DPOConfig`): `training_args.json`.", ""])


def sft_card(params: Params, examples: int, targets) -> str:
    cfg = params.sft
    rows = [*lora_rows(cfg, targets), ("max length", f"{params.model.max_length} tokens"),
            ("seed", str(params.seed))]
    return "\n".join([
        front_matter(params, "sft"), f"# SFT LoRA adapter: {params.task.name}", "",
        "A LoRA adapter trained with TRL's SFTTrainer on the task's prompt/response pairs (loss on the response "
        "tokens only). Made by dpo-pipeline's sft stage; its DPO adapter is trained on top of it.", "",
        "## Models", "", *model_line(params), "",
        "## Data", "", f"- Task: `{params.task.name}`", f"- SFT examples: {examples}", "",
        "## SFT settings", "", *table(rows), "",
        "Every resolved trainer setting (TRL's `SFTConfig`): `sft_args.json`.", ""])
