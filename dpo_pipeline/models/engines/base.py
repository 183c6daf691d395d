"""The generation engine interface: what every engine is, and what a stage may ask of it.

A stage builds the configured engine (`registry.make_engine(params, "sample")`: `generation.engine`, with the
batch size and number of processes of the stage's own section) and hands it jobs: a policy to serve (the base,
the SFT model or round k's policy), the prompts, and how to decode them (temperature, top-k, top-p, the token
limit and the seed each prompt's own seed is drawn from). It gets back each job's rows, {"text", "tokens"}, in
the prompts' order. Every engine seeds each prompt by the prompt itself (models/generation.prompt_seed), so a
response does not depend on the other prompts sent with it. Engines are peers (transformers.py, vllm.py),
built only by registry.py: no stage names an engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

from dpo_pipeline.config import Params
from dpo_pipeline.rounds import model_key


@dataclass(frozen=True)
class Policy:
    """A model to serve: the base (`round` None), the SFT model (0), or round k's policy: the SFT model with
    the DPO adapters of rounds 1..k. `unmerged`: round k's own adapter is applied as an adapter on round k-1's
    merged policy, not merged into it, as eval measures its KL; an engine in this process generates from
    exactly those weights (merging moves the floats). vLLM serves every round merged and ignores it."""

    round: int | None
    unmerged: bool = False

    @property
    def name(self) -> str:
        return "base" if self.round is None else "sft" if self.round == 0 else model_key(self.round)


BASE, SFT = Policy(None), Policy(0)


@dataclass(frozen=True)
class Decoding:
    """How a job's prompts are decoded: temperature 0 is greedy; top_k 0 is the whole vocabulary."""

    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int  # each prompt's own seed is drawn from (seed, prompt)


@dataclass
class Job:
    """One response for each prompt from `policy`; `name` tells the job apart in progress lines ("T=0.7",
    "dpo")."""

    policy: Policy
    prompts: list
    decoding: Decoding
    name: str


class Engine(ABC):
    """Built with the validated params and the section (sample or eval) whose batch_size and num_processes
    apply; `generate` is the one call."""

    name: ClassVar[str]

    def __init__(self, params: Params, section: Literal["sample", "eval"]):
        self.params, self.section = params, section
        self.settings = getattr(params, section)

    @property
    def processes(self) -> int:
        """How many processes the stage runs as (under torchrun when more than one; models/parallel.py). Every
        process calls `generate` and gets the same rows; process 0 writes them."""
        return 1

    @abstractmethod
    def generate(self, jobs: list[Job], label: str) -> list[list[dict]]:
        """Each job's rows, {"text", "tokens"}, in its prompts' order; `label` starts the progress lines."""
