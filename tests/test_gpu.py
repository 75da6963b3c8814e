"""The CUDA paths: packing isolation on GPU kernels, bf16 training, QLoRA (4- and 8-bit bases), flash-attention, the
judge on the GPU.

Skipped where CUDA is absent (CI never has a GPU); run on a GPU machine with `pytest tests/test_gpu.py`.
BENCHMARKS.md records the last GPU run of these tests.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from test_packing import make_trainer, pad_id, per_token_losses, split_packed

from align.models.chat import IGNORE_INDEX

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HAS_FLASH = importlib.util.find_spec("flash_attn") is not None
# (attention backend, packed_attention): auto is `rows` on CUDA sdpa; `segments` is the per-example sdpa backend.
BACKENDS = [
    ("sdpa", "auto"),
    ("sdpa", "segments"),
    ("eager", "auto"),
    pytest.param(
        "flash_attention_2", "auto", marks=pytest.mark.skipif(not HAS_FLASH, reason="flash-attn is not installed")
    ),
]


def packed_vs_alone(trainer, attention_mask=None) -> float:
    """Largest |logit| difference between each packed example and the same example run alone."""
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    extra = {} if attention_mask is None else {"attention_mask": attention_mask(batch)}
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra
        ).logits.float()
        worst = 0.0
        for row, start, input_ids, _ in split_packed(batch, pad_id(trainer)):
            alone = model(input_ids=input_ids[None], use_cache=False).logits[0].float()
            worst = max(worst, (packed[row, start : start + len(input_ids)] - alone).abs().max().item())
    return worst


@pytest.mark.parametrize("attention,layout", BACKENDS)
def test_packed_loss_equals_unpacked_on_cuda_fp32(tiny_model_dir, chat_file, tmp_path, attention, layout):
    if attention == "flash_attention_2":
        pytest.skip("flash-attention has no fp32 kernels; see the bf16 test")
    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, attention, layout, dtype="fp32", max_length=128)
    assert next(trainer.model.parameters()).is_cuda
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch
    model = trainer.model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for _, _, input_ids, labels in split_packed(batch, pad_id(trainer)):
            losses = per_token_losses(model, input_ids, labels)
            mask = labels[1:] != IGNORE_INDEX
            total += losses[mask].sum().item()
            count += int(mask.sum())
    assert packed == pytest.approx(total / count, abs=1e-4)


@pytest.mark.parametrize("attention,layout", BACKENDS)
def test_packed_logits_match_unpacked_in_bf16(tiny_model_dir, chat_file, tmp_path, attention, layout):
    """In bf16 kernels differ packed and alone, so compare against a leaky run: isolation must be far closer."""
    trainer, _ = make_trainer(tiny_model_dir, chat_file, tmp_path, attention, layout, dtype="bf16", max_length=128)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    isolated = packed_vs_alone(trainer)
    if attention == "flash_attention_2" or layout == "segments":  # no dense mask to make leaky: checked on rows
        assert isolated < 0.05
        return
    leaky = packed_vs_alone(trainer, attention_mask=lambda b: torch.ones_like(b["input_ids"]))
    assert isolated < 0.05 and leaky > 10 * isolated, (isolated, leaky)


def _sft(tiny_model_dir, chat_file, out, *extra):
    from align.cli import main

    return main(
        [
            "sft",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(chat_file),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--max_length",
            "256",
            "--per_device_train_batch_size",
            "2",
            "--learning_rate",
            "1e-3",
            "--save_strategy",
            "no",
            "--gradient_checkpointing",
            "false",
            "--logging_steps",
            "1",
            "--disable_tqdm",
            "true",
            *extra,
        ]
    )


def test_bf16_full_fine_tuning(tiny_model_dir, chat_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert _sft(tiny_model_dir, chat_file, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_loss"] == metrics["train_loss"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16


@pytest.mark.parametrize("bits", ["load_in_4bit", "load_in_8bit"])
def test_qlora_trains_an_adapter_on_a_quantised_base(tiny_model_dir, chat_file, tmp_path, bits):
    from align.models.loading import ModelArgs, load_model

    out = tmp_path / bits
    assert _sft(tiny_model_dir, chat_file, out, f"--{bits}", "true", "--lora", "true") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lora"] and metrics["steps"] == 3 and metrics["train_loss"] == metrics["train_loss"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8
    # The adapter loads back onto a quantised base and runs.
    model = load_model(ModelArgs(model=str(out), **{bits: True}))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]], device="cuda")).logits
    assert torch.isfinite(logits).all()


def test_auto_attention_prefers_flash_attention_when_installed():
    from align.models.loading import resolve_attention

    expected = "flash_attention_2" if HAS_FLASH else "sdpa"
    assert resolve_attention("auto", torch.bfloat16) == expected


def test_the_judge_model_is_placed_on_the_gpu(tiny_model_dir):
    from reward.judge import PairwiseJudge

    judge = PairwiseJudge(str(tiny_model_dir), max_new_tokens=4, explain=False, backend_name="transformers")
    backend, _ = judge.load()
    assert all(p.is_cuda for p in backend.model.parameters())
    judgements = judge.compare(["What is 2+2?"], ["Four."], ["Five."])
    assert len(judgements) == 1 and judgements[0].winner in ("a", "b", "tie")


def launch_sft(config_file: str, tiny_model_dir, chat_file, out, *extra: str):
    """recipes/sft.py under a shipped accelerate config, on every GPU of this machine, in fp32 (a tiny model)."""
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / config_file),
        "--num_processes",
        str(torch.cuda.device_count()),
        "--mixed_precision",
        "no",
        str(REPO / "recipes" / "sft.py"),
        "--config",
        str(REPO / "tests" / "data" / "tiny_sft.yaml"),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(chat_file),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--dtype",
        "fp32",
        "--disable_tqdm",
        "true",
        *extra,
    ]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_fsdp2_sft_saves_a_whole_model(tiny_model_dir, chat_file, tmp_path):
    from safetensors.torch import load_file

    metrics = launch_sft("recipes/accelerate/fsdp.yaml", tiny_model_dir, chat_file, tmp_path / "fsdp")
    assert metrics["engine"] == "FSDP2" and metrics["steps"] == 3
    base = {k: v for f in tiny_model_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    saved = {k: v for f in (tmp_path / "fsdp").glob("*.safetensors") for k, v in load_file(f).items()}
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.items()}  # gathered, not sharded
    assert any(not torch.equal(base[k], saved[k].to(base[k].dtype)) for k in base)


def test_fsdp2_lora_sft_saves_the_adapter_and_its_merge(tiny_model_dir, chat_file, tmp_path):
    from transformers import AutoModelForCausalLM

    metrics = launch_sft(
        "recipes/accelerate/fsdp.yaml",
        tiny_model_dir,
        chat_file,
        tmp_path / "lora",
        "--lora",
        "true",
        "--save_merged",
        "true",
    )
    assert metrics["engine"] == "FSDP2" and metrics["lora"]
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "merged")
    assert sum(p.numel() for p in merged.parameters()) > 0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_over_every_gpu_answers_like_one(tmp_path):
    """tensor_parallel_size: one engine over all GPUs gives the greedy answers of an engine on one."""
    from align.generation.generate import GenerationArgs, complete, load_backend
    from align.models.loading import ModelArgs

    prompts = [[{"role": "user", "content": q}] for q in ("Name a colour.", "Wie heißt die Hauptstadt von Japan?")]
    args = GenerationArgs(max_new_tokens=16, backend="vllm")
    answers = {}
    for tp in sorted({1, torch.cuda.device_count()}):
        backend, tokenizer = load_backend(ModelArgs(dtype="bf16"), "vllm", tensor_parallel_size=tp)
        answers[tp] = complete(backend, tokenizer, prompts, args, progress=False)
        del backend
    assert all(a and a[0] for a in answers[1])
    assert answers[1] == answers[max(answers)]
