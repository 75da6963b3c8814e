"""The training engines of accelerate on 2 CPU processes (gloo): DDP and DeepSpeed ZeRO-3 train the same model.

ZeRO-3 partitions parameters, gradients and optimizer state across the processes; with the same data order and fp32
it must reach the weights DDP reaches. It runs from the shipped recipes/accelerate/deepspeed_zero3.yaml, with the
precision and process count overridden on the command line. FSDP is not here: accelerate applies an FSDP config only
on accelerators (on CPUs it trains with DDP, and polyalign says so); tests/test_gpu.py covers it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env
from test_dpo import PAIRS
from test_sft_stage import QUIET

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"),
]

ZERO3 = REPO / "recipes" / "accelerate" / "deepspeed_zero3.yaml"


def launch(engine: str, recipe: str, *args: str) -> None:
    flags = {"ddp": ["--multi_gpu"], "zero3": ["--config_file", str(ZERO3)]}[engine]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *flags,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "recipes" / recipe),
        *args,
    ]
    result = subprocess.run(command, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=2e-5, rtol=1e-4, msg=name)


def test_zero3_full_sft_reaches_the_ddp_weights(tiny_model_dir, chat_file, tmp_path):
    common = [
        "--config",
        str(REPO / "tests" / "data" / "tiny_sft.yaml"),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(chat_file),
        "--max_steps",
        "3",
        "--dtype",
        "fp32",
        *QUIET,
    ]
    for engine in ("ddp", "zero3"):
        launch(engine, "sft.py", *common, "--output_dir", str(tmp_path / engine))
    engines = {e: json.loads((tmp_path / e / "metrics.json").read_text())["engine"] for e in ("ddp", "zero3")}
    assert engines == {"ddp": "DDP", "zero3": "DeepSpeed ZeRO-3"}
    base = weights(tiny_model_dir)
    trained = weights(tmp_path / "zero3")
    assert any(not torch.equal(base[k], trained[k]) for k in base)  # the partitioned optimizer did step
    assert_same_weights(tmp_path / "ddp", tmp_path / "zero3")


def test_zero3_lora_dpo_saves_the_ddp_adapter_and_its_merge(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "lang": lang}) + "\n" for p, c, r, lang in PAIRS)
    )
    common = [
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(pairs),
        "--max_steps",
        "2",
        "--learning_rate",
        "5e-3",
        "--per_device_train_batch_size",
        "2",
        "--dtype",
        "fp32",
        "--lora.r",
        "4",
        "--save_merged",
        "true",
        *QUIET,
    ]
    for engine in ("ddp", "zero3"):
        launch(engine, "dpo.py", *common, "--output_dir", str(tmp_path / engine))
    metrics = {e: json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("ddp", "zero3")}
    assert metrics["zero3"]["engine"] == "DeepSpeed ZeRO-3"
    for m in metrics.values():  # packed by default, the share of real tokens gathered over both processes
        assert m["padding_free"] == "packed (per_example)" and m["real_token_fraction"] == 1.0, m
    assert_same_weights(tmp_path / "ddp", tmp_path / "zero3")  # the adapters
    # Under ZeRO-3 the merge is made from the saved adapter, not from partitioned parameters: the same model.
    assert_same_weights(tmp_path / "ddp" / "merged", tmp_path / "zero3" / "merged")
    assert any(
        not torch.equal(weights(tiny_model_dir)[k], v) for k, v in weights(tmp_path / "zero3" / "merged").items()
    )
