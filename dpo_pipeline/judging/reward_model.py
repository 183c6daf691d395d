"""A reward model as the judge (`judge.backend: reward_model`): a Hugging Face sequence-classification model with
one output (`num_labels: 1`, as Skywork-Reward and most published reward models ship), `judge.reward_model` a
hub id or a local folder, resolved as `model.base` is (models/manifest.py).

- A (prompt, response) is the conversation [user: prompt, assistant: response] through the reward model's own
  chat template and tokenizer (as `apply_chat_template(..., tokenize=True)` gives it); its reward is the model's
  one output at the conversation's last token.
- Pointwise it answers a `Reward`: a float on the model's own scale, and no reason. Pairwise, the higher reward
  wins; rewards within `judge.reward_margin` of each other are a tie. It scores each response on its own, so it
  is not `positional`: two candidates are scored once each, never asked in both orders, and a repeat is the
  same answer.
- Batched scoring equals one-at-a-time scoring, within float rounding: conversations are padded on the left,
  given positions counted from their first real token, and fed as embeddings, so the model reads its score at
  the last position, which is every row's last real token. Left to itself a sequence-classification model finds
  that token by looking for `pad_token_id`: it refuses a batch when there is none (many reward models have
  none), and scores the wrong token when the pad token is the end-of-turn token the template ends with.
- It runs on the device the stage sees (models/device.py: a GPU in bf16, else the CPU in float32), loading only
  when a conversation is not cached. Every reward is cached in the judges' SQLite cache (cache.py) by the
  model's content (a local folder's hash, a hub commit), the dtype and the conversation's text, so a re-run,
  an unrelated param change or another stage never scores a conversation twice. `judge.reward_batch_size`
  conversations a forward pass, longest first.
"""

from __future__ import annotations

import json

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.config import JudgeParams
from dpo_pipeline.errors import UserError
from dpo_pipeline.judging.base import Estimate, Judge, Reward, Usage, Verdict
from dpo_pipeline.judging.cache import JudgeCache, request_key
from dpo_pipeline.models.manifest import resolve
from dpo_pipeline.progress import progress as progress_bar

SCORING_VERSION = "1"  # how a conversation becomes a reward (template, pooling): part of every cache key


class RewardModelJudge(Judge):
    """Scores with a sequence-classification reward model; free and offline once the model is here. Its
    `usage` counts the conversations it read (`input_tokens`: their tokens) and scored this run
    (`requests_sent`)."""

    name = "reward_model"
    remote = False
    pointwise = "reward"
    positional = False

    def __init__(self, cfg: JudgeParams):
        from dpo_pipeline.models.device import dtype

        self.cfg, self.margin = cfg, cfg.reward_margin
        found = resolve("judge.reward_model", cfg.reward_model)
        self.path, self.identity = found["path"], found["sha256"] or found["revision"]
        self.dtype = str(dtype())  # bf16 on a GPU, float32 on a CPU: other rewards, so another cache entry
        self.cache = JudgeCache(cfg.cache_dir)
        self.usage = Usage()
        self._tokenizer = self._model = None

    # --- the Judge interface ------------------------------------------------------------------------------

    def score_all(self, items: list[tuple[str, str]]) -> list[Reward]:
        self.usage.answers += len(items)
        return [Reward(reward=r) for r in self.rewards(items)]

    def pairwise_all(self, items: list[tuple[str, str, str]], repeat: int = 0) -> list[Verdict]:
        """A's reward against B's; `repeat` is ignored: the same conversations get the same rewards."""
        self.usage.answers += len(items)
        rewards = self.rewards([(p, a) for p, a, _ in items] + [(p, b) for p, _, b in items])
        return [self.verdict(a, b) for a, b in zip(rewards[:len(items)], rewards[len(items):])]

    def verdict(self, a: float, b: float) -> Verdict:
        winner = "A" if a - b > self.margin else "B" if b - a > self.margin else "tie"
        return Verdict(winner=winner, reason=f"reward A {a:.4f} vs B {b:.4f}")

    def estimate(self, kind: str, items: list[tuple], repeat: int = 0) -> Estimate:
        """The conversations to score (each response once; in pairwise items, both), how many the cache holds,
        and their tokens. Nothing is paid: USD is 0."""
        if kind == "pairwise":  # two identical responses are a tie without a judgment (pairwise_both_orders)
            items = [item for item in items if item[1] != item[2]]
        texts = {}
        for prompt, *responses in items:
            for response in responses:
                text = self.conversation(prompt, response)
                texts[self.key(text)] = text
        todo = [t for k, t in texts.items() if self.cache.get(k) is None]
        tokens = sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in todo)
        return Estimate(calls=len(items), unique=len(texts), cached=len(texts) - len(todo), to_send=len(todo),
                        input_tokens=tokens)

    # --- rewards: cached, else scored in batches ------------------------------------------------------------

    def conversation(self, prompt: str, response: str) -> str:
        return self.tokenizer.apply_chat_template(user(prompt) + assistant(response), tokenize=False)

    def key(self, conversation: str) -> str:
        return request_key(self.name, SCORING_VERSION, {"model": self.identity, "dtype": self.dtype,
                                                        "conversation": conversation})

    def rewards(self, items: list[tuple[str, str]]) -> list[float]:
        keys, texts = [], {}
        for prompt, response in items:
            text = self.conversation(prompt, response)
            keys.append(self.key(text))
            texts[keys[-1]] = text
        todo = {k: t for k, t in texts.items() if self.cache.get(k) is None}
        self.usage.cache_hits += len(texts) - len(todo)
        if todo:
            self.score(todo)
        out = []
        for k in keys:
            row = self.cache.get(k)
            self.usage.input_tokens += row["input_tokens"]
            out.append(json.loads(row["answer"])["reward"])
        return out

    def score(self, todo: dict[str, str]) -> None:
        """Score the conversations `todo` holds (by cache key), longest first, and cache each reward."""
        encoded = {k: self.tokenizer(t, add_special_tokens=False)["input_ids"] for k, t in todo.items()}
        model = self.model
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        longest = max(encoded.values(), key=len)
        if limit and len(longest) > limit:
            raise UserError(f"judge.reward_model {self.cfg.reward_model}: a conversation of {len(longest)} tokens "
                            f"is longer than the model's {limit} positions; shorten sample.max_new_tokens or use a "
                            "reward model with a longer context")
        order = sorted(encoded, key=lambda k: -len(encoded[k]))  # similar lengths share a batch; the peak first
        size = self.cfg.reward_batch_size
        with progress_bar("conversations") as progress:
            bar = progress.add_task(f"scoring with {self.cfg.reward_model}", total=len(order))
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                for k, reward in zip(batch, score_batch(model, [encoded[k] for k in batch], self.pad_id)):
                    self.cache.put(k, self.name, self.cfg.reward_model, {"reward": reward}, len(encoded[k]), 0, 0.0)
                self.usage.requests_sent += len(batch)
                progress.advance(bar, len(batch))

    # --- the model and its tokenizer, loaded when first needed -----------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path)
            if not tokenizer.chat_template:
                raise UserError(f"judge.reward_model {self.cfg.reward_model}: its tokenizer has no chat template; a "
                                "reward model scores conversations in the template it was trained with")
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        """What fills the left of a shorter row: masked, so any token does."""
        tok = self.tokenizer
        return next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoConfig, AutoModelForSequenceClassification

            from dpo_pipeline.models.device import device, dtype

            config = AutoConfig.from_pretrained(self.path)
            if config.num_labels != 1:  # a chat model's folder has no head: transformers would make one of 2
                raise UserError(f"judge.reward_model {self.cfg.reward_model}: {config.num_labels} outputs (num_labels);"
                                " a reward model is a sequence-classification model with one")
            model = AutoModelForSequenceClassification.from_pretrained(self.path, config=config, dtype=dtype())
            # Fed embeddings, the model never looks for padding, but it refuses a batch without a pad id set.
            text = model.config.get_text_config()
            if text.pad_token_id is None:
                text.pad_token_id = self.pad_id
            self._model = model.to(device()).eval()
        return self._model


def score_batch(model, ids: list[list[int]], pad_id: int) -> list[float]:
    """Each token list's reward: padded on the left, positions counted from its first real token, the model's
    output read at the last position (the module docstring says why)."""
    import torch

    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(input_ids)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    return logits[:, 0].float().tolist()
