"""Instruction-following difficulty (IFD, Li et al. 2023, "From Quantity to Quality"), with any causal LM.

    IFD(Q, A) = L(A | Q) / L(A)

where L is the mean cross-entropy of the answer's tokens, given the instruction (the whole conversation before the
last assistant turn) or given nothing (the answer after an empty user turn, so both are rendered by the same chat
template). A low IFD means the instruction makes the answer much easier to predict; an IFD near or above 1 means the
instruction does not help (the answer does not follow from it), which Li et al. filter out.

The answer's tokens are found with `align.models.chat.tokenize_chat` (assistant-only labels), for any chat template. Both
sequences of every record go through the model in length-sorted batches bounded by a token budget, so the logits of
one batch stay small whatever the vocabulary.
"""

from __future__ import annotations

import logging
import math

import torch

from align.models.chat import IGNORE_INDEX, tokenize_chat

log = logging.getLogger(__name__)


def last_turn_only(labels: list[int]) -> list[int]:
    """Keep the labels of the last assistant turn (the last run of labelled tokens); ignore earlier turns."""
    out = list(labels)
    end = max((i for i, x in enumerate(out) if x != IGNORE_INDEX), default=-1)
    if end < 0:
        return out
    start = end
    while start > 0 and out[start - 1] != IGNORE_INDEX:
        start -= 1
    for i in range(start):
        out[i] = IGNORE_INDEX
    return out


def ifd_sequences(tokenizer, messages: list[dict], max_length: int) -> tuple[tuple[list, list], tuple[list, list]]:
    """((ids, labels) of the answer given its conversation, (ids, labels) of the answer alone)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    conditioned = tokenize_chat(tokenizer, messages[: last + 1], max_length=max_length)[-1]  # ends with the answer
    alone = tokenize_chat(tokenizer, [{"role": "user", "content": ""}, messages[last]], max_length=max_length)[-1]
    given_labels, alone_labels = last_turn_only(conditioned.labels), last_turn_only(alone.labels)
    # A conversation cut at max_length keeps only the start of its answer: score the same tokens alone.
    keep = sum(x != IGNORE_INDEX for x in given_labels)
    for i, x in enumerate(alone_labels):
        if x != IGNORE_INDEX:
            if keep <= 0:
                alone_labels[i] = IGNORE_INDEX
            keep -= 1
    return (conditioned.input_ids, given_labels), (alone.input_ids, alone_labels)


class IFDScorer:
    """Scores records with a causal LM; `score(records)` → [IFD or None] (None: no answer token fits max_length)."""

    def __init__(self, model, tokenizer, *, max_length: int = 1024, batch_tokens: int = 4096):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_tokens = max_length, batch_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def losses(self, sequences: list[tuple[list[int], list[int]]]) -> list[float | None]:
        """Mean token cross-entropy over the labelled tokens of each (ids, labels) sequence."""
        out: list[float | None] = [None] * len(sequences)
        order = sorted(
            (i for i, (_, labels) in enumerate(sequences) if any(x != IGNORE_INDEX for x in labels[1:])),
            key=lambda i: -len(sequences[i][0]),
        )
        from tqdm.auto import tqdm

        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(order), desc="IFD", unit="seq", disable=len(order) < 64, leave=False)
        try:
            start = 0
            while start < len(order):
                width = len(sequences[order[start]][0])
                size = max(1, min(len(order) - start, self.batch_tokens // max(width, 1)))
                batch = order[start : start + size]
                start += size
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # right padding: positions start at 0 for every row
                    seq_ids, seq_labels = sequences[i]
                    ids[row, : len(seq_ids)] = torch.tensor(seq_ids)
                    labels[row, : len(seq_labels)] = torch.tensor(seq_labels)
                    mask[row, : len(seq_ids)] = 1
                with torch.inference_mode():
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    shift_logits = logits[:, :-1].float()
                    shift_labels = labels[:, 1:].to(device)
                    token_loss = torch.nn.functional.cross_entropy(
                        shift_logits.reshape(-1, shift_logits.size(-1)),
                        shift_labels.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                        reduction="none",
                    ).view(len(batch), -1)
                    counts = (shift_labels != IGNORE_INDEX).sum(1)
                    means = token_loss.sum(1) / counts.clamp(min=1)
                for row, i in enumerate(batch):
                    out[i] = float(means[row])
                del logits
                bar.update(len(batch))
        finally:
            bar.close()
            self.model.train(was_training)
        return out

    def score(self, records: list[dict]) -> list[float | None]:
        sequences = []
        for record in records:
            conditioned, alone = ifd_sequences(self.tokenizer, record["messages"], self.max_length)
            sequences += [conditioned, alone]
        losses = self.losses(sequences)
        scores = []
        for k in range(len(records)):
            given, alone = losses[2 * k], losses[2 * k + 1]
            if given is None or alone is None or alone <= 0 or not math.isfinite(given / alone):
                scores.append(None)
            else:
                scores.append(given / alone)
        return scores


def load_scorer(args, *, max_length: int = 1024, batch_tokens: int = 4096) -> IFDScorer:
    """The IFD scorer on `args` (align.models.loading.ModelArgs), on the GPU when there is one."""
    from align.models.loading import load_model, load_tokenizer, to_gpu_if_available

    tokenizer = load_tokenizer(args)
    lm = to_gpu_if_available(load_model(args))
    return IFDScorer(lm, tokenizer, max_length=max_length, batch_tokens=batch_tokens)
