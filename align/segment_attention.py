"""Attention computed one packed example at a time: sdpa's fused causal kernel per example, no mask at all.

transformers keeps packed examples apart on sdpa by building a dense block-diagonal mask over every row (L² per row,
or (B·L)² for trl's flattened batch) and running sdpa's masked kernel over it: each token pays attention to the
whole row although it may see only its own example. This backend (registered as `sdpa_packed`) cuts the row at
the example boundaries — wherever the position ids stop counting up by one (the rule transformers itself uses to
detect packing) — and calls
`torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)` once per example: Σℓᵢ² work instead of L²,
no mask to build, and no padding needed, so the flattened batch (100% real tokens) costs nothing extra.

Whenever there is a mask to honour (padding in generation, a KV cache longer than the query, a bidirectional
module), it hands over to transformers' own sdpa unchanged; the mask function below lets transformers build those
masks as it does for sdpa and returns None only for the maskless, cacheless case handled here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

NAME = "sdpa_packed"

_last_bounds: tuple[object, list[list[tuple[int, int]]]] | None = None  # (position_ids tensor, bounds): one per forward


def segment_bounds(position_ids: torch.Tensor, batch: int) -> list[list[tuple[int, int]]]:
    """[(start, end), ...] per row: a new example starts wherever a position is not its predecessor plus one."""
    positions = position_ids.expand(batch, -1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    width = positions.shape[1]
    rows = []
    for row in starts.cpu():
        cuts = row.nonzero().flatten().tolist() + [width]
        rows.append(list(zip(cuts[:-1], cuts[1:])))
    return rows


def _bounds(batch: int, kwargs: dict) -> list[list[tuple[int, int]]] | None:
    """The examples of each row, computed once per forward pass (every layer gets the same position ids)."""
    global _last_bounds
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return None
    if _last_bounds is None or _last_bounds[0] is not position_ids:
        _last_bounds = (position_ids, segment_bounds(position_ids, batch))
    return _last_bounds[1]


def sdpa_packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, _, q_length, _ = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    bounds = None
    if attention_mask is None and causal and q_length > 1 and key.shape[2] == q_length:
        if kwargs.get("sliding_window") is not None:
            raise ValueError(f"{NAME} does not implement sliding-window attention; use sdpa")
        bounds = _bounds(batch, kwargs)
    if bounds is None or all(len(row) == 1 for row in bounds):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)

    gqa = getattr(module, "num_key_value_groups", 1) > 1
    rows = []
    for row, segments in enumerate(bounds):
        q, k, v = query[row: row + 1], key[row: row + 1], value[row: row + 1]
        rows.append(torch.cat([
            torch.nn.functional.scaled_dot_product_attention(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True,
                enable_gqa=gqa)
            for a, b in segments], dim=2))
    output = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return output.transpose(1, 2).contiguous(), None


def sdpa_packed_mask(*args, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask where the attention above needs none (no padding, no cache); sdpa's own mask everywhere else."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and kwargs.get("local_size") is None:
        return None
    return sdpa_mask(*args, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make `sdpa_packed` a transformers attention backend (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_packed_mask)
    return NAME


def supports(config) -> bool:
    """Full causal attention in every layer: no sliding windows or other per-layer masks to drop."""
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


def unwrapped(model):
    """The transformers model under a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_use(model) -> bool:
    """Whether `use_for` would switch this model (or the base under a peft wrapper)."""
    return supports(unwrapped(model).config) and unwrapped(model)._can_set_attn_implementation()


def use_for(model) -> bool:
    """Switch a loaded model (or a peft wrapper around one) to `sdpa_packed`; False where it would not be exact."""
    if not can_use(model):
        return False
    unwrapped(model).set_attn_implementation(register())
    return unwrapped(model).config._attn_implementation == NAME


@contextmanager
def packed_attention(model) -> Iterator[bool]:
    """`sdpa_packed` for the duration of the block (yields whether the model is on it), then the model's own backend."""
    base = unwrapped(model)
    previous = base.config._attn_implementation
    switched = previous != NAME and use_for(model)
    try:
        yield base.config._attn_implementation == NAME
    finally:
        if switched:
            base.set_attn_implementation(previous)
