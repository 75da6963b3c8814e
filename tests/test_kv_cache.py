"""The preallocated decoding cache: what DynamicCache would hold, without copying the cache at every step."""

from __future__ import annotations

import torch
from transformers import DynamicCache, LlamaConfig

from align.generation.kv_cache import PreallocatedLayer, unpack_to_batch

CONFIG = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32)


def _states(batch, length, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 8, generator=generator), torch.randn(batch, 2, length, 8, generator=generator)


def test_updates_write_in_place_and_equal_a_dynamic_cache_until_the_room_runs_out():
    keys, values = _states(3, 5, 0)
    buffers = (torch.zeros(3, 2, 7, 8), torch.zeros(3, 2, 7, 8))
    buffers[0][:, :, :5], buffers[1][:, :, :5] = keys, values
    layer, reference = PreallocatedLayer(*buffers, 5), DynamicCache(config=CONFIG).layers[0]
    reference.update(keys, values)
    for step in range(4):  # two steps fit in the room, the next two fall back to concatenation
        new = _states(3, 1, step + 1)
        got, want = layer.update(*new), reference.update(*new)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert (got[0].data_ptr() == buffers[0].data_ptr()) == (step < 2)
    assert layer.get_seq_length() == 9
    layer.batch_select_indices(torch.tensor([2, 0]))  # generate() dropping rows: a new tensor, still right
    reference.batch_select_indices(torch.tensor([2, 0]))
    new = _states(2, 1, 9)
    assert torch.equal(layer.update(*new)[0], reference.update(*new)[0])


def test_packed_prompts_become_left_padded_rows_repeated_per_sample():
    lengths = [3, 1, 2]
    packed = DynamicCache(config=CONFIG)
    for index in range(CONFIG.num_hidden_layers):
        packed.update(*_states(1, sum(lengths), index), index)
    batch = unpack_to_batch(packed, lengths, width=4, copies=2, room=5, config=CONFIG)
    assert batch.get_seq_length() == 4 and len(batch.layers) == 2
    for layer, source in zip(batch.layers, packed.layers):
        assert layer.keys.shape == (6, 2, 4, 8) and layer.buffers[0].shape == (6, 2, 9, 8)
        start = 0
        for prompt, n in enumerate(lengths):
            for row in (2 * prompt, 2 * prompt + 1):
                assert torch.equal(layer.keys[row, :, 4 - n :], source.keys[0, :, start : start + n])
                assert torch.equal(layer.values[row, :, 4 - n :], source.values[0, :, start : start + n])
                assert not layer.keys[row, :, : 4 - n].any()  # left padding, masked out by generate()
            start += n
