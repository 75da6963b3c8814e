"""Tracking through trl's `report_to`: TensorBoard's event files are written by a training stage and read back
(the losses the trainer logged); a tracker that is not installed is one line naming its extra."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO

from align.cli import main

RECIPE = str(REPO / "tests" / "data" / "tiny_sft.yaml")


def sft(tiny_model_dir, chat_file, out, *extra: str) -> int:
    return main(
        [
            "sft",
            "--config",
            RECIPE,
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(chat_file),
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--logging_steps",
            "1",
            "--dtype",
            "fp32",
            *extra,
        ]
    )


def test_tensorboard_gets_every_logged_loss(tiny_model_dir, chat_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sft"
    assert sft(tiny_model_dir, chat_file, out, "--report_to", "tensorboard", "--run_name", "tiny/sft") == 0
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out) for p in out.rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(sum(v for _, v in losses) / 4, rel=1e-3)


@pytest.mark.parametrize("tracker", [t for t in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(t) is None])
def test_a_tracker_not_installed_is_one_line_naming_its_extra(tiny_model_dir, chat_file, tmp_path, capsys, tracker):
    assert sft(tiny_model_dir, chat_file, tmp_path / "sft", "--report_to", tracker) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"polyalign sft: error: command line: 'report_to': {tracker} is not installed: "
        f"pip install 'polyalign[{tracker}]'"
    )
    assert not (tmp_path / "sft").exists()
