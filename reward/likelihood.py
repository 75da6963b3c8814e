"""A ranker that needs no training: how much the prompt raises a causal LM's likelihood of the answer.

The score of (prompt, completion) is the mean, over the completion's tokens (its end-of-turn included), of
log p(token | prompt, earlier tokens) − log p(token | an empty user turn, earlier tokens): the pointwise mutual
information between question and answer (Holtzman et al. 2021, "Surface Form Competition", §3). An answer to
another question, in another language, or generic filler gains little from the prompt and ranks low; a fluent
answer that addresses the question ranks high. It judges relevance and language, not correctness or depth: where
a trained reward model is out of reach (a CPU, no preference data), it is the cheapest ranker that is not chance.

    ranker = LikelihoodRanker("smollm2-135m")
    ranker.rank("Wie viele Beine hat eine Spinne?", ["Spiders have eight legs.", "Eine Spinne hat acht Beine."])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reward.rank import Ranking, Text, as_messages, length_batches, rank_by_scores

EMPTY_TURN = [{"role": "user", "content": ""}]


@dataclass
class LikelihoodRanker:
    """`model` is a path, hub id or alias of a causal LM with a chat template (loaded with align.models' choices),
    or a loaded model with its `tokenizer`. `max_length` caps the completion tokens scored (its first ones)."""

    model: Any
    tokenizer: Any = None
    batch_size: int = 16
    max_length: int = 1024
    model_args: Any = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if isinstance(self.model, str):
            import dataclasses

            from align.models.loading import ModelArgs, load_model, load_tokenizer, to_gpu_if_available

            args = (
                dataclasses.replace(self.model_args, model=self.model)
                if self.model_args
                else ModelArgs(model=self.model)
            )
            self.tokenizer = load_tokenizer(args)
            self.model = to_gpu_if_available(load_model(args))
        elif self.tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the likelihood ranker needs a chat model: its tokenizer has no chat template")
        self.model.eval()
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.unconditioned = self._ids(self._head(EMPTY_TURN))

    def _head(self, prompt: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _completion_ids(self, prompt: list[dict], completion: list[dict], head: str) -> list[int]:
        """The completion as the template renders it after `head` (its end-of-turn included), capped."""
        full = self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        return self._ids(full[len(os.path.commonprefix([full, head])) :])[: self.max_length] or [self.pad]

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows: list[tuple[list[int], int]] = []  # (input ids, where the completion starts)
        for prompt, completion in zip(prompts, completions):
            prompt = as_messages(prompt, "user")
            head = self._head(prompt)
            answer = self._completion_ids(prompt, as_messages(completion, "assistant"), head)
            conditioned = self._ids(head)[-self.max_length :]
            rows += [(conditioned + answer, len(conditioned)), (self.unconditioned + answer, len(self.unconditioned))]
        means = self._mean_logprobs(rows)
        return [means[2 * i] - means[2 * i + 1] for i in range(len(prompts))]

    @torch.inference_mode()
    def _mean_logprobs(self, rows: list[tuple[list[int], int]]) -> list[float]:
        """Mean log-probability of each row's tokens from its start offset on. Batches are length-sorted and padded
        on the left, so every row's scored tail ends at the right edge and the LM head (a vocabulary-wide matmul,
        most of the cost for a small model) runs on the longest tail only (`logits_to_keep`)."""
        device = next(self.model.parameters()).device
        out: list[float] = [0.0] * len(rows)
        for batch in length_batches([len(ids) for ids, _ in rows], self.batch_size):
            width = max(len(rows[i][0]) for i in batch)
            tail = max(len(rows[i][0]) - rows[i][1] for i in batch)  # scored tokens of the longest tail
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, width - len(rows[i][0]) :] = torch.tensor(rows[i][0])
                mask[r, width - len(rows[i][0]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                logits_to_keep=tail + 1,
            ).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts the last `tail` tokens
            targets = ids[:, width - tail :].to(device)
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            for r, i in enumerate(batch):
                tokens, start = rows[i]
                out[i] = float(picked[r, tail - (len(tokens) - start) :].mean())
        return out

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]]) -> list[Ranking]:
        return rank_by_scores(self.score, prompts, candidates)

    def rank(self, prompt: Text, candidates: Sequence[Text]) -> Ranking:
        return self.rank_many([prompt], [candidates])[0]
