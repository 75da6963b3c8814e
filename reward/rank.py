"""Score (prompt, completion) pairs with a reward model, and rank N candidates per prompt.

Any HF AutoModelForSequenceClassification with one output works, ours or third-party. Text is re-tokenised with
the reward model's OWN tokenizer and chat template (a policy's token ids are never reused: the two vocabularies
need not agree); a tokenizer without a chat template (an encoder, a base model) gets the plain text
"prompt\\n\\ncompletion" with its own special tokens ([CLS] ... [SEP], BOS, ...).

Truncation is explicit: when a pair is longer than `max_length`, the END of the prompt and the START of the
completion are kept (the question being answered and the answer's opening matter most; a long system prompt or
an early turn matters least). When both are long each gets half; when one is short the other gets the rest.
Scoring sorts the pairs by length so each batch pads little, then returns scores in input order. It is
deterministic: eval mode, no sampling, a fixed order of batches.

Under `accelerate launch`, `score_sharded` splits the pairs between processes and gathers them back in input order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from align.data.pairs import Ranking, ranking_from_scores
from align.models.chat import render

log = logging.getLogger(__name__)

Messages = list[dict]
Text = str | Messages
PLAIN_SEPARATOR = "\n\n"


# ---------------------------------------------------------------------------------------------------- encoding


def as_messages(value: Text, role: str) -> Messages:
    """A string is one message of `role`; a message list is used as is."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return list(value)


def conversation_text(messages: Messages) -> str:
    """Messages as plain text (tokenizers without a chat template, the judge's question): the content alone for a
    single message, "Role: content" paragraphs for a conversation."""
    if len(messages) == 1:
        return messages[0]["content"]
    return PLAIN_SEPARATOR.join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass
class Encoded:
    input_ids: list[int]
    truncated: bool


class PairEncoder:
    """(prompt, completion) → input ids for one reward model; shared by scoring and by reward training, so that a
    trained model is scored exactly as it was trained."""

    def __init__(self, tokenizer, max_length: int | None):
        if max_length is not None and max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self._special = set(tokenizer.all_special_ids)

    def text(self, prompt: Messages, completion: Messages) -> tuple[str, int]:
        """The text the model reads and the character offset where the completion starts."""
        if self.chat:
            full = render(self.tokenizer, prompt + completion)
            head = render(self.tokenizer, prompt, add_generation_prompt=True)
            return full, len(os.path.commonprefix([full, head]))
        head = conversation_text(prompt) + PLAIN_SEPARATOR
        return head + PLAIN_SEPARATOR.join(m["content"] for m in completion), len(head)

    def encode(self, prompt: Text, completion: Text) -> Encoded:
        text, boundary = self.text(as_messages(prompt, "user"), as_messages(completion, "assistant"))
        # A rendered chat template already holds its special tokens; plain text gets the tokenizer's own.
        encoding = self.tokenizer(text, add_special_tokens=not self.chat, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        start, end = 0, len(ids)
        if not self.chat:  # the added special tokens ([CLS], [SEP], BOS) sit at the ends with empty offsets
            while start < end and ids[start] in self._special and offsets[start][0] == offsets[start][1]:
                start += 1
            while end > start and ids[end - 1] in self._special and offsets[end - 1][0] == offsets[end - 1][1]:
                end -= 1
        cut = start
        while cut < end and offsets[cut][0] < boundary:
            cut += 1
        prompt_ids, completion_ids = ids[start:cut], ids[cut:end]
        budget = None if self.max_length is None else self.max_length - (len(ids) - (end - start))
        if budget is None or len(prompt_ids) + len(completion_ids) <= budget:
            return Encoded(list(ids), False)
        keep_prompt, keep_completion = truncation_split(len(prompt_ids), len(completion_ids), budget)
        kept = prompt_ids[len(prompt_ids) - keep_prompt :] + completion_ids[:keep_completion]
        return Encoded(ids[:start] + kept + ids[end:], True)


def truncation_split(prompt: int, completion: int, budget: int) -> tuple[int, int]:
    """How many prompt tokens (from its end) and completion tokens (from its start) fit in `budget`."""
    keep_prompt = min(prompt, max(budget - completion, budget // 2))
    return keep_prompt, min(completion, budget - keep_prompt)


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class Scores:
    scores: list[float]
    truncated: list[bool]

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)


def rank_by_scores(score, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]]) -> list[Ranking]:
    """Rankings from a pointwise scorer `score(prompts, completions)`, called once on every pair of every prompt."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    flat = score(
        [p for p, group in zip(prompts, candidates) for _ in group], [c for group in candidates for c in group]
    )
    out, at = [], 0
    for group in candidates:
        out.append(ranking_from_scores(flat[at : at + len(group)]))
        at += len(group)
    return out


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float], langs: Sequence[str | None]) -> dict:
    """Share of pairs whose chosen completion scores strictly above the rejected one, overall and per language."""
    hits: dict[str, list[bool]] = {}
    for c, r, lang in zip(chosen, rejected, langs):
        hits.setdefault(lang or "?", []).append(c > r)
    n = len(chosen)
    return {
        "pairs": n,
        "accuracy": round(sum(c > r for c, r in zip(chosen, rejected)) / n, 4) if n else None,
        "mean_margin": round(sum(c - r for c, r in zip(chosen, rejected)) / n, 4) if n else None,
        "per_language": {lang: round(sum(v) / len(v), 4) for lang, v in sorted(hits.items())},
        "pairs_per_language": {lang: len(v) for lang, v in sorted(hits.items())},
    }


# ---------------------------------------------------------------------------------------------------- ranker


def length_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Indices in batches of `batch_size`: longest first when sorted (ties in input order), else in input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class RewardRanker:
    """Scores (prompt, completion) pairs with a sequence-classification reward model.

        ranker = RewardRanker("runs/rm", batch_size=16, max_length=1024)
        ranker.score(["Bonjour ?"], ["Bonjour !"])            # → [1.73]
        ranker.rank("Bonjour ?", ["Hello!", "Bonjour !"])     # → Ranking(best=1, worst=0, margin=2.1, ...)

    `model` is a path, hub id or alias (loaded with align.models' choices: safetensors only, no remote code unless
    `model_args.trust_remote_code`), or an already loaded model, in which case `tokenizer` is required.
    `new_head=True` accepts a causal LM or encoder and gives it a fresh, seeded scalar head (benchmarks, the
    untrained baseline); by default such a checkpoint is refused.
    """

    model: Any
    tokenizer: Any = None
    batch_size: int = 16
    max_length: int | None = 1024
    sort_by_length: bool = True
    model_args: Any = None  # align.models.loading.ModelArgs for dtype, attention, trust_remote_code, revision
    new_head: bool = False
    device: Any = None
    padded_tokens: int = field(default=0, init=False)  # tokens fed to the model, pads included (benchmarks)
    real_tokens: int = field(default=0, init=False)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if isinstance(self.model, str):
            self.model, self.tokenizer = load_ranker_model(self.model, self.model_args, new_head=self.new_head)
            if self.device is None and getattr(self.model, "hf_device_map", None) is None:
                self.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif self.tokenizer is None:
            raise ValueError("a loaded reward model needs its tokenizer")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        text_config = self.model.config.get_text_config()
        if text_config.pad_token_id is None:  # a decoder's head reads the last non-pad token: it must know pad
            text_config.pad_token_id = self.tokenizer.pad_token_id
        if self.device is None:  # a model handed over (or placed by a device map) stays where it is
            self.device = next(self.model.parameters()).device
        elif next(self.model.parameters()).device != torch.device(self.device):
            self.model.to(self.device)
        self.encoder = PairEncoder(self.tokenizer, self.max_length)
        self._token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    def encode(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[Encoded]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [self.encoder.encode(p, c) for p, c in zip(prompts, completions)]

    def score_pairs(self, prompts: Sequence[Text], completions: Sequence[Text]) -> Scores:
        """Scores in input order, and which pairs were truncated to fit `max_length`."""
        encoded = self.encode(prompts, completions)
        return Scores(self.score_encoded([e.input_ids for e in encoded]), [e.truncated for e in encoded])

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        return self.score_pairs(prompts, completions).scores

    @torch.inference_mode()
    def score_encoded(self, input_ids: Sequence[list[int]]) -> list[float]:
        """Score already tokenised sequences (right-padded batches, longest first)."""
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        scores: list[float | None] = [None] * len(input_ids)
        try:
            for batch in length_batches([len(ids) for ids in input_ids], self.batch_size, self.sort_by_length):
                width = max(len(input_ids[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(input_ids[i])] = torch.tensor(input_ids[i], dtype=torch.long)
                    mask[row, : len(input_ids[i])] = 1
                inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
                if self._token_types:
                    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
                logits = self.model(**inputs).logits
                self.padded_tokens += ids.numel()
                self.real_tokens += int(mask.sum())
                for row, i in enumerate(batch):
                    scores[i] = float(logits[row, 0].float())
        finally:
            if was_training:
                self.model.train()
        return scores  # type: ignore[return-value]

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]]) -> list[Ranking]:
        """Rank each prompt's candidates; every pair of every prompt is scored in one length-sorted pass."""
        return rank_by_scores(self.score, prompts, candidates)

    def rank(self, prompt: Text, candidates: Sequence[Text]) -> Ranking:
        return self.rank_many([prompt], [candidates])[0]


def load_ranker_model(name: str, model_args=None, *, new_head: bool = False):
    """A reward model and its own tokenizer, loaded with align.models' choices."""
    import dataclasses

    from align.models.loading import ModelArgs, load_reward_model, load_reward_tokenizer

    args = dataclasses.replace(model_args, model=name) if model_args is not None else ModelArgs(model=name)
    tokenizer = load_reward_tokenizer(args)
    return load_reward_model(args, new_head=new_head, pad_token_id=tokenizer.pad_token_id), tokenizer


# ---------------------------------------------------------------------------------------------------- processes


def balanced_order(weights: Sequence[int], world: int) -> list[int]:
    """Indices arranged so that accelerate's contiguous split hands each process a similar load: sorted by weight,
    then dealt round-robin (process k gets items k, k+world, ...), each process's deal laid out contiguously."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    return [i for k in range(world) for i in order[k::world]]


def join_shards(parts: Sequence[tuple[int, float, bool]], n: int) -> Scores:
    """Gathered (index, score, truncated) triples from every process → Scores in input order; every index exactly once."""
    scores: list[float | None] = [None] * n
    truncated = [False] * n
    for index, score, cut in parts:
        if not 0 <= index < n or scores[index] is not None:
            raise RuntimeError(f"sharded scoring returned index {index} twice or out of range (n={n})")
        scores[index], truncated[index] = score, cut
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise RuntimeError(f"sharded scoring lost {len(missing)} of {n} pairs (first: {missing[0]})")
    return Scores(scores, truncated)  # type: ignore[arg-type]


def score_sharded(ranker: RewardRanker, prompts: Sequence[Text], completions: Sequence[Text], state=None) -> Scores:
    """Score on every process of an accelerate run, each on its share; every process gets all scores, in input order.

    With one process this is `ranker.score_pairs`. The share of each process comes from
    `PartialState.split_between_processes` over a length-balanced order of the indices.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = state or PartialState()
    if state.num_processes == 1:
        return ranker.score_pairs(prompts, completions)
    weights = [_chars(p) + _chars(c) for p, c in zip(prompts, completions)]
    order = balanced_order(weights, state.num_processes)
    with state.split_between_processes(order) as mine:
        part = ranker.score_pairs([prompts[i] for i in mine], [completions[i] for i in mine])
        triples = list(zip(mine, part.scores, part.truncated))
    return join_shards(gather_object(triples), len(prompts))


def _chars(value: Text) -> int:
    return len(value) if isinstance(value, str) else sum(len(m.get("content") or "") for m in value)
