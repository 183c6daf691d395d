"""The transformers engine (`generation.engine: transformers`): each policy loaded in this process (or in each
of `num_processes` under torchrun, a share of the batches each) and decoded by `models/generation.py`'s
batched generation, each prompt seeded by itself: the same rows whatever the batch size or process count."""

from __future__ import annotations

from dpo_pipeline.models import parallel
from dpo_pipeline.models.engines.base import Engine, Job, Policy
from dpo_pipeline.models.loading import load_base, load_merged, load_round, load_tokenizer


class TransformersEngine(Engine):
    name = "transformers"

    @property
    def processes(self) -> int:
        return self.settings.num_processes

    def generate(self, jobs: list[Job], label: str) -> list[list[dict]]:
        tokenizer = load_tokenizer(self.params.paths)
        rows, model, loaded = [], None, None
        for job in jobs:
            if job.policy != loaded:  # consecutive jobs on one policy share it; one model in memory at a time
                model = None
                model, loaded = self.load(job.policy), job.policy
            d = job.decoding
            rows.append(parallel.generate(model, tokenizer, job.prompts, temperature=d.temperature, top_k=d.top_k,
                                          top_p=d.top_p, max_new_tokens=d.max_new_tokens,
                                          batch_size=self.settings.batch_size, seed=d.seed,
                                          label=f"{label} {job.name}"))
        return rows

    def load(self, policy: Policy):
        """The policy's weights in eval mode: the base; the SFT model and round k merged (models/loading.py);
        round k unmerged on round k-1's merged policy when the job asks for it."""
        paths = self.params.paths
        if policy.round is None:
            return load_base(paths).eval()
        if policy.unmerged and policy.round > 0:
            return load_round(paths, policy.round).eval()
        return load_merged(paths, policy.round).eval()
