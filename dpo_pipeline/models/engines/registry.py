"""The one place generation engines are named: `generation.engine` -> an Engine. Stages get an Engine and use
only its interface (base.py), so adding an engine (SGLang, a served endpoint) is one class and one line here
(and its name in config.GenerationParams.engine, which refuses any other in one line)."""

from __future__ import annotations

from typing import Literal

from dpo_pipeline.config import Params
from dpo_pipeline.models.engines.base import Engine
from dpo_pipeline.models.engines.transformers import TransformersEngine
from dpo_pipeline.models.engines.vllm import VllmEngine

ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (TransformersEngine, VllmEngine)}


def make_engine(params: Params, section: Literal["sample", "eval"]) -> Engine:
    """The configured engine, with the batch size and number of processes of `section` (sample or eval)."""
    return ENGINES[params.generation.engine](params, section)
