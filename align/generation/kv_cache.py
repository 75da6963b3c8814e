"""A left-padded KV cache for batched decoding, with the room for the new tokens allocated up front.

transformers' DynamicCache grows by `torch.cat` at every decoding step, copying every layer's whole cache each time;
writing each new token into room allocated up front avoids that copy with identical outputs (measured in
BENCHMARKS.md, bench/generate_parts.py). The cache stays a DynamicCache, so `generate` treats it as it treats its own.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from align.core import compat


class PreallocatedLayer(compat.dynamic_cache_layer()):
    """A DynamicLayer whose keys and values are views of buffers with room for more tokens; `update` writes in place.

    Whatever replaces the tensors (beam reordering, batch selection) or outgrows the room falls back to
    DynamicLayer's concatenation, so the layer is never wrong, only sometimes no faster."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.buffers = (keys, values)
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = self.buffers
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if (
            end > keys.shape[-2]
            or self.keys.data_ptr() != keys.data_ptr()
            or self.keys.shape[0] != keys.shape[0]
            or key_states.shape[0] != keys.shape[0]
        ):
            return super().update(key_states, value_states, *args, **kwargs)
        keys[:, :, start:end] = key_states
        values[:, :, start:end] = value_states
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values


def unpack_to_batch(
    packed: DynamicCache, lengths: list[int], width: int, copies: int, room: int, config
) -> DynamicCache:
    """Split a one-row cache of prompts packed end to end (`lengths` tokens each) into a batch: one row per prompt,
    repeated `copies` times, left-padded with zeros to `width` tokens, with room for `room` more."""
    cache = DynamicCache(config=config)
    layers = []
    for layer in packed.layers:
        heads, dim, value_dim = layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]
        keys = layer.keys.new_zeros((len(lengths) * copies, heads, width + room, dim))
        values = layer.values.new_zeros((len(lengths) * copies, heads, width + room, value_dim))
        start = 0
        for row, n in enumerate(lengths):
            rows = slice(row * copies, (row + 1) * copies)
            keys[rows, :, width - n : width] = layer.keys[0, :, start : start + n]
            values[rows, :, width - n : width] = layer.values[0, :, start : start + n]
            start += n
        layers.append(PreallocatedLayer(keys, values, width))
    cache.layers = layers
    return cache
