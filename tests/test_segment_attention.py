"""The `per_example` backend: per-example attention on packed rows, and sdpa's exact behaviour everywhere else.

Isolation of packed examples through the SFT stage is proven in test_packing.py; here: gradients match the rows
layout, and a model left on `per_example` after training still generates exactly as sdpa does (padding, KV cache).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from align.data import load_records
from align.models import attention as segment_attention
from align.stages.sft import build_trainer, parse_sft_config


def load(tiny_model_dir, attention: str):
    segment_attention.register()
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention, dtype=torch.float32)


def test_segment_bounds_follow_position_restarts():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [5, 6, 7, 8, 0, 1, 2, 3]])
    assert segment_attention.segment_bounds(positions, 2) == [[(0, 3), (3, 5), (5, 6), (6, 8)], [(0, 4), (4, 8)]]


def trainer_for(tiny_model_dir, chat_file, tmp_path, layout):
    raw = {
        "model": str(tiny_model_dir),
        "dataset": str(chat_file),
        "output_dir": str(tmp_path / layout),
        "attn_implementation": "sdpa",
        "packed_attention": layout,
        "max_length": 128,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "seed": 0,
        "dtype": "fp32",
    }
    job = parse_sft_config(raw)
    trainer, _ = build_trainer(job, load_records(job.args.dataset, "sft"))
    return trainer


def test_gradients_equal_the_rows_layout(tiny_model_dir, chat_file, tmp_path):
    """Backward through the per-example calls gives the gradients of the (proven-isolated) block-diagonal mask."""
    grads = {}
    for layout in ("segments", "rows"):
        trainer = trainer_for(tiny_model_dir, chat_file, tmp_path, layout)
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model.train()
        model.zero_grad()
        trainer.compute_loss(model, dict(batch)).backward()
        grads[layout] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["segments"].keys() == grads["rows"].keys() and grads["rows"]
    for name, grad in grads["rows"].items():
        torch.testing.assert_close(grads["segments"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_padded_batches_and_cached_generation_match_sdpa(tiny_model_dir, tokenizer):
    """Left padding (a mask to honour) and decoding with a KV cache go through sdpa unchanged."""
    sdpa, packed = load(tiny_model_dir, "sdpa"), load(tiny_model_dir, segment_attention.NAME)
    assert packed.config._attn_implementation == segment_attention.NAME
    tokenizer.padding_side = "left"
    inputs = tokenizer(["Bonjour, comment allez-vous aujourd'hui ?", "Hallo"], return_tensors="pt", padding=True)
    assert (inputs["attention_mask"] == 0).any()
    with torch.no_grad():
        torch.testing.assert_close(packed(**inputs).logits, sdpa(**inputs).logits, atol=1e-5, rtol=1e-5)
        kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert packed.generate(**inputs, **kwargs).tolist() == sdpa.generate(**inputs, **kwargs).tolist()
        single = tokenizer(["Hallo"], return_tensors="pt")
        assert packed.generate(**single, **kwargs).tolist() == sdpa.generate(**single, **kwargs).tolist()


def test_checkpoints_do_not_record_the_backend(tiny_model_dir, tmp_path):
    """A model trained on `per_example` saves a config that loads anywhere (the backend is not serialised)."""
    load(tiny_model_dir, segment_attention.NAME).save_pretrained(tmp_path / "saved")
    assert segment_attention.NAME not in (tmp_path / "saved" / "config.json").read_text()


def test_windowed_layers_are_handled_and_other_layer_kinds_refused():
    from transformers import Gemma3TextConfig, MistralConfig, Qwen2Config

    assert segment_attention.supports(MistralConfig(sliding_window=4096))
    assert segment_attention.supports(Gemma3TextConfig())  # alternating sliding and full layers
    assert segment_attention.supports(Qwen2Config(use_sliding_window=False))
    assert not segment_attention.supports(
        Qwen2Config(layer_types=["linear_attention", "full_attention"], num_hidden_layers=2)
    )
    assert not segment_attention.full_causal(MistralConfig(sliding_window=4096))  # no packed KV cache to cut
    assert segment_attention.full_causal(MistralConfig(sliding_window=None))
