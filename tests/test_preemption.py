"""Preemption as clusters do it: SIGTERM (or SIGUSR1, `#SBATCH --signal`) during training saves a checkpoint at the
next step boundary and exits non-zero with one line; during generation every answered prompt is on disk. The same
command then finishes with what an uninterrupted run gives."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env, write_jsonl

pytestmark = pytest.mark.slow


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "align.cli", *argv],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(argv: list[str]) -> subprocess.CompletedProcess:
    """The same command run to its end (the rerun after a preemption)."""
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *argv],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float = 300) -> tuple[int, str]:
    """Send `signum` once `ready()` holds; (exit code, stderr)."""
    deadline = time.time() + timeout
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the command ended before the signal: " + process.stderr.read()[-2000:]
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    return process.returncode, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_during_training_saves_a_checkpoint_and_the_rerun_resumes(tiny_model_dir, chat_file, tmp_path, signum):
    out, partial = tmp_path / "sft", tmp_path / ".sft.partial"
    argv = [
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
        "60",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--dtype",
        "fp32",
    ]
    process = start(argv)
    logged = []

    def training():  # the first logged loss: training has begun
        line = process.stdout.readline()
        logged.append(line)
        return "'loss'" in line

    code, err = signal_when(process, training, signum)
    lines = [line for line in err.splitlines() if line.startswith("polyalign sft:")]
    assert code == 128 + signum and len(lines) == 1, err[-2000:]
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"polyalign sft: preempted by {name}: checkpoint-") and "resumes from it" in lines[0]
    step = int(lines[0].split("checkpoint-")[1].split(" ")[0])
    assert 0 < step < 60 and (partial / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert not out.exists()

    resumed = finish(argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"checkpoint-{step}" in resumed.stdout and "resuming from" in resumed.stdout.lower()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["resumed_from"] == f"checkpoint-{step}"
    assert metrics["train_loss"] is not None  # the checkpoint's log covers every step before it


def test_a_signal_during_generation_keeps_every_answer_and_the_rerun_finishes(tiny_model_dir, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}: Wie spät ist es?", "id": f"q{i}"} for i in range(200)]
    )
    argv = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "fp32",
        "--max_new_tokens",
        "4",
        "--batch_size",
        "1",
        "--prompts",
        str(prompts),
    ]
    process = start([*argv, "--output", str(tmp_path / "answers.jsonl")])

    def logs() -> list[Path]:
        return list(tmp_path.glob(".answers.jsonl.*"))

    code, err = signal_when(process, lambda: any(log.stat().st_size > 0 for log in logs()), signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert (
        err.count("polyalign generate: ") == 1
        and (
            "polyalign generate: preempted by SIGTERM: stopped; every "
            "record written so far is kept, and the same command continues "
            "from it\n"
        )
        in err
    ), err[-2000:]
    [log] = logs()
    kept = log.read_text()
    assert kept.endswith("\n") and 0 < len(kept.splitlines()) < 200
    assert not (tmp_path / "answers.jsonl").exists()

    resumed = finish([*argv, "--output", str(tmp_path / "answers.jsonl")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = finish([*argv, "--output", str(tmp_path / "whole.jsonl")])
    assert whole.returncode == 0
    assert (tmp_path / "answers.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()


DRIVER = """
import sys
from align.core import preemption
from align.stages.launch import launch_flags, run_launched
from align.core.config import load_yaml
cfg, run_dir = load_yaml(sys.argv[1]), sys.argv[2]
with preemption.handlers():
    try:
        run_launched("sft", "sft", cfg, launch_flags({"num_processes": 2}, None, "launch"), __import__("pathlib").Path(run_dir))
    except preemption.Preempted as e:
        print(f"polyalign run: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
"""


def still_running(marker: str) -> list[int]:
    """Processes (not zombies) whose command line holds `marker`."""
    import psutil

    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
    return found


def test_a_signal_to_the_pipeline_reaches_a_stage_launched_on_two_processes(tiny_model_dir, chat_file, tmp_path):
    """`polyalign run` drives a launched stage as run_launched does here: the signal it gets goes on to accelerate
    launch and both workers; they agree on a step, save one checkpoint and stop; the driver waits for them, then
    exits 128 + the signal with one line; the rerun resumes from that checkpoint."""
    out, partial = tmp_path / "sft", tmp_path / ".sft.partial"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model": str(tiny_model_dir),
                "dataset": str(chat_file),
                "output_dir": str(out),
                "max_length": 128,
                "per_device_train_batch_size": 1,
                "max_steps": 80,
                "logging_steps": 1,
                "disable_tqdm": True,
                "dtype": "fp32",
                "save_strategy": "no",
                "gradient_checkpointing": False,
            }
        )
    )
    argv = [sys.executable, "-u", "-c", DRIVER, str(cfg), str(tmp_path / "run")]
    process = subprocess.Popen(
        argv, env=subprocess_env(cpu=True), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    code, err = signal_when(process, lambda: "'loss'" in process.stdout.readline(), signal.SIGUSR1)
    lines = [line for line in err.splitlines() if line.startswith("polyalign run:")]
    assert code == 128 + signal.SIGUSR1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("polyalign run: preempted by SIGUSR1: stage sft was passed the signal"), lines[0]
    log = (tmp_path / "run" / "logs" / "sft.log").read_text()
    saved = [line for line in log.splitlines() if "preempted by SIGUSR1: checkpoint-" in line]
    assert len(saved) in (1, 2) and len(set(saved)) == 1, log[-3000:]  # each process says it: the same checkpoint
    step = int(saved[0].split("checkpoint-")[1].split(" ")[0])
    assert 0 < step < 80 and (partial / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert not out.exists() and still_running(str(tmp_path)) == []

    resumed = subprocess.run(argv, env=subprocess_env(cpu=True), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{step}" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == f"checkpoint-{step}"
