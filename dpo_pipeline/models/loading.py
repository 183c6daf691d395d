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


def load_base(paths: Paths, quantization: str | None = None, on: str | None = None) -> PreTrainedModel:
    """The base model on `on` (None: this process's device); `quantization` nf4: in 4-bit, to train on."""
    folder = model_folder(paths.base_model)["path"]
    if quantization:
        return load_4bit(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype()).to(on or device())


def load_sft(paths: Paths, on: str | None = None) -> PreTrainedModel:
    """The SFT model, which is also DPO's reference policy: base + SFT adapter merged, or a full model."""
    from peft import PeftModel

    sft = model_folder(paths.sft_model)
    if sft["kind"] == "full":
        return AutoModelForCausalLM.from_pretrained(sft["path"], dtype=dtype()).to(on or device())
    return PeftModel.from_pretrained(load_base(paths, on=on), sft["path"]).merge_and_unload()


def load_merged(paths: Paths, k: int, sft: PreTrainedModel | None = None, on: str | None = None) -> PreTrainedModel:
    """Round k's policy as plain weights: the SFT model with the DPO adapters of rounds 1..k merged in turn
    (k = 0: the SFT model). Round k+1 samples from it and trains its own adapter on top of it. `sft`: the SFT
    model already in memory, merged into (the caller passes a copy it may lose), not read again."""
    from peft import PeftModel

    model = load_sft(paths, on=on) if sft is None else sft
    for adapter in adapters(paths, k):
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def load_round(paths: Paths, k: int) -> PreTrainedModel:
    """Round k's policy (k >= 1) with its own adapter unmerged on round k-1's merged policy: disabled, the
    adapter leaves the round before. The weights eval measures KL with and generates from (round_policies)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_merged(paths, k - 1), adapters(paths, k)[-1])


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
    if sft["kind"] == "full" and not adapters(paths, k):
        return load_4bit(sft["path"])
    with tempfile.TemporaryDirectory() as tmp:
        load_merged(paths, k, on="cpu").save_pretrained(tmp)  # the full-precision model is freed here
        return load_4bit(tmp)


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
    yield from round_policies(paths, rounds, sft)


def round_policies(paths: Paths, rounds: int, sft: PreTrainedModel) -> Iterator[tuple[str, PreTrainedModel]]:
    """Each round's policy in turn, in eval mode, with its own adapter unmerged (disabled, it is the round
    before): ("dpo", ...), ("dpo_r2", ...) (rounds.model_key), built on `sft` (the SFT model in memory). Round
    k+1 goes on round k with its adapter merged, so N rounds cost N merges, not N squared; round k's weights
    are load_round's."""
    from peft import PeftModel

    # Round 1 on a copy of SFT when there are later rounds (the caller keeps SFT: their KL reference), else on
    # SFT itself: one model in memory at a time, as with a 7B on one GPU
    policy = copy.deepcopy(sft) if rounds > 1 else sft
    del sft
    for k in range(1, rounds + 1):
        model = PeftModel.from_pretrained(policy, adapters(paths, k)[-1])
        yield model_key(k), model.eval()
        if k < rounds:
            policy = model.merge_and_unload()
