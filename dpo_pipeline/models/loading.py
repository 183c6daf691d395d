"""Loading base, SFT and each round's SFT+DPO policy, and the tokenizer they share.

Every stage after `prepare` loads models only through AutoModelForCausalLM / AutoTokenizer (+ PEFT): from
the folder `prepare` wrote (the builtin model), or from where the manifest says a hub or local model is
(models/manifest.py).
"""

from __future__ import annotations

import copy
import tempfile
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
    sft = model_folder(paths.sft_model) if Path(paths.sft_model).exists() else None
    has_own = sft is not None and sft.kind == "full" and (Path(sft.path) / "tokenizer_config.json").exists()
    return tokenizer_from(sft.path if has_own else model_folder(paths.base_model).path)


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

    return AutoConfig.from_pretrained(model_folder(paths.base_model).path)


def load_base(paths: Paths, quantization: str | None = None, on: str | None = None) -> PreTrainedModel:
    """The base model on `on` (None: this process's device); `quantization` nf4: in 4-bit, to train on."""
    folder = model_folder(paths.base_model).path
    if quantization:
        return load_4bit(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype()).to(on or device())


def load_sft(paths: Paths, on: str | None = None) -> PreTrainedModel:
    """The SFT model, which is also DPO's reference policy: base + SFT adapter merged, or a full model."""
    from peft import PeftModel

    sft = model_folder(paths.sft_model)
    if sft.kind == "full":
        return AutoModelForCausalLM.from_pretrained(sft.path, dtype=dtype()).to(on or device())
    return PeftModel.from_pretrained(load_base(paths, on=on), sft.path).merge_and_unload()


def load_merged(paths: Paths, k: int, sft: PreTrainedModel | None = None, on: str | None = None) -> PreTrainedModel:
    """Round k's policy as plain weights: the SFT model with the DPO adapters of rounds 1..k merged in turn
    (k = 0: the SFT model). Round k+1 samples from it and trains its own adapter on top of it. `sft`: the SFT
    model already in memory, merged into (the caller passes a copy it may lose), not read again."""
    model = load_sft(paths, on=on) if sft is None else sft
    return _round(paths, model, k).merge_and_unload() if k else model


def load_round(paths: Paths, k: int) -> PreTrainedModel:
    """Round k's policy (k >= 1) with its own adapter unmerged on round k-1's merged policy: disabled, the
    adapter leaves the round before. The weights eval measures KL with and generates from (round_policies)."""
    return _round(paths, load_sft(paths), k)


def _round(paths: Paths, sft: PreTrainedModel, k: int) -> PreTrainedModel:
    """Round k's policy (k >= 1), its own adapter unmerged, built on `sft`: the last of _rounds."""
    for policy in _rounds(paths, sft, k):
        pass
    return policy


def _rounds(paths: Paths, sft: PreTrainedModel, last: int) -> Iterator[PreTrainedModel]:
    """Rounds 1..`last` in turn, each with its own DPO adapter unmerged on the round before merged, built on
    `sft` (the SFT model, which it becomes part of): merging round k's adapter into the model it is on gives
    the model round k+1's goes on, so N rounds cost N merges, not N squared. The one place a round's policy is
    made: load_merged, load_round and round_policies all take theirs from here."""
    from peft import PeftModel

    model = sft
    for k, adapter in enumerate(adapters(paths, last), 1):
        policy = PeftModel.from_pretrained(model, adapter)
        yield policy
        if k < last:
            model = policy.merge_and_unload()


def nf4_config():
    """QLoRA's 4-bit NormalFloat with double quantization, computing in the device's dtype (bf16 on a GPU,
    float32 on a CPU, as every other weight here)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype())


def load_4bit(folder: str | Path) -> PreTrainedModel:
    """A model folder with its linear layers in 4-bit NF4 (bitsandbytes' Linear4bit; the embeddings and LM
    head stay as they are), frozen and ready for a LoRA: PEFT's prepare_model_for_kbit_training upcasts the
    weights left in 16 bits to float32, as QLoRA trains. Its checkpointing is left off here: the trainers'
    own `activation_checkpointing` setting turns it on (non-reentrant) for 4-bit and full precision alike,
    where PEFT would turn it on always, through transformers' deprecated gradient_checkpointing_enable."""
    from bitsandbytes.nn import Linear4bit
    from peft import prepare_model_for_kbit_training

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype(), quantization_config=nf4_config(),
                                                 device_map={"": device()})
    # bitsandbytes 0.50.2, on a CPU with AVX512-BF16: the first pass of a layer in eval mode without grad (TRL's
    # reference and validation passes, the KL monitor) repacks its weight, for good, for an inference kernel
    # that has no backward; every later training pass goes through it, the gradient no longer flows down
    # through the 4-bit weights and the lower layers' LoRA weights get wrong ones (torch warns "an autograd
    # kernel was not registered"), silently. So the layers keep the kernel that has a backward;
    # tests/test_memory_settings.py checks the mend, and that bitsandbytes still needs it.
    for layer in model.modules():
        if isinstance(layer, Linear4bit):
            layer.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def linear_4bit(model) -> int:
    """How many of the model's linear layers hold 4-bit weights (bitsandbytes' Linear4bit, under LoRA too)."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return 0
    from bitsandbytes.nn import Linear4bit

    return sum(isinstance(m, Linear4bit) for m in model.modules())


def load_merged_4bit(paths: Paths, k: int) -> PreTrainedModel:
    """Round k's policy (k = 0: the SFT model) in 4-bit, to train a LoRA on. A 4-bit layer cannot take an
    adapter merged into it without being quantized again, so the policy is merged in full precision on the
    CPU (no GPU memory: only the 4-bit model goes there), saved to a temporary folder and loaded from it in
    4-bit. A full SFT model with nothing to merge loads from its own folder."""
    sft = model_folder(paths.sft_model)
    if sft.kind == "full" and not adapters(paths, k):
        return load_4bit(sft.path)
    with tempfile.TemporaryDirectory() as tmp:
        merged = load_merged(paths, k, on="cpu")
        name = merged.name_or_path
        merged.save_pretrained(tmp)
        del merged  # freed before the 4-bit model loads
        model = load_4bit(tmp)
    # Where it came from, not the temporary folder: the adapter trained on it records this name
    # (adapter_config.json), which must be the same every run
    model.name_or_path = model.config.name_or_path = name
    return model


def round_policies(paths: Paths, rounds: int, sft: PreTrainedModel) -> Iterator[tuple[str, PreTrainedModel]]:
    """Each round's policy in turn, in eval mode, with its own adapter unmerged (disabled, it is the round
    before): ("dpo", ...), ("dpo_r2", ...) (rounds.model_key), built on `sft` (the SFT model in memory) as
    load_round builds each, one on the other (N rounds, N merges)."""
    # Round 1 on a copy of SFT when there are later rounds (the caller keeps SFT: their KL reference), else on
    # SFT itself: one model in memory at a time, as with a 7B on one GPU
    policies = _rounds(paths, copy.deepcopy(sft) if rounds > 1 else sft, rounds)
    del sft
    for k, model in enumerate(policies, 1):
        yield model_key(k), model.eval()
