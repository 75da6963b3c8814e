"""Lay packed examples out for the attention backend at hand, so that no example attends to another.

Three layouts (`packed_attention` in an SFT recipe; `auto` picks per backend and device):

- `varlen` (flash-attention): trl's padding-free collator flattens a batch of packs into one row and sends the
  sequence boundaries (cu_seqlens) to the varlen kernels; no mask, no padding.
- `segments` (sdpa or eager, default on CPU): the same flattened row, with attention computed per example by the
  `per_example` backend (align.models.attention): Σℓ² work, no mask, no padding.
- `rows` (eager, and sdpa on CUDA, where it is the layout measured on a GPU): on these backends transformers turns
  the restarting position ids into a block-diagonal mask over the row: one (B*L)^2 mask for a flattened batch of B
  packs of L tokens, where B*L^2 would do. On an H100 that made packed SFT slower than padding (BENCHMARKS.md).

`PackRowsCollator` keeps each pack in its own row: position ids restart at every example, the row is padded at its
end with a segment of its own (positions 0, 1, ... so it is a separate "sequence" that no real token can see, the
mask being causal), and there is no attention mask, so transformers builds the per-row block-diagonal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.models.chat import IGNORE_INDEX

# Backends with varlen kernels: they take the flattened layout (trl's own padding-free collator).
VARLEN_BACKENDS = ("flash_attention_2", "flash_attention_3")


LAYOUTS = ("auto", "segments", "rows")
# Backends that `per_example` replaces for the flattened layout (eager: Gemma 2, whose soft-capping sdpa lacks).
PER_EXAMPLE_BACKENDS = ("sdpa", "eager")


def uses_flattened_packs(attn_implementation: str | None) -> bool:
    return bool(attn_implementation) and any(attn_implementation.startswith(b) for b in VARLEN_BACKENDS)


def choose_layout(requested: str, attn_implementation: str | None, on_cuda: bool) -> str:
    """`varlen`, `segments` or `rows` for this backend; `requested` is the recipe's `packed_attention`."""
    if requested not in LAYOUTS:
        raise ValueError(f"unknown packed_attention {requested!r} (expected {', '.join(LAYOUTS)})")
    if uses_flattened_packs(attn_implementation):
        return "varlen"
    if requested != "auto":
        if requested == "segments" and attn_implementation not in PER_EXAMPLE_BACKENDS:
            raise ValueError(f"packed_attention 'segments' runs on sdpa or eager, not {attn_implementation}")
        return requested
    return "segments" if attn_implementation in PER_EXAMPLE_BACKENDS and not on_cuda else "rows"


@dataclass
class PackRowsCollator:
    """Batch of BFD packs (input_ids, labels, seq_lengths) → one row per pack, right-padded, no attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(examples)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.empty((rows, width), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            n = len(ids)
            lengths = example.get("seq_lengths") or [n]
            if sum(lengths) != n:
                raise ValueError(f"pack of {n} tokens has seq_lengths summing to {sum(lengths)}")
            input_ids[row, :n] = torch.as_tensor(ids)
            labels[row, :n] = torch.as_tensor(example.get("labels", ids))
            position_ids[row, :n] = torch.cat([torch.arange(length) for length in lengths])
            position_ids[row, n:] = torch.arange(width - n)  # the pad tail: a segment of its own
        # The first token of an example must not be predicted from the last token of the one before it.
        labels[position_ids == 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
