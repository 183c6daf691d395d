"""dpo-pipeline stages: one module per DVC stage (`python -m stages.<name>`), shared modules beside them."""

import os

# Set before transformers/datasets import: they read these once.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
