"""Packing must never let one example attend to another.

The loss of a packed batch, computed by the SFT stage's own trainer on the batch its own dataloader yields, must
equal what the same examples give one at a time. A negative control shows the comparison is sharp enough to
catch cross-example attention.
"""

from __future__ import annotations

import pytest
import torch

from align.chat import IGNORE_INDEX
from align.data import load_records
from align.sft import build_trainer, parse_sft_config


def make_trainer(tiny_model_dir, chat_file, tmp_path, attention: str, **overrides):
    raw = {"model": str(tiny_model_dir), "dataset": str(chat_file), "output_dir": str(tmp_path / "out"),
           "attn_implementation": attention, "max_length": 256, "per_device_train_batch_size": 4,
           "gradient_checkpointing": False, "save_strategy": "no", "seed": 0, **overrides}
    job = parse_sft_config(raw)
    return build_trainer(job, load_records(job.args.dataset, "sft"))


def split_packed(batch):
    """Recover the examples of a padding-free batch from its restarting position ids."""
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    return [(batch["input_ids"][0, a:b], batch["labels"][0, a:b]) for a, b in zip(starts, starts[1:])]


def per_token_losses(model, input_ids, labels, **extra):
    logits = model(input_ids=input_ids[None], use_cache=False, **extra).logits[0].float()
    shift_logits, shift_labels = logits[:-1], labels[1:]
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_losses(tiny_model_dir, chat_file, tmp_path, attention):
    trainer, stats = make_trainer(tiny_model_dir, chat_file, tmp_path, attention)
    assert trainer.model.config._attn_implementation == attention
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch  # a mask would make transformers ignore the restarting positions
    examples = split_packed(batch)
    assert len(examples) >= 3  # several examples really share the row

    model = trainer.model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for input_ids, labels in examples:
            losses = per_token_losses(model, input_ids, labels)
            mask = labels[1:] != IGNORE_INDEX
            total += losses[mask].sum().item()
            count += int(mask.sum())
    assert count > 0
    assert packed == pytest.approx(total / count, abs=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked_logits(tiny_model_dir, chat_file, tmp_path, attention):
    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, attention)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for input_ids, _ in split_packed(batch):
            alone = model(input_ids=input_ids[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[offset: offset + len(input_ids)], alone, atol=1e-5, rtol=1e-5)
            offset += len(input_ids)


def test_negative_control_cross_attention_is_detected(tiny_model_dir, chat_file, tmp_path):
    """With an all-ones attention mask the examples do attend to each other, and the losses visibly differ."""
    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa")
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        isolated = trainer.compute_loss(model, dict(batch)).item()
        leaky = trainer.compute_loss(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}).item()
    assert abs(isolated - leaky) > 1e-3


def test_packing_fills_bins_and_keeps_every_token(tiny_model_dir, chat_file, tmp_path):
    trainer, stats = make_trainer(tiny_model_dir, chat_file, tmp_path, "sdpa", max_length=128)
    packed_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    assert packed_tokens == stats["tokens"]
    assert all(len(ids) <= 128 for ids in trainer.train_dataset["input_ids"])
    assert stats["packs"] < stats["examples"]
