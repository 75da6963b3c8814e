"""Packing must never let one example attend to another.

The loss of a packed batch, computed by the SFT stage's own trainer on the batch its own dataloader yields, must
equal what the same examples give one at a time. A negative control shows the comparison is sharp enough to
catch cross-example attention. Runs in fp32 so that equality is exact on any device (tests/test_gpu.py covers bf16).
"""

from __future__ import annotations

import pytest
import torch

from align.data import load_records
from align.models.attention import NAME as SDPA_PACKED
from align.models.chat import IGNORE_INDEX
from align.stages.sft import build_trainer, parse_sft_config
from align.training.packing import PackRowsCollator, choose_layout, uses_flattened_packs

# (attention backend, packed_attention): every layout polyalign can choose on CPU.
LAYOUTS = [("sdpa", "segments"), ("sdpa", "rows"), ("eager", "rows")]


def make_trainer(tiny_model_dir, chat_file, tmp_path, attention: str, layout: str = "auto", **overrides):
    raw = {
        "model": str(tiny_model_dir),
        "dataset": str(chat_file),
        "output_dir": str(tmp_path / "out"),
        "attn_implementation": attention,
        "packed_attention": layout,
        "max_length": 256,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "seed": 0,
        "dtype": "fp32",
        **overrides,
    }
    job = parse_sft_config(raw)
    return build_trainer(job, load_records(job.args.dataset, "sft"))


def split_packed(batch, pad_token_id: int | None = None):
    """Recover the examples of a packed batch (any number of rows) from its restarting position ids.

    A row's pad tail (all pad tokens, no labels) is a segment of its own and is not an example.
    """
    examples = []
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["position_ids"][row]
        starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
        for a, b in zip(starts, starts[1:]):
            ids, labels = batch["input_ids"][row, a:b], batch["labels"][row, a:b]
            if pad_token_id is not None and (ids == pad_token_id).all() and (labels == IGNORE_INDEX).all():
                continue
            examples.append((row, a, ids, labels))
    return examples


def per_token_losses(model, input_ids, labels, **extra):
    logits = model(input_ids=input_ids[None], use_cache=False, **extra).logits[0].float()
    shift_logits, shift_labels = logits[:-1], labels[1:]
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")


def pad_id(trainer) -> int:
    return trainer.processing_class.pad_token_id


@pytest.mark.parametrize("attention,layout", LAYOUTS)
def test_packed_loss_equals_unpacked_losses(tiny_model_dir, chat_file, tmp_path, attention, layout):
    # max_length 128 makes several packs: several rows each padded at its end (rows), or one flattened row (segments).
    trainer, stats = make_trainer(tiny_model_dir, chat_file, tmp_path, attention, layout, max_length=128)
    assert stats["packed_attention"] == layout
    assert trainer.model.config._attn_implementation == (SDPA_PACKED if layout == "segments" else attention)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch  # a mask would make transformers ignore the restarting positions
    assert batch["input_ids"].shape[0] == (1 if layout == "segments" else 4)
    examples = split_packed(batch, pad_id(trainer))
    assert len(examples) > batch["input_ids"].shape[0]  # several examples really share a row

    model = trainer.model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for _, _, input_ids, labels in examples:
            losses = per_token_losses(model, input_ids, labels)
            mask = labels[1:] != IGNORE_INDEX
            total += losses[mask].sum().item()
            count += int(mask.sum())
    assert count > 0
    assert packed == pytest.approx(total / count, abs=1e-5)


@pytest.mark.parametrize("attention,layout", LAYOUTS)
def test_packed_logits_equal_unpacked_logits(tiny_model_dir, chat_file, tmp_path, attention, layout):
    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, attention, layout, max_length=128)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for row, start, input_ids, _ in split_packed(batch, pad_id(trainer)):
            alone = model(input_ids=input_ids[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[row, start : start + len(input_ids)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["segments", "rows"])
def test_negative_control_cross_attention_is_detected(tiny_model_dir, chat_file, tmp_path, layout, monkeypatch):
    """Let the examples attend to each other (rows: an all-ones attention mask; segments: a backend that fails to
    cut the row) and the losses visibly differ: the equalities above are sharp enough to catch a leak."""
    from align.models import attention as segment_attention

    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", layout)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        isolated = trainer.compute_loss(model, dict(batch)).item()
        if layout == "rows":
            leaky_batch = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
        else:
            monkeypatch.setattr(
                segment_attention, "_bounds", lambda batch, kwargs: [[(0, kwargs["position_ids"].shape[-1])]] * batch
            )
            leaky_batch = dict(batch)
        leaky = trainer.compute_loss(model, leaky_batch).item()
    assert abs(isolated - leaky) > 1e-3


def test_packing_fills_bins_and_keeps_every_token(tiny_model_dir, chat_file, tmp_path):
    trainer, stats = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", max_length=128)
    packed_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    assert packed_tokens == stats["tokens"]
    assert all(len(ids) <= 128 for ids in trainer.train_dataset["input_ids"])
    assert stats["packs"] < stats["examples"]


def test_rows_layout_never_labels_an_example_start():
    """The first token of an example is not a target: it would be predicted from the previous example's end."""
    collate = PackRowsCollator(pad_token_id=0)
    batch = collate(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, 8, 9], "seq_lengths": [2, 3]},
            {"input_ids": [3, 4], "labels": [3, 4], "seq_lengths": [2]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 1, 2]]  # the pad tail is its own segment
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 4, -100, -100, -100]]
    assert "attention_mask" not in batch


def test_layout_follows_the_attention_backend(tiny_model_dir, chat_file, tmp_path):
    """Varlen flash kernels and per-example sdpa take trl's flattened batch; dense-mask backends one row per pack."""
    assert uses_flattened_packs("flash_attention_2") and uses_flattened_packs("flash_attention_3")
    assert not uses_flattened_packs("sdpa") and not uses_flattened_packs("eager")
    assert choose_layout("auto", "flash_attention_2", on_cuda=True) == "varlen"
    assert choose_layout("auto", "sdpa", on_cuda=False) == "segments"
    assert choose_layout("auto", "sdpa", on_cuda=True) == "rows"
    assert choose_layout("auto", "eager", on_cuda=False) == "segments"  # Gemma 2: per-example eager, soft-capped
    assert choose_layout("auto", "eager", on_cuda=True) == "rows"
    with pytest.raises(ValueError, match="runs on sdpa or eager"):
        choose_layout("segments", "flex_attention", on_cuda=False)
    rows, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", "rows")
    assert isinstance(rows.data_collator, PackRowsCollator)
    segments, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa")  # auto on CPU
    assert segments.model.config._attn_implementation == SDPA_PACKED
    assert not isinstance(segments.data_collator, PackRowsCollator)
    unpacked, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", packing=False, padding_free=False)
    assert not isinstance(unpacked.data_collator, PackRowsCollator)
    assert unpacked.model.config._attn_implementation == "sdpa"


def test_unknown_packed_attention_is_a_config_error(tiny_model_dir, chat_file, tmp_path):
    from align.core.errors import ConfigError

    with pytest.raises(ConfigError, match="packed_attention"):
        make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", "diagonal")
