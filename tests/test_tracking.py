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


# ------------------------------------------------------------------------------------------------ a whole pipeline

PROMPTS = [
    ("Quelle est la capitale de la France ?", "fr"),
    ("Was ist zwei plus drei?", "de"),
    ("Explain why the sky is blue.", "en"),
    ("¿Cuánto es siete por ocho?", "es"),
    ("Wie heißt die Hauptstadt von Österreich?", "de"),
    ("Combien de jours compte une année ?", "fr"),
]
FAST = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 4}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tokenizer):
    """One tiny pipeline (arbitrage, one SFT cluster and its merge, one online iteration, the evaluation) reporting
    to TensorBoard and, where installed, trackio's local store."""
    from conftest import scaled_teacher, tiny_reward_model, write_jsonl

    from align.stages.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("tracked")
    base = scaled_teacher(root / "base", tokenizer, seed=1, scale=5)
    teacher = scaled_teacher(root / "teacher", tokenizer, seed=2, scale=5)
    judge = tiny_reward_model(root / "judge", tokenizer)
    prompts = write_jsonl(
        root / "prompts.jsonl",
        [{"prompt": p, "lang": lang, "id": f"p{i}", "reference": p} for i, (p, lang) in enumerate(PROMPTS)],
    )
    trackers = ["tensorboard"] + (["trackio"] if importlib.util.find_spec("trackio") else [])
    gen = {"max_new_tokens": 4, "batch_size": 8}
    raw = {
        "name": "tiny",
        "run_dir": str(root / "run"),
        "model": str(base),
        "prompts": str(prompts),
        "dtype": "fp32",
        "clusters": {"west": ["de"]},
        "ranker": {"reward_model": str(judge)},
        "report_to": trackers,
        "arbitrage": {
            "teachers": [{"name": "base", "model": str(base)}, {"name": "teacher", "model": str(teacher)}],
            "temperature": 1.0,
            **gen,
        },
        "sft": {"max_steps": 1, "max_length": 64, **FAST},
        "online": {
            "iterations": 1,
            "samples": 2,
            "temperature": 1.0,
            "heldout_fraction": 0.34,
            **gen,
            "dpo": {"max_steps": 1, **FAST},
        },
        "evaluate": {"judge": {"reward_model": str(judge)}, "resamples": 100, **gen},
    }
    with pytest.MonkeyPatch.context() as patch:
        store = root / "trackio"
        if "trackio" in trackers:  # imported before TRACKIO_DIR is set, so that its own default is what comes back
            _trackio_writes_to(store, patch)
        patch.setenv("TRACKIO_DIR", str(store))
        run_pipeline(raw)
    return root / "run", trackers


def _trackio_writes_to(store, patch) -> None:
    """trackio reads TRACKIO_DIR once, at import: point an imported trackio's modules at `store` too."""
    import sys

    import trackio  # noqa: F401

    for name, module in list(sys.modules.items()):
        if name.startswith("trackio"):
            for attr, value in (("TRACKIO_DIR", store), ("MEDIA_DIR", store / "media")):
                if hasattr(module, attr):
                    patch.setattr(module, attr, value)


def tensorboard(directory):
    """{tag: [(step, value)]} and the image tags of the event files right under `directory`/runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(directory.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {t: [(e.step, e.value) for e in accumulator.Scalars(t)] for t in tags["scalars"]}
    return scalars, set(tags["images"])


def expected(run) -> dict[str, dict[str, tuple[int, float]]]:
    """Per stage (tracker run name): tracker name → (step, the value in that stage's own records)."""
    routing = json.loads((run / "arbitrage" / "routing.json").read_text())
    arbitrage = json.loads((run / "arbitrage" / "metrics.json").read_text())
    iteration = json.loads((run / "dpo" / "online" / "iter_1" / "metrics.json").read_text())
    online = json.loads((run / "dpo" / "online" / "metrics.json").read_text())
    report = json.loads((run / "eval" / "metrics.json").read_text())
    pairs = iteration["pair_statistics"]
    teacher = routing["de"]["teachers"]["teacher"]
    return {
        "arbitrage": {
            "arbitrage/de/teacher/share": (0, teacher["share"]),
            "arbitrage/de/teacher/mean_score": (0, teacher["mean_score"]),
            "arbitrage/all/base/share": (0, routing["all"]["teachers"]["base"]["share"]),
            "arbitrage/teacher/tokens_per_second": (0, arbitrage["throughput"]["teacher"]["tokens_per_second"]),
            "arbitrage/pairs": (0, arbitrage["pairs"]),
        },
        "sft/merged": {"merge/west/weight": (0, 1.0), "merge/west/share": (0, 1.0), "merge/inputs": (0, 1)},
        "online": {
            "online/heldout_reward_mean": (0, online["start"]["heldout_reward_mean"]),
            "online/chosen_reward_mean": (1, pairs["chosen_mean_score"]),
            "online/rejected_reward_mean": (1, pairs["rejected_mean_score"]),
            "online/margin_mean": (1, pairs["mean_margin"]),
            "online/chosen_mean_words": (1, pairs["chosen_mean_words"]),
            "online/pairs": (1, iteration["pairs"]),
            "online/heldout_win_rate": (1, iteration["vs_previous"]["win_rate"]),
            "online/heldout_reward_mean/1": (1, iteration["heldout_reward_mean"]),
            "online/sampling_tokens_per_second": (1, iteration["sampling_throughput"]["tokens_per_second"]),
        },
        "evaluate": {
            "eval/online-1/win_rate_vs_baseline/de": (0, report["models"]["online-1"]["vs_baseline"]["de"]["win_rate"]),
            "eval/sft/win_rate_vs_baseline/all/low": (0, report["models"]["sft"]["vs_baseline"]["all"]["interval"][0]),
            "eval/sft/language_fidelity/fr": (0, report["language_fidelity"]["sft"]["fr"]["pass_rate"]),
            "eval/base/chrf/all": (0, report["models"]["base"]["chrf++"]["all"]["score"]),
            "eval/echo/echo_free_chrf/all/high": (
                0,
                report["models"]["echo"]["echo_free_chrf++"]["all"]["interval"][1],
            ),
            "eval/sft/tokens_per_second": (0, report["throughput"]["sft"]["tokens_per_second"]),
        },
    }


OUTPUT = {"arbitrage": "arbitrage", "sft/merged": "sft/merged", "online": "dpo/online", "evaluate": "eval"}


def test_every_stage_of_a_pipeline_reports_its_figures_to_tensorboard(tracked_run):
    run, _ = tracked_run
    for stage, figures in expected(run).items():
        scalars, images = tensorboard(run / OUTPUT[stage])
        for tag, (step, value) in figures.items():
            tag = tag.removesuffix("/1")
            assert tag in scalars, (stage, tag, sorted(scalars))
            assert dict(scalars[tag])[step] == pytest.approx(value, rel=1e-5), (stage, tag)
        if stage == "evaluate":  # the report's charts
            assert {"eval/scores_by_stage", "eval/winrate_by_stage", "eval/fidelity_by_language"} <= images
    # the training stages report through trl, into their own outputs
    assert "train/loss" in tensorboard(run / "sft" / "west")[0]
    assert "train/loss" in tensorboard(run / "dpo" / "online" / "iter_1" / "model")[0]


def test_every_stage_of_a_pipeline_reports_its_figures_to_trackio(tracked_run):
    run, trackers = tracked_run
    if "trackio" not in trackers:
        pytest.skip("trackio is not installed")
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    from align.core.tracking import TRACKIO_PROJECT

    # every stage's run closed as trl closes its own: none left current in the process, for trackio.log or the
    # finish trackio repeats at exit
    assert trackio.context_vars.current_run.get() is None

    store = run.parent / "trackio"
    assert (store / f"{TRACKIO_PROJECT}.db").is_file()
    with pytest.MonkeyPatch.context() as patch:
        _trackio_writes_to(store, patch)
        for stage, figures in expected(run).items():
            logs = SQLiteStorage.get_logs(TRACKIO_PROJECT, f"tiny/{stage}")
            assert logs, stage
            for tag, (step, value) in figures.items():
                tag = tag.removesuffix("/1")
                logged = [row[tag] for row in logs if row["step"] == step and tag in row]
                assert logged == [pytest.approx(value, rel=1e-5)], (stage, tag, logs)
            if stage == "evaluate":
                assert any(row.get("eval/winrate_by_stage", {}).get("_type") == "trackio.image" for row in logs)
        assert SQLiteStorage.get_logs(TRACKIO_PROJECT, "tiny/sft/west")  # trl's run, beside them


# ------------------------------------------------------------------------------------------------ wandb, MLflow


def soup_tracked(tokenizer, tmp_path, tracker: str) -> None:
    """A merge of two tiny models (weights 3 and 1), reported to `tracker`: the quickest stage to log."""
    from conftest import build_tiny_llama

    from merge import soup

    a, b = (build_tiny_llama(tmp_path / name, tokenizer, seed=seed) for name, seed in (("a", 0), ("b", 1)))
    soup([(a, 3.0), (b, 1.0)], tmp_path / "merged", progress=False, report_to=[tracker], run_name="tiny/merge")


SOUP = {"merge/inputs": 2, "merge/a/weight": 3, "merge/b/weight": 1, "merge/a/share": 0.75, "merge/b/share": 0.25}


def test_wandb_offline_gets_a_merge_through_the_same_switch(tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    soup_tracked(tokenizer, tmp_path, "wandb")
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(path)
    assert [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"] == ["tiny/merge"]
    (logged,) = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert {k: logged.get(k) for k in SOUP} == SOUP


def wandb_records(path) -> list:
    """The records of an offline run's .wandb file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    records framed by checksum, length and type: full, first, middle, last), each a wandb Record protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a frame is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4) and pending:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_mlflow_file_store_gets_a_merge_through_the_same_switch(tokenizer, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "polyalign-tests")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store without a database (mlflow-skinny)
    soup_tracked(tokenizer, tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("polyalign-tests").experiment_id])
    assert run.info.run_name == "tiny/merge" and run.info.status == "FINISHED"
    assert {k: run.data.metrics.get(k) for k in SOUP} == SOUP
