"""What made an adapter, beside it: the model card's front matter and settings, the trainer settings file
without machine paths, the scheduler params reaching the trainer as today's hard-coded values did."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.models.card import dpo_card, sft_card, write_settings

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")


def front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_dpo_card_has_the_hub_front_matter_and_the_settings():
    params = PARAMS.model_copy(update={
        "model": PARAMS.model.model_copy(update={"base": "HuggingFaceTB/SmolLM2-135M-Instruct"}),
        "preferences": PARAMS.preferences.model_copy(update={"source": "hf:trl-lib/ultrafeedback_binarized"})})
    card = dpo_card(params, 90, 10, {"v_proj", "q_proj"}, seed=7)
    assert front(card) == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft",
                           "tags": ["dpo", "trl", "lora"], "datasets": ["trl-lib/ultrafeedback_binarized"]}
    cfg = params.train
    for row in (f"| beta | {cfg.beta:g} |", f"| loss | {cfg.loss_type} + sft",
                f"| learning rate | {cfg.learning_rate:g} |",
                f"| scheduler | {cfg.lr_scheduler}, warmup {cfg.warmup_ratio:.0%}", f"| epochs | {cfg.epochs:g} |",
                f"| batch / micro batch | {cfg.batch_size} / ", f"| LoRA r / alpha / dropout | {cfg.lora_r} / ",
                "| LoRA targets | q_proj, v_proj |", "| seed | 7 |"):
        assert row in card, row
    assert "Preference pairs: 100 (90 trained on, 10 held out" in card
    assert f"Task: `{params.task.name}`" in card and "training_args.json" in card


def test_a_builtin_base_and_generated_pairs_name_nothing_on_the_hub():
    meta = front(dpo_card(PARAMS, 9, 1, "all-linear", seed=42))
    assert "base_model" not in meta and "datasets" not in meta
    assert front(sft_card(PARAMS, 100, ["q_proj"]))["tags"] == ["sft", "trl", "lora"]


def test_the_trainer_settings_have_no_machine_path_and_todays_schedules(tmp_path):
    """The params' defaults give the scheduler and warmup the trainers had hard-coded (DPO: linear, 10% of
    the steps; SFT: cosine, 5%), and the settings file leaves the temporary output folder out."""
    from dpo_pipeline.models.dpo import dpo_config

    assert (PARAMS.train.lr_scheduler, PARAMS.train.warmup_ratio) == ("linear", 0.1)
    assert (PARAMS.sft.lr_scheduler, PARAMS.sft.warmup_ratio) == ("cosine", 0.05)
    args = dpo_config(str(tmp_path / "run"), 42, PARAMS.train, PARAMS.model.max_length)
    assert args.get_warmup_steps(100) == 10  # a float below 1 is a share of the steps
    write_settings(tmp_path, args, "training_args.json")
    text = (tmp_path / "training_args.json").read_text()
    settings = json.loads(text)
    assert str(tmp_path) not in text and "output_dir" not in settings
    assert settings["beta"] == PARAMS.train.beta and settings["lr_scheduler_type"] == "linear"
    assert settings["warmup_steps"] == 0.1
