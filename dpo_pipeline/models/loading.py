"""Loading base, SFT and each round's SFT+DPO policy, and the tokenizer they share.

Every stage after `prepare` loads models only through AutoModelForCausalLM / AutoTokenizer (+ PEFT): from
the folder `prepare` wrote (the builtin model), or from where the manifest says a hub or local model is
(models/manifest.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dpo_pipeline.config import Paths
from dpo_pipeline.models.device import device, dtype
from dpo_pipeline.models.manifest import model_folder
from dpo_pipeline.rounds import adapters, model_key

# Used when a tokenizer has none (e.g. GPT-2): the builtin template's layout, ending each turn with the
# tokenizer's own end-of-sequence token so generation stops where a turn ends.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


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
