"""The tiny pipeline killed with SIGKILL at random moments, several times, then run to the end, gives what an
uninterrupted run gives: generation records byte for byte, weights within 1e-6, metrics equal but for wall times.

The kill times are drawn from POLYALIGN_KILL_SEED (default 0) over the uninterrupted run's duration: set it to try
other moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, subprocess_env
from safetensors.torch import load_file
from test_pipeline import models, recipe  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.slow
KILLS = 3
TIMING = ("seconds", "runtime", "per_second", "elapsed", "wall", "timed_", "throughput")


def run(recipe_path: Path, kill_after: float | None = None) -> int | None:
    """`polyalign run` in its own process group; SIGKILL to the whole group after `kill_after` seconds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "run", str(recipe_path)],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        process.wait(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None
    assert process.returncode == 0, process.stderr.read()[-3000:]
    return process.returncode


def files(run_dir: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(run_dir)): p
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)
    }


def without_timings(value, run_dir: str):
    """A metrics value with wall-time fields dropped and this run's directory written as RUN."""
    if isinstance(value, dict):
        return {k: without_timings(v, run_dir) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timings(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "RUN")
    return value


def test_random_sigkills_then_a_finished_run_equal_an_uninterrupted_one(tmp_path, models):  # noqa: F811
    paths = {}
    for name in ("whole", "killed"):
        raw = recipe(tmp_path / name, models)
        raw["evaluate"] = {k: v for k, v in raw["evaluate"].items() if k != "judge"}  # no pairwise judge: faster
        paths[name] = tmp_path / f"{name}.yaml"
        (tmp_path / name).mkdir(exist_ok=True)
        paths[name].write_text(yaml.safe_dump(raw))
    began = time.time()
    run(paths["whole"])
    duration = time.time() - began

    # Each attempt is killed a random share of the uninterrupted run's duration after it starts; an attempt that
    # resumes may finish sooner (what is done is skipped), which ends the killing.
    rng = random.Random(int(os.environ.get("POLYALIGN_KILL_SEED", "0")))
    moments = []  # (seconds into the attempt, stages done when killed)
    for _ in range(KILLS):
        moment = rng.uniform(0.15, 0.6) * duration
        if run(paths["killed"], kill_after=moment) is not None:
            break
        state = tmp_path / "killed" / "run" / "state.json"
        moments.append(
            f"{moment:.1f}s ({len(json.loads(state.read_text())['stages']) if state.exists() else 0} stages done)"
        )
    assert len(moments) >= 2, f"fewer than two kills landed: {moments}"
    run(paths["killed"])

    whole_dir, killed_dir = tmp_path / "whole" / "run", tmp_path / "killed" / "run"
    whole, killed = files(whole_dir), files(killed_dir)
    assert whole.keys() == killed.keys(), f"kills at {moments}: {whole.keys() ^ killed.keys()}"
    for name, path in whole.items():
        other = killed[name]
        if name.endswith(".safetensors"):
            a, b = load_file(path), load_file(other)
            assert a.keys() == b.keys(), name
            for key in a:
                torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=f"{name}:{key} (kills at {moments})")
        elif name.endswith(".jsonl"):
            assert other.read_bytes() == path.read_bytes(), f"{name} (kills at {moments})"
        elif name.endswith("metrics.json"):
            assert without_timings(json.loads(other.read_text()), str(killed_dir)) == without_timings(
                json.loads(path.read_text()), str(whole_dir)
            ), f"{name} (kills at {moments})"
