"""Each model stage's peak memory, estimated before anything is loaded or spent, from the model's config.json
alone (no weights): the plan `python -m tools.estimate` prints, and the check the sft and train stages make
before loading weights (`check_fits`), which stops with one line naming the setting to change.

    python -m tools.estimate --gpu-gib 24

On a CPU the estimate is the process's peak resident memory (float32 weights, plus the measured imports of
torch, transformers, TRL and PEFT); on a GPU, the peak of what torch allocates (bf16 weights, or 4-bit NF4
linear layers with `model.quantization: nf4`). What is counted, in bytes:

- weights: parameters x 4 (CPU) or 2 (GPU); nf4: the linear layers at ~0.52 bytes a parameter (4 bits and
  the double-quantized absmax of each block of 64), embeddings and norms in float32 (PEFT's
  prepare_model_for_kbit_training upcasts them); on a CPU the float32 file it was quantized from besides,
  which stays mapped and read (`weight_bytes`);
- the LoRA adapter: float32 parameters, gradients and AdamW's two moments (16 bytes a parameter);
- activations kept for the backward pass, per token and layer, as the saved tensors were counted on this
  model family (bench/memory.py): both norms' inputs in float32, their outputs, the query, key and value (a
  padded batch repeats grouped KV heads), the attention output, and 4 x intermediate for a gated MLP (gate,
  its activation, up, their product); SDPA's float mask adds the padded length. That is Korthikanti et al.
  2022's ~34·s·b·h bytes a layer for 16-bit with fused attention, counted for LoRA (no weight gradients) on a
  GQA, SwiGLU architecture. With activation checkpointing: each layer's input, plus one layer recomputed;
- DPO's batch: chosen and rejected, 2 sequences a pair, padded to the longest (at most model.max_length);
- TRL's fused LM head (trl/kernels/chunked_logprob.py): no batch x length x vocabulary logits, but tiles of
  at most 4,096 tokens x 32,768 vocabulary entries; on a CPU (no Triton) about 8.5 of them are alive in its
  backward pass (its torch fallback's temporaries), on a GPU one;
- generation: the KV cache of batch x (prompt + new tokens), the prompt's pass, and the batch x vocabulary
  scores the samplers copy a few times each step;
- the KL pass (models/kl.py: the train stage's monitor and eval's KL): logits of the rows that fit in its
  chunk of floats and their log-softmaxes in float32;
- the reference's log-probs before training and the validation pass: a forward pass without gradients; on a
  CPU, TRL's hash of the reference's weights before it (the embedding copied to bytes).

A stage's peak is its largest phase (loading, a training step, a pass without gradients, generation, KL).
The constants below were calibrated on a CPU against bench/memory.py (docs/benchmarks.md: every case within
0.8-1.25 of measured). They assume freed memory goes back to the system at once (`return_freed_memory`,
which `check_fits` sets for sft and train where memory is tight or checkpointing is on); glibc's default is
faster and keeps more: 1.3-1.5x on a DPO step, up to ~1.3x generating. The GPU figures follow from the
same counts and have not been measured yet (bash bench/gpu_memory.sh). `DPO_PIPELINE_MEMORY_GIB` sets the
memory the check assumes the device has, instead of what it finds.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError

GIB = 2 ** 30
MEMORY_ENV = "DPO_PIPELINE_MEMORY_GIB"
STAGES = ("sft", "sample", "train", "eval_baselines", "eval")

# --- calibrated on a CPU (bench/memory.py; AMD EPYC, torch 2.13, transformers 5.24, TRL 1.16)
# Resident memory of a stage's process once its imports are in: torch, transformers, PEFT (the generating
# stages), and TRL, datasets and dvclive besides (sft, train)
CPU_BASELINE = {"training": 0.50 * GIB, "generating": 0.40 * GIB}
TRAINER_OVERHEAD = 0.05 * GIB  # a trainer's own state (accelerate, the tokenized pairs, the optimizer's bookkeeping)
LM_TILES = {"cpu": (4.5, 8.5), "cuda": (1.0, 1.0)}  # LM-head tiles alive in its forward, backward pass
LOGIT_COPIES = {"cpu": 8.0, "cuda": 10.0}  # batch x vocabulary float32 buffers a sampling step keeps
KL_COPIES = 5.0              # rows x new tokens x vocabulary float32 tensors the KL pass keeps at once
GPU_RESERVE = 0.6 * GIB      # CUDA context and kernels, not counted by torch's allocator
GPU_SLACK = 1.10             # torch's caching allocator: reserved over allocated
# TRL's fused LM head (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE) and
# the KL pass (models/kl.py CHUNK_FLOATS, BATCH_SIZE); tests/test_memory_plan.py checks they still agree
LM_TOKEN_CHUNK, LM_VOCAB_CHUNK = 4096, 32768
KL_CHUNK_FLOATS, KL_BATCH = 2 ** 27, 64
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit absmax a block of 64, a float32 one per 256 blocks
CHARS_PER_TOKEN, TEMPLATE_TOKENS = 3.0, 16  # without a tokenizer: a prompt's tokens from its characters
NOT_GATED = {"gpt2", "gpt_neox", "gptj", "phi", "opt", "bloom", "falcon"}  # MLPs of two matrices, not three


# ---------------------------------------------------------------------------------------------------------
# The model's shape, from its config


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True
    gated: bool = True
    model_type: str = "llama"

    @property
    def layer_linear(self) -> int:
        """Parameters of one layer's linear projections (attention and MLP)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (2 * q + 2 * kv) + (3 if self.gated else 2) * self.hidden * self.intermediate

    @property
    def linear_params(self) -> int:
        return self.layers * self.layer_linear

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.linear_params + embeddings + (2 * self.layers + 1) * self.hidden

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection a LoRA may target, by its name in Llama-family models."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}


# SmolLM2-135M-Instruct's published config.json (builtin:smollm2-135m, converted by `prepare`)
SMOLLM2_135M = Shape(layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536, vocab=49152)


def shape_from_config(config) -> Shape:
    """A transformers config (or its text config) as a Shape; GPT-2-style names through its attribute map."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, heads = c.hidden_size, c.num_attention_heads
    return Shape(layers=c.num_hidden_layers, hidden=hidden, heads=heads,
                 kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                 head_dim=getattr(c, "head_dim", None) or hidden // heads,
                 intermediate=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden,
                 vocab=c.vocab_size, tied=bool(getattr(c, "tie_word_embeddings", True)),
                 gated=c.model_type not in NOT_GATED, model_type=c.model_type)


def model_shape(params: Params) -> Shape:
    """model.base's shape: builtin:tiny from params, SmolLM2's published one, else its config.json (the folder
    `prepare` resolved, a local folder, or the hub's config file alone: no weights)."""
    base = params.model.base
    if base == "builtin:tiny":
        t = params.model.tiny
        return Shape(layers=t.num_layers, hidden=t.hidden_size, heads=t.num_heads, kv_heads=t.num_heads,
                     head_dim=t.hidden_size // t.num_heads, intermediate=t.intermediate_size, vocab=t.vocab_size)
    if base == "builtin:smollm2-135m":
        return SMOLLM2_135M
    from transformers import AutoConfig

    try:
        return shape_from_config(AutoConfig.from_pretrained(config_source(params), revision=params.model.revision))
    except OSError as e:
        raise UserError(f"model.base: cannot read {base!r}'s config.json ({str(e).splitlines()[0][:160]}); "
                        "without network use a local folder") from None


def config_source(params: Params) -> str:
    """Where model.base's config.json is: the folder `prepare` resolved it to, else model.base itself."""
    from dpo_pipeline.models.manifest import MANIFEST, model_folder

    if (Path(params.paths.base_model) / MANIFEST).exists():
        return model_folder(params.paths.base_model).path
    if (Path(params.paths.base_model) / "config.json").exists():
        return params.paths.base_model
    return str(Path(params.model.base).expanduser()) if Path(params.model.base).expanduser().is_dir() \
        else params.model.base


# ---------------------------------------------------------------------------------------------------------
# What the formula counts, in bytes


def weight_bytes(shape: Shape, device: str, nf4: bool = False) -> float:
    """The weights as loaded. nf4: the linear layers in 4 bits; embeddings, norms (and an untied LM head)
    upcast to float32. On a CPU the full-precision file the 4-bit model was made from stays mapped (its
    float32 embeddings are views into it) and every page was read while quantizing: resident memory counts
    it whole, so a 4-bit base saves no resident memory on a CPU (the kernel may drop those clean pages under
    pressure, but they count until it does)."""
    if nf4:
        quantized = shape.linear_params * NF4_BYTES + (shape.params - shape.linear_params) * 4
        return quantized + (shape.linear_params * 4 if device == "cpu" else 0)
    return shape.params * (4 if device == "cpu" else 2)


def lora_params(shape: Shape, targets, r: int) -> int:
    """An adapter's parameters: r x (in + out) for each targeted projection of each layer ("auto": all)."""
    proj = shape.projections()
    names = list(proj) if targets == "auto" or not shape.gated else [t for t in targets if t in proj]
    return shape.layers * sum(r * sum(proj[n]) for n in names) if names else shape.layers * r * 4 * shape.hidden


def layer_bytes(shape: Shape, device: str, seq: int, nf4: bool = False) -> float:
    """Bytes a training forward pass keeps for the backward pass, per token and layer (LoRA: no weight
    gradients, so a frozen projection keeps only what its adapter needs: its input)."""
    e = 4 if device == "cpu" else 2
    normed = 4 if nf4 or device == "cpu" else e  # prepare_model_for_kbit_training's float32 norms
    h, i = shape.hidden, shape.intermediate
    attention = 4 * h + (h if device != "cpu" else 0)  # q, k and v repeated to every head, output (+ its copy)
    mlp = (4 if shape.gated else 2) * i
    return 2 * h * 4 + 2 * h * normed + (attention + mlp + seq) * e


def lm_head_bytes(shape: Shape, device: str, tokens: int, backward: bool) -> float:
    """TRL's fused, chunked LM head: the tiles of logits alive at once (CPU: the torch fallback's
    temporaries; GPU: Triton's one buffer), and the final hidden states it keeps and their float32 gradient."""
    tile = min(tokens, LM_TOKEN_CHUNK) * min(shape.vocab, LM_VOCAB_CHUNK) * (4 if device == "cpu" else 2)
    copies = LM_TILES["cpu" if device == "cpu" else "cuda"][1 if backward else 0]
    return copies * tile + tokens * shape.hidden * (4 if backward else 0)


def inference_bytes(shape: Shape, device: str, tokens: int, seq: int) -> float:
    """One layer's temporaries in a pass without gradients (the largest layer's, alive at once)."""
    e = 4 if device == "cpu" else 2
    return tokens * (6 * shape.hidden + 3 * shape.intermediate + 2 * seq) * e


@dataclass(frozen=True)
class Phase:
    name: str
    bytes: float
    parts: dict = field(default_factory=dict)


def training_step(shape: Shape, device: str, *, rows: int, seq: int, checkpointing: bool, nf4: bool,
                  name: str = "training step") -> Phase:
    """One forward and backward pass of `rows` sequences of `seq` tokens (DPO: 2 a pair)."""
    e_stream = 4 if device == "cpu" or nf4 else 2
    tokens = rows * seq
    per_layer = tokens * layer_bytes(shape, device, seq, nf4)
    kept = tokens * shape.layers * shape.hidden * e_stream + per_layer if checkpointing \
        else per_layer * shape.layers
    kept += tokens * shape.hidden * e_stream  # the final hidden states the LM head keeps
    forward = lm_head_bytes(shape, device, tokens, backward=False)
    backward = max(lm_head_bytes(shape, device, tokens, backward=True), per_layer)
    transient = max(forward, backward)
    return Phase(name, kept + transient, {"activations": kept, "lm head / backward": transient})


def reference_hash(shape: Shape, device: str) -> Phase:
    """TRL hashes the reference's weights before precomputing its log-probs (dpo_trainer `hash_module`):
    each tensor copied to bytes in the host's memory, one at a time; the largest is the embedding."""
    largest = shape.vocab * shape.hidden * 4 if device == "cpu" else 0.0
    return Phase("reference hash", largest, {"largest weight, copied": largest})


def no_grad_pass(shape: Shape, device: str, *, rows: int, seq: int, name: str) -> Phase:
    tokens = rows * seq
    transient = inference_bytes(shape, device, tokens, seq) + lm_head_bytes(shape, device, tokens, backward=False)
    return Phase(name, transient, {"pass": transient})


def generation(shape: Shape, device: str, *, rows: int, prompt: int, new: int, name: str = "generation") -> Phase:
    """A batch of `rows` prompts padded to `prompt` tokens generating `new` tokens: the KV cache at its
    longest, beside the larger of the prompt's pass and a decode step's scores."""
    e = 4 if device == "cpu" else 2
    cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * rows * (prompt + new) * e
    scores = LOGIT_COPIES["cpu" if device == "cpu" else "cuda"] * rows * shape.vocab * 4
    prefill = inference_bytes(shape, device, rows * prompt, prompt)
    return Phase(name, cache + max(scores, prefill), {"kv cache": cache, "scores / prompt pass": max(scores, prefill)})


def kl_pass(shape: Shape, device: str, *, rows: int, prompt: int, new: int) -> Phase:
    """models/kl.py: generate `rows` responses, then score them a chunk of rows at a time: the chunk's logits
    in the model's dtype and the policy's and reference's log-softmaxes over the new tokens in float32."""
    e = 4 if device == "cpu" else 2
    total = prompt + new
    chunk = min(rows, max(1, KL_CHUNK_FLOATS // (total * shape.vocab)))
    scoring = chunk * total * shape.vocab * e + KL_COPIES * chunk * new * shape.vocab * 4 \
        + inference_bytes(shape, device, chunk * total, total)
    sampling = generation(shape, device, rows=rows, prompt=prompt, new=new)
    if scoring > sampling.bytes:
        return Phase("KL pass", scoring, {"KL scoring": scoring})
    return Phase("KL pass", sampling.bytes, sampling.parts)


# ---------------------------------------------------------------------------------------------------------
# Token counts: the data's, counted with the tokenizer when it is at hand, else from characters


@dataclass(frozen=True)
class Lengths:
    """The longest chat-templated prompt each generating stage sees (sample, eval, train's KL monitor), the
    longest preference pair and SFT row (None: not known yet), and how many are longer than model.max_length
    (None: no tokenizer to count with)."""

    prompts: dict
    pair: int | None = None
    sft: int | None = None
    too_long: dict | None = None
    note: str = ""


def _messages(x, role: str) -> list[dict]:
    return x if isinstance(x, list) else [{"role": role, "content": x}]


def _rows(path: str, required: tuple[str, ...], limit: int | None = None) -> list[dict]:
    from dpo_pipeline.files import read_jsonl

    if not Path(path).exists() or not Path(path).stat().st_size:
        return []
    return read_jsonl(path, required=required, strings=(), empty=True)[:limit]


def token_counter(tokenizer):
    """Token counts of conversations (each a message list), as TRL and generation render them; from characters
    without a tokenizer, or where its chat template refuses a conversation."""
    def by_characters(conversations: list[list[dict]]) -> list[int]:
        return [int(sum(len(str(m["content"])) for m in c) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS for c in conversations]

    def count(conversations: list[list[dict]], prompt: bool) -> list[int]:
        if tokenizer is None or not conversations:
            return by_characters(conversations)
        try:
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=prompt)
                     for c in conversations]
        except Exception:  # noqa: BLE001 - a template's own error (jinja's, a role it refuses): an estimate still
            return by_characters(conversations)
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    return count


def lengths(params: Params, tokenizer=None) -> Lengths:
    """Prompt, pair and SFT-row lengths from the task's files and the stages' outputs that exist."""
    count, files, limit = token_counter(tokenizer), params.task_files, params.model.max_length
    prompts = {}
    for key, path, n in (("sample", files.prompts, params.sample.max_prompts),
                         ("eval", files.eval_prompts, params.eval.max_prompts)):
        rows = [_messages(r["prompt"], "user") for r in _rows(path, ("prompt",), n)]
        prompts[key] = max(count(rows, prompt=True), default=TEMPLATE_TOKENS)
    pairs = _rows(params.paths.preferences, ("prompt", "chosen", "rejected"))
    prompts["train"] = max(count([_messages(r["prompt"], "user") for r in pairs], prompt=True),
                           default=prompts["sample"])
    pair_lengths = [max(a, b) for a, b in zip(
        count([_messages(r["prompt"], "user") + _messages(r["chosen"], "assistant") for r in pairs], prompt=False),
        count([_messages(r["prompt"], "user") + _messages(r["rejected"], "assistant") for r in pairs], prompt=False))]
    sft_path = params.paths.sft_data if Path(params.paths.sft_data).exists() else files.sft_data
    sft_rows = _rows(sft_path, ("prompt", "response"), params.sft.max_rows)
    sft_lengths = count([_messages(r["prompt"], "user") + _messages(r["response"], "assistant") for r in sft_rows],
                        prompt=False)
    pair = max(pair_lengths, default=None)
    if pair is None and params.preferences.generated:  # not sampled yet: a prompt and at most max_new_tokens
        pair = prompts["sample"] + params.sample.max_new_tokens + TEMPLATE_TOKENS
    too_long = None if tokenizer is None else {
        "pairs": [sum(n > limit for n in pair_lengths), len(pair_lengths)],
        "sft_rows": [sum(n > limit for n in sft_lengths), len(sft_lengths)]}
    note = "" if tokenizer is not None else \
        f"lengths estimated from characters (~{CHARS_PER_TOKEN:g} a token): no tokenizer at hand"
    return Lengths(prompts=prompts, pair=pair, sft=max(sft_lengths, default=None), too_long=too_long, note=note)


def local_tokenizer(params: Params):
    """(the base model's tokenizer, None) when it can be had without weights: a builtin's once `prepare` built
    it, a local folder's, a hub id's tokenizer files; else (None, why not)."""
    from dpo_pipeline.models.loading import tokenizer_from
    from dpo_pipeline.models.manifest import model_folder

    base = Path(params.paths.base_model)
    try:
        if base.is_dir():
            return tokenizer_from(model_folder(base).path), None
        if params.model.base.startswith("builtin:"):
            return None, f"{params.model.base}'s tokenizer is built by `prepare` (not run yet)"
        return tokenizer_from(config_source(params)), None
    except (OSError, ValueError) as e:
        return None, f"no tokenizer for {params.model.base} ({str(e).splitlines()[0][:120]})"


# ---------------------------------------------------------------------------------------------------------
# A stage's estimate


@dataclass(frozen=True)
class Estimate:
    stage: str
    device: str           # "cpu" or "cuda"
    peak: float           # bytes, one process (CPU: resident memory; GPU: allocated by torch)
    processes: int = 1    # CPU: all of them share the machine's memory
    phase: Phase | None = None  # the largest phase
    note: str = ""

    @property
    def total(self) -> float:
        """What the device must hold: on a CPU every process's; on GPUs one process's (a GPU each)."""
        return self.peak * (self.processes if self.device == "cpu" else 1)


def estimate(params: Params, stage: str, device: str, shape: Shape, lens: Lengths, round_num: int = 1) -> Estimate:
    """`stage`'s peak memory on `device` ("cpu" or "cuda"): the largest of its phases, plus what the process
    holds throughout (CPU: the imports)."""
    phases, processes, note = _phases(params, stage, device, shape, lens, round_num)
    top = max(phases, key=lambda p: p.bytes, default=Phase("no model", 0.0))
    baseline = CPU_BASELINE["training" if stage in ("sft", "train") else "generating"] if device == "cpu" else 0.0
    return Estimate(stage, device, baseline + top.bytes, processes, top, note)


def _phases(params: Params, stage: str, device: str, shape: Shape, lens: Lengths, round_num: int):
    if stage in ("sft", "train"):
        return _training_phases(params, stage, device, shape, lens, round_num)
    if stage == "judge":  # a reward model is the only model a judge stage loads
        phases = reward_model_phases(params, device, lens, "sample")
        return phases, 1, "" if phases else "loads no model (judge.backend is not reward_model)"
    vllm = params.generation.engine == "vllm"
    if stage == "sample":
        if not params.preferences.generated or vllm:
            return [], 1, "loads no model here" + (" (vLLM serves it: generation.vllm_*)" if vllm else "")
        cfg, prompt = params.sample, lens.prompts["sample"]
        w = weight_bytes(shape, device)
        return [_with(generation(shape, device, rows=cfg.batch_size, prompt=prompt, new=cfg.max_new_tokens), w),
                loading(shape, device)], cfg.num_processes, ""
    cfg, prompt = params.eval, lens.prompts["eval"]
    # eval_baselines loads base, then SFT; a full SFT model loads while the base is still held
    sft_full = params.model.sft is not None and not _is_adapter(params)
    models = 2 if (stage == "eval_baselines" and sft_full) or (stage == "eval" and params.rounds > 1) else 1
    w = models * weight_bytes(shape, device)
    phases = [loading(shape, device, models)]
    if not vllm:
        phases.append(_with(generation(shape, device, rows=cfg.batch_size, prompt=prompt, new=cfg.max_new_tokens), w))
    if stage == "eval":
        phases.append(_with(kl_pass(shape, device, rows=cfg.batch_size, prompt=prompt, new=cfg.max_new_tokens), w))
        phases += reward_model_phases(params, device, lens, "eval")  # loaded once the policies are freed
    return phases, 1 if vllm and stage == "eval_baselines" else cfg.num_processes, ""


def reward_model_phases(params: Params, device: str, lens: Lengths, section: str) -> list[Phase]:
    """judge.backend reward_model (judging/reward_model.py), in the judge stage (`section` sample) and eval's
    judging (eval): loading its weights, and a pass without gradients over judge.reward_batch_size conversations
    of the longest prompt and `section`.max_new_tokens, counted with the policy's tokenizer (the reward model's
    own may differ). Its head has one output: no vocabulary-wide logits. [] for any other judge."""
    if params.judge.backend != "reward_model":
        return []
    from transformers import AutoConfig

    try:
        rm = shape_from_config(AutoConfig.from_pretrained(str(Path(params.judge.reward_model).expanduser())
                                                          if Path(params.judge.reward_model).expanduser().is_dir()
                                                          else params.judge.reward_model))
    except OSError as e:
        raise UserError(f"judge.reward_model: cannot read {params.judge.reward_model!r}'s config.json "
                        f"({str(e).splitlines()[0][:160]}); without network use a local folder") from None
    rm = replace(rm, tied=True)  # a one-output score head instead of an LM head: the embeddings count once
    seq = lens.prompts[section] + getattr(params, section).max_new_tokens + TEMPLATE_TOKENS
    rows = params.judge.reward_batch_size
    transient = inference_bytes(rm, device, rows * seq, seq)
    scoring = Phase("reward model scoring", transient, {"pass": transient})
    return [_with(scoring, weight_bytes(rm, device)), loading(rm, device)]


def _is_adapter(params: Params) -> bool:
    folder = Path(params.model.sft or "")
    return (folder / "adapter_config.json").exists() or (Path(params.paths.sft_model) / "adapter_config.json").exists()


def _with(phase: Phase, weights: float, extra: float = 0.0, extra_name: str = "adapter and optimizer") -> Phase:
    parts = {"weights": weights, **({extra_name: extra} if extra else {}), **phase.parts}
    return Phase(phase.name, weights + extra + phase.bytes, parts)


def loading(shape: Shape, device: str, models: int = 1, nf4: bool = False) -> Phase:
    """Loading: the weights, nothing more (safetensors are mapped, not copied, and become resident as they
    are read). nf4: the SFT model is merged in full precision in the host's memory, saved and loaded from
    there in 4 bits (models/loading.load_merged_4bit): on a GPU only the 4-bit weights come to it."""
    w = weight_bytes(shape, device, nf4) * models
    return Phase("loading", w, {"weights": w})


def _training_phases(params: Params, stage: str, device: str, shape: Shape, lens: Lengths, round_num: int):
    nf4 = params.model.quantization == "nf4"
    if stage == "sft":
        cfg = params.sft
        if params.model.sft is not None:  # nothing trained; an adapter is checked against the loaded base
            return ([loading(shape, device)] if _is_adapter(params) else []), 1, "trains nothing (model.sft is set)"
        rows, seq, world = cfg.micro_batch_size or cfg.batch_size, min(params.model.max_length, lens.sft or 10**9), 1
        validation, models = [], 1
    else:
        cfg, world = params.train, params.train.num_processes
        per_process = cfg.batch_size // world
        rows, seq = 2 * (cfg.micro_batch_size or per_process), min(params.model.max_length, lens.pair or 10**9)
        models = 2 if round_num > 1 and params.iterate.reference == "sft" else 1
        eval_rows = 2 * (cfg.micro_batch_size or cfg.batch_size)
        validation = [no_grad_pass(shape, device, rows=eval_rows, seq=seq, name="validation pass")]
        if cfg.precompute_ref_log_probs:
            validation += [no_grad_pass(shape, device, rows=rows, seq=seq, name="reference log-probs"),
                           reference_hash(shape, device)]
        kl_rows = min(cfg.kl_prompts, KL_BATCH) if world == 1 else -(-cfg.kl_prompts // world)
        validation.append(kl_pass(shape, device, rows=kl_rows, prompt=lens.prompts["train"],
                                  new=cfg.kl_max_new_tokens))
    w = models * weight_bytes(shape, device, nf4)
    adapter = 16 * lora_params(shape, params.model.lora_target_modules, cfg.lora_r) + TRAINER_OVERHEAD
    step = training_step(shape, device, rows=rows, seq=seq, checkpointing=cfg.activation_checkpointing, nf4=nf4)
    if stage == "train" and not cfg.precompute_ref_log_probs:  # the reference's pass while activations are kept
        ref = no_grad_pass(shape, device, rows=rows, seq=seq, name="reference")
        step = Phase(step.name, step.parts["activations"] + max(ref.bytes, step.parts["lm head / backward"]),
                     step.parts)
    phases = [_with(step, w, adapter)] + [_with(p, w, adapter) for p in validation]
    return phases + [loading(shape, device, models, nf4)], world, ""


# ---------------------------------------------------------------------------------------------------------
# The device, whether a stage fits, and the settings that make it fit


@dataclass(frozen=True)
class Device:
    kind: str                 # "cpu" or "cuda"
    name: str                 # "cpu", "cuda:0", or "a 24 GiB GPU" (--gpu-gib)
    capacity: float | None    # bytes the stage may use (None: unknown)
    context_counted: bool = False  # a GPU's free memory, measured after this process made its CUDA context


def memory_override() -> float | None:
    value = os.environ.get(MEMORY_ENV)
    if not value:
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise UserError(f"{MEMORY_ENV}: expected GiB > 0, got {value!r}")
    return gib * GIB


def meminfo(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().available)


def this_device(gpu_gib: float | None = None, free: bool = False) -> Device:
    """Where this process's stages run and what they may use: --gpu-gib's GPU, else a GPU torch finds (its
    free memory when `free`, else its total), else the CPU's available memory. DPO_PIPELINE_MEMORY_GIB
    replaces the amount."""
    override = memory_override()
    if gpu_gib is not None:
        return Device("cuda", f"a {gpu_gib:g} GiB GPU", override or gpu_gib * GIB)
    import torch

    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0))
        found = torch.cuda.mem_get_info(index)[0] if free else torch.cuda.get_device_properties(index).total_memory
        return Device("cuda", f"cuda:{index}", override or found, context_counted=free and override is None)
    available = meminfo("MemAvailable")
    if available is not None and free:  # this process's imports are in the estimate and already resident
        available += meminfo_self()
    return Device("cpu", "cpu", override or available)


def meminfo_self() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0.0


def needed(est: Estimate, device: Device) -> float:
    """What the device must have free: on a GPU the allocator's slack and the CUDA context on top."""
    if device.kind == "cpu":
        return est.total
    return est.total * GPU_SLACK + (0.0 if device.context_counted else GPU_RESERVE)


def fits(est: Estimate, device: Device) -> bool | None:
    return None if device.capacity is None else needed(est, device) <= device.capacity


def with_settings(params: Params, settings: dict) -> Params:
    """params with `-S key=value` settings applied (validated, as dvc's -S would be)."""
    data = params.model_dump()
    for key, value in settings.items():
        *path, last = key.split(".")
        section = data
        for k in path:
            section = section[k]
        section[last] = value
    return Params.model_validate(data)


def _halvings(n: int) -> list[int]:
    return [m for m in range(n - 1, 0, -1) if n % m == 0]


def candidate_levels(params: Params, stage: str) -> list[list[dict]]:
    """Settings to try, cheapest first, a list per kind of change: the micro batch (same training, slower),
    checkpointing (~a third slower), a 4-bit base (other numbers), a shorter max_length (truncates); for the
    generating stages, the generation batch (same outputs)."""
    if stage in ("sample", "eval_baselines", "eval"):
        section = "sample" if stage == "sample" else "eval"
        size = getattr(params, section).batch_size
        return [[{f"{section}.batch_size": b} for b in sorted({max(1, size // 2 ** k) for k in range(1, 12)},
                                                            reverse=True) if b < size]]
    cfg = getattr(params, stage)
    batch = cfg.batch_size // (params.train.num_processes if stage == "train" else 1)
    micro = cfg.micro_batch_size or batch
    micros = [{f"{stage}.micro_batch_size": m} for m in [micro] + _halvings(micro)]
    ckpt = {f"{stage}.activation_checkpointing": True}
    levels = [micros[1:]]
    if not cfg.activation_checkpointing:
        levels.append([{**ckpt, **m} for m in micros])
    if params.model.quantization is None:
        levels.append([{"model.quantization": "nf4", **m} for m in micros] +
                      [{"model.quantization": "nf4", **ckpt, **m} for m in micros])
    shortest = {"model.quantization": "nf4", **ckpt}
    levels.append([{"model.max_length": n, **shortest, **m} for n in _shorter(params.model.max_length)
                   for m in micros])
    return levels


def _shorter(n: int) -> list[int]:
    out = []
    while n > 64:
        n = max(64, n // 2)
        out.append(n)
    return out


def flags(settings: dict) -> str:
    show = lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
    return " ".join(f"-S {k}={show(v)}" for k, v in settings.items())


@dataclass(frozen=True)
class StagePlan:
    estimate: Estimate
    fits: bool | None
    suggestions: list = field(default_factory=list)  # [(settings, Estimate)], cheapest first, each checked


def plan_stage(params: Params, stage: str, device: Device, shape: Shape, lens: Lengths, round_num: int = 1,
               max_suggestions: int = 3) -> StagePlan:
    est = estimate(params, stage, device.kind, shape, lens, round_num)
    ok = fits(est, device)
    if ok is not False:
        return StagePlan(est, ok)
    found = []
    for level in candidate_levels(params, stage):
        for settings in level:
            try:
                changed = with_settings(params, settings)
            except Exception:  # noqa: BLE001 - a combination the params refuse is not a suggestion
                continue
            other = estimate(changed, stage, device.kind, shape, lens, round_num)
            if fits(other, device):
                found.append((settings, other))
                break
        if len(found) == max_suggestions:
            break
    return StagePlan(est, False, found)


def refusal(plan: StagePlan, device: Device) -> str:
    """The one line a stage stops with when it does not fit."""
    est = plan.estimate
    where = "RAM on the CPU" if device.kind == "cpu" else device.name
    line = (f"{est.stage}: needs ~{needed(est, device) / GIB:.1f} GiB of {where} "
            f"({device.capacity / GIB:.1f} GiB {'available' if device.kind == 'cpu' else 'free'}; "
            f"largest phase: {est.phase.name if est.phase else 'none'})")
    if not plan.suggestions:
        weights = (est.phase.parts.get("weights") if est.phase else None) or 0.0
        alone = f": the weights alone are ~{weights / GIB:.1f} GiB" if weights else ""
        return line + f": no setting the memory plan tries fits{alone} (python -m tools.estimate shows it)"
    settings, other = plan.suggestions[0]
    return line + f": set {flags(settings)} (fits at ~{needed(other, device) / GIB:.1f} GiB)"


def check_fits(params: Params, stage: str, tokenizer=None, round_num: int = 1) -> Estimate:
    """Before a stage loads weights: its estimate against what this process's device has free (CPU: available
    RAM; GPU: torch.cuda.mem_get_info; DPO_PIPELINE_MEMORY_GIB replaces it). Raises UserError naming the
    cheapest setting that fits, when it does not. On a CPU where memory is tight (the estimate past half of
    what is free) or with activation checkpointing, freed memory is returned at once from here on
    (`return_freed_memory`): what the estimate assumes, at some speed."""
    device = this_device(free=True)
    lens = lengths(params, tokenizer)
    plan = plan_stage(params, stage, device, model_shape(params), lens, round_num, max_suggestions=1)
    if plan.fits is False:
        raise UserError(refusal(plan, device))
    checkpointing = getattr(getattr(params, stage, None), "activation_checkpointing", False)
    tight = device.capacity is not None and needed(plan.estimate, device) > device.capacity / 2
    if device.kind == "cpu" and (checkpointing or tight):
        return_freed_memory()
    return plan.estimate


# ---------------------------------------------------------------------------------------------------------
# The CPU's allocator

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 2 ** 17  # 128 KiB


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> None:
    """Make freed blocks of `threshold` bytes and more go back to the system at once (glibc: fix the mmap
    threshold, which otherwise rises to 32 MB as blocks are freed, after which its heap keeps them). With
    glibc's default a DPO step's resident memory was 1.3-1.5x what this setting gives (SmolLM2-135M's shape,
    4 pairs of 192 tokens: 6.2 against 4.6 GiB), and activation checkpointing saved little of it (4.9 against
    3.4 GiB at 4 x 256): the heap kept what each recomputed layer freed. 128 KiB (glibc's starting value), not
    1 MiB: tensors just under the threshold live in the heap, which fragments over the steps of gradient
    accumulation (2 pairs of 112 tokens, hidden 576: 1.01 MB each; docs/benchmarks.md measures both
    thresholds). The price is page faults, that step 1.24x the time it takes at 1 MiB, so `check_fits` sets
    it only where memory is tight or checkpointing is on. The estimates assume it. No-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass
