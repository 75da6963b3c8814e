"""Attention computed one packed example at a time: sdpa's fused causal kernel per example, no mask at all.

transformers keeps packed examples apart on sdpa by building a dense block-diagonal mask over every row (L² per row,
or (B·L)² for trl's flattened batch) and running sdpa's masked kernel over it: each token pays attention to the
whole row although it may see only its own example. This backend (registered as `per_example`) cuts the row at
the example boundaries — wherever the position ids stop counting up by one (the rule transformers itself uses to
detect packing) — and calls
`torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)` once per example: Σℓᵢ² work instead of L²,
no mask to build, and no padding needed, so the flattened batch (100% real tokens) costs nothing extra. A layer's
sliding window (Gemma 2/3, Cohere2, Mistral) applies within each example, as transformers' own mask would apply it
(an example longer than its window gets a banded ℓ×ℓ mask), and Gemma 2's soft-capped logits go through its own
eager attention, one example at a time: packing stays exact on every family whose layers are full or windowed.

Whenever there is a mask to honour (padding in generation, a KV cache longer than the query, a bidirectional
module), it hands over to transformers' own sdpa unchanged (the family's eager attention where logits are
soft-capped); the mask function below lets transformers build those
masks as it does for sdpa and returns None only for the maskless, cacheless case handled here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from align.core import compat

NAME = "per_example"

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


def per_example_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, _, q_length, _ = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{NAME} does not implement attention sinks (s_aux)")
    if attention_mask is None and causal and key.shape[2] == q_length:
        bounds = _bounds(batch, kwargs) or [[(0, q_length)]] * batch
        rows = [
            torch.cat(
                [
                    _one_example(
                        module,
                        query[row : row + 1, :, a:b],
                        key[row : row + 1, :, a:b],
                        value[row : row + 1, :, a:b],
                        dropout,
                        scaling,
                        window,
                        softcap,
                    )
                    for a, b in segments
                ],
                dim=2,
            )
            for row, segments in enumerate(bounds)
        ]
        output = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
        return output.transpose(1, 2).contiguous(), None
    if softcap is not None:  # sdpa has no soft-capping: the family's own eager attention, on sdpa's boolean mask
        return _soft_capped(module, query, key, value, attention_mask, dropout, scaling, softcap, **kwargs), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


def _one_example(module, query, key, value, dropout, scaling, window, softcap) -> torch.Tensor:
    """Causal attention within one example ([1, heads, ℓ, dim]), under the layer's sliding window and soft-capping:
    sdpa's fused causal kernel where neither applies."""
    length = query.shape[2]
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    if softcap is None and (window is None or length <= window):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa
        )
    positions = torch.arange(length, device=query.device)
    allowed = positions[None, :] <= positions[:, None]
    if window is not None:  # transformers' sliding_window_overlay: kv_idx > q_idx - window
        allowed &= positions[None, :] > positions[:, None] - window
    if softcap is None:
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )
    return _soft_capped(module, query, key, value, allowed, dropout, scaling, softcap).transpose(1, 2)


def _soft_capped(module, query, key, value, mask, dropout, scaling, softcap, **kwargs) -> torch.Tensor:
    """The family's own eager attention ([batch, ℓ, heads, dim]) on a boolean mask (True: may attend), which eager
    takes as an additive one."""
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=query.dtype).masked_fill(~mask, torch.finfo(query.dtype).min)
    return _family_eager(module)(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, softcap=softcap, **kwargs
    )[0]


def _family_eager(module):
    """The eager attention of the module's own modeling file (Gemma 2's soft-capping lives there)."""
    function = compat.family_eager_attention(module)
    if function is None:
        raise ValueError(f"{NAME}: soft-capped attention needs {type(module).__module__}.eager_attention_forward")
    return function


def per_example_mask(
    *args,
    q_length: int,
    kv_length: int,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    config=None,
    **kwargs,
):
    """No mask where the attention above needs none (no padding, no cache; a sliding window it applies itself, as the
    layers pass it their window); sdpa's own mask everywhere else, which transformers builds packing-aware."""
    from transformers.masking_utils import sdpa_mask

    if (
        attention_mask is None
        and q_length == kv_length
        and local_size in (None, getattr(config, "sliding_window", None))
    ):
        return None
    return sdpa_mask(
        *args,
        q_length=q_length,
        kv_length=kv_length,
        attention_mask=attention_mask,
        local_size=local_size,
        config=config,
        **kwargs,
    )


def register() -> str:
    """Make `per_example` a transformers attention backend (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, per_example_attention)
    AttentionMaskInterface.register(NAME, per_example_mask)
    return NAME


ATTENTION_LAYERS = {"full_attention", "sliding_attention"}


def supports(config) -> bool:
    """Causal attention, full or in a sliding window, in every layer: the per-example attention above is exact. Chunked
    attention and linear or recurrent layers are not handled."""
    if getattr(config, "attention_chunk_size", None):
        return False
    return set(getattr(config, "layer_types", None) or ()) <= ATTENTION_LAYERS


def full_causal(config) -> bool:
    """Full causal attention in every layer (no sliding window): what a packed KV cache can be cut from."""
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


def unwrapped(model):
    """The transformers model under a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_use(model) -> bool:
    """Whether `use_for` would switch this model (or the base under a peft wrapper)."""
    return supports(unwrapped(model).config) and compat.can_set_attention(unwrapped(model))


def use_for(model) -> bool:
    """Switch a loaded model (or a peft wrapper around one) to `per_example`; False where it would not be exact."""
    if not can_use(model):
        return False
    unwrapped(model).set_attn_implementation(register())
    return unwrapped(model).config._attn_implementation == NAME


@contextmanager
def packed_attention(model) -> Iterator[bool]:
    """`per_example` for the duration of the block (yields whether the model is on it), then the model's own backend."""
    base = unwrapped(model)
    previous = base.config._attn_implementation
    switched = previous != NAME and use_for(model)
    try:
        yield base.config._attn_implementation == NAME
    finally:
        if switched:
            base.set_attn_implementation(previous)
