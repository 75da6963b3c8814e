"""The SFT stage end to end: the embedded default, LoRA, two processes, a kill and a resume, refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.cli import main

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--logging_steps", "1", "--disable_tqdm", "true"]


def run_cli(*args: str) -> int:
    return main(["sft", *args])


def greedy(model_dir: Path, prompt: str, tokens: int = 12) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_embedded_default_trains_loads_and_generates(chat_file, tmp_path):
    out = tmp_path / "sft"
    assert (
        run_cli(
            "--dataset",
            str(chat_file),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--max_length",
            "256",
            "--learning_rate",
            "1e-5",
            *QUIET,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["examples"] == 6 and metrics["trained_tokens"] > 0
    assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
    assert set(metrics["examples_per_language"]) == {"fr", "de", "hi", "en", "ja", "es"}
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    assert not list(out.glob("checkpoint-*")) and not (out / "training_args.bin").exists()
    assert not (tmp_path / ".sft.partial").exists()
    text = greedy(out, "What is the capital of France?")
    assert len(text.strip()) > 0


def test_lora_targets_that_match_nothing_are_one_line_listing_the_layers(tiny_model_dir, chat_file, tmp_path, capsys):
    assert (
        run_cli(
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(chat_file),
            "--output_dir",
            str(tmp_path / "o"),
            "--lora",
            "true",
            "--lora.target_modules",
            "[q_proj, qkv_proj]",
            "--max_steps",
            "1",
            *QUIET,
        )
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert (
        len(err) == 1
        and "'lora.target_modules': qkv_proj: no such linear layer in llama; its linear layers: "
        "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
        in err[0]
    ), err
    assert not (tmp_path / "o").exists()


def test_lora_adapter_and_merged_model(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "lora"
    assert (
        run_cli(
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(chat_file),
            "--output_dir",
            str(out),
            "--lora",
            "true",
            "--save_merged",
            "true",
            "--max_steps",
            "2",
            "--learning_rate",
            "1e-2",
            "--dtype",
            "fp32",
            "--gradient_checkpointing",
            "false",
            *QUIET,
        )
        == 0
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["lora_dropout"] == 0.05
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}  # peft's default for Llama
    assert (out / "adapter_model.safetensors").exists()
    # The merged model differs from the base only where LoRA reached.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").state_dict()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(any(m in k for m in ("q_proj", "v_proj")) for k in changed)
    # polyalign loads an adapter directory through its base.
    from align.models.loading import ModelArgs, load_model

    adapted = load_model(ModelArgs(model=str(out), dtype="fp32"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(ids).logits, AutoModelForCausalLM.from_pretrained(out / "merged")(ids).logits, atol=1e-4, rtol=1e-4
        )


def test_existing_output_dir_is_refused(tiny_model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run_cli("--model", str(tiny_model_dir), "--dataset", str(chat_file), "--output_dir", str(out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_result_shape(tiny_model_dir, chat_file, tmp_path):
    common = [
        "--config",
        str(REPO / "tests" / "data" / "tiny_sft.yaml"),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(chat_file),
        "--max_steps",
        "3",
        *QUIET,
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    assert run_cli(*common, "--output_dir", str(single)) == 0
    # accelerate's --cpu flag starts several processes only through mpirun; its torchrun launcher (--multi_gpu)
    # with no GPU present gives the gloo CPU group that polyalign selects when CUDA is absent.
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "recipes" / "sft.py"),
        *common,
        "--output_dir",
        str(double),
    ]
    result = subprocess.run(launch, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["steps"] == 3
    a = AutoModelForCausalLM.from_pretrained(single).state_dict()
    b = AutoModelForCausalLM.from_pretrained(double).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert all(torch.isfinite(v).all() for v in b.values())


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "resumable"
    partial = tmp_path / ".resumable.partial"
    cmd = [
        sys.executable,
        "-m",
        "align.cli",
        "sft",
        "--config",
        str(REPO / "tests" / "data" / "tiny_sft.yaml"),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(chat_file),
        "--output_dir",
        str(out),
        "--max_steps",
        "12",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_total_limit",
        "3",
        *QUIET,
    ]
    process = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and not (partial / "checkpoint-4" / "trainer_state.json").exists()
        and process.poll() is None
    ):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # nothing half-written where the user looks
    checkpoints = sorted(int(p.name.split("-")[1]) for p in partial.glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] < 12

    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Resuming from" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert not partial.exists()

    # As an uninterrupted run reports it: the loss and token counts of the whole training, timings of this process.
    whole = tmp_path / "whole"
    result = subprocess.run(
        [*cmd[: cmd.index("--output_dir") + 1], str(whole), *cmd[cmd.index("--output_dir") + 2 :]],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    uninterrupted = json.loads((whole / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(uninterrupted["train_loss"], abs=1e-5)
    assert metrics["tokens_seen"] == uninterrupted["tokens_seen"] and metrics["epochs"] == uninterrupted["epochs"]
    assert (
        metrics["timed_steps"] == 12 - int(metrics["resumed_from"].split("-")[1]) and uninterrupted["timed_steps"] == 12
    )


def test_packed_attention_errors_name_the_recipe(tiny_model_dir, chat_file, tmp_path):
    from align.core.errors import ConfigError
    from align.data import load_records
    from align.stages.sft import build_trainer, parse_sft_config

    raw = {
        "model": str(tiny_model_dir),
        "dataset": str(chat_file),
        "output_dir": str(tmp_path / "out"),
        "dtype": "fp32",
        "attn_implementation": "eager",
        "packed_attention": "segments",
    }
    with pytest.raises(ConfigError) as info:
        parse_sft_config({**raw, "packed_attention": "diagonal"}, "r.yaml")
    assert str(info.value) == "r.yaml: 'packed_attention': expected one of auto, segments, rows, got 'diagonal'"
    job = parse_sft_config(raw, "r.yaml")  # eager (Gemma 2's only backend) packs per example too
    trainer, stats = build_trainer(job, load_records(job.args.dataset, "sft"))
    assert stats["packed_attention"] == "segments" and trainer.model.config._attn_implementation == "per_example"


def test_with_an_eval_set_the_output_is_the_checkpoint_with_the_lowest_held_out_loss(
    tiny_model_dir, chat_file, tmp_path
):
    from conftest import CHATS, write_jsonl
    from safetensors.torch import load_file

    # Held out: the training prompts with other answers, so that fitting the training answers soon costs held-out loss.
    held = write_jsonl(
        tmp_path / "held.jsonl",
        [
            {**chat, "messages": [*chat["messages"][:-1], {"role": "assistant", "content": "Je ne sais pas, désolé."}]}
            for chat in CHATS
        ],
    )
    out = tmp_path / "sft"
    assert (
        run_cli(
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(chat_file),
            "--eval_dataset",
            str(held),
            "--output_dir",
            str(out),
            "--max_steps",
            "12",
            "--save_steps",
            "2",
            "--learning_rate",
            "3e-2",
            "--per_device_train_batch_size",
            "2",
            "--dtype",
            "fp32",
            "--keep_checkpoints",
            "true",
            *QUIET,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["eval_loss_history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12] and metrics["eval_examples"] == len(CHATS)
    best = min(history, key=lambda h: h["eval_loss"])
    assert metrics["best_step"] == best["step"] != 12 and metrics["kept_best"]
    kept = load_file(out / "model.safetensors")
    for step, same in ((best["step"], True), (12, False)):
        saved = load_file(out / f"checkpoint-{step}" / "model.safetensors")
        assert all(torch.equal(kept[k], saved[k]) for k in kept) == same


def test_eval_fraction_holds_records_out_of_training(tiny_model_dir, chat_file, tmp_path):
    from align.stages.sft import SFTStage, parse_sft_config

    job = parse_sft_config(
        {
            "model": str(tiny_model_dir),
            "dataset": str(chat_file),
            "output_dir": str(tmp_path / "o"),
            "eval_fraction": 0.3,
            "save_steps": 4,
        },
        "r.yaml",
    )
    assert (job.training.eval_strategy, job.training.eval_steps, job.training.load_best_model_at_end) == (
        "steps",
        4,
        True,
    )
    stage = SFTStage(job)
    stage.load()
    train_ids, held_ids = {r["id"] for r in stage.records}, {r["id"] for r in stage.eval_records}
    assert held_ids and train_ids and not train_ids & held_ids and len(train_ids | held_ids) == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"eval_strategy": "steps"}, "'eval_strategy': needs held-out records: add eval_dataset or eval_fraction"),
        ({"eval_fraction": 1.0}, "'eval_fraction': must be in (0, 1), got 1.0"),
        (
            {"eval_fraction": 0.1, "eval_dataset": "x.jsonl"},
            "'eval_fraction': give eval_dataset or eval_fraction, not both",
        ),
    ],
)
def test_eval_keys_are_checked_with_the_recipe(tiny_model_dir, chat_file, tmp_path, extra, message):
    from align.core.errors import ConfigError
    from align.stages.sft import parse_sft_config

    with pytest.raises(ConfigError) as info:
        parse_sft_config(
            {"model": str(tiny_model_dir), "dataset": str(chat_file), "output_dir": str(tmp_path / "o"), **extra},
            "r.yaml",
        )
    assert str(info.value) == f"r.yaml: {message}"
