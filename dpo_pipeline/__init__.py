"""dpo-pipeline's library: the rooms the stages (stages/) and tools (tools/) are built from.

    config, errors, cli, files   params, the two error kinds, the entry point, atomic file I/O (plumbing)
    chat, progress               message lists, one progress bar
    tasks/                       the domain: data generator, policy, rubric, heuristic metrics
    models/                      builtin tiny model, loading, LoRA, generation, KL, trainer settings
    judging/                     the Judge interface, rubric and Claude backends, cache, pairs, datasets
    evaluation/                  the metric schema, statistics, eval aggregation
    reporting/                   report markdown, diagnostics, figures

A library module never imports a stage or a tool (tests/test_layout.py checks it).
"""

import os

# Set before transformers/datasets import: they read these once.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
