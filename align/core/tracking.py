"""The trackers of `report_to` for the stages that do not train (arbitrage, online iterations, evaluation, merge):
the same switch, the same run names and the same places as transformers' integrations give the training stages, so
that every stage of a pipeline lands beside the others in the tracker.

    with Tracker(args.report_to, args.run_name, run.partial, is_main=state.is_main_process) as tracker:
        tracker.log({"arbitrage/all/teacher/share": 0.5}, step=0)
        tracker.images({"routing": run.partial / "routing.png"})

Where runs go, as for the training stages: TensorBoard's event files under `<output_dir>/runs/<time>_<host>` (or
$TENSORBOARD_LOGGING_DIR), written in the stage's partial directory and promoted with it; trackio's local store
($TRACKIO_DIR, default ~/.cache/huggingface/trackio) in project "huggingface" as transformers' `project` default;
wandb as $WANDB_MODE, $WANDB_PROJECT and $WANDB_DIR say; MLflow at $MLFLOW_TRACKING_URI in
$MLFLOW_EXPERIMENT_NAME. Credentials stay the trackers' own business: they read them from the environment.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError

# report_to's trackers and the package (and polyalign extra) each needs; they stay optional.
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
# transformers' TrainingArguments.project default: the training stages' trackio project, so every stage shares it.
TRACKIO_PROJECT = "huggingface"


@dataclass
class TrackingArgs:
    """The tracking keys of a stage that does not train (a training stage has trl's own `report_to`)."""

    report_to: Any = None  # trackers for this stage's figures: tensorboard, trackio, wandb, mlflow, all, or none
    run_name: str | None = None  # the tracker run's name (a pipeline names it <pipeline>/<stage>)

    def __post_init__(self):
        unknown = [n for n in requested(self.report_to) if n not in TRACKERS]
        if unknown:
            raise ConfigError(
                None, "report_to", f"unknown tracker {unknown[0]!r} (known: {', '.join(TRACKERS)}, all, none)"
            )
        check_trackers(self.report_to, None)
        getattr(super(), "__post_init__", lambda: None)()


def named(report_to) -> list[str]:
    """`report_to` as a list: one name or several."""
    return [report_to] if isinstance(report_to, str) else list(report_to or [])


def requested(report_to) -> list[str]:
    """The trackers `report_to` names: none/None → none, all → every installed one (as transformers reads it)."""
    names = named(report_to)
    if "none" in names:
        return []
    if "all" in names:
        return [n for n, package in TRACKERS.items() if importlib.util.find_spec(package) is not None]
    return names


def check_trackers(report_to, source: str | None, key: str = "report_to") -> None:
    """A tracker whose package is missing is one line naming the extra, not a traceback from inside the stage."""
    for name in named(report_to):
        package = TRACKERS.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(source, key, f"{name} is not installed: pip install 'polyalign[{name}]'")


def default_logdir() -> str:
    """transformers' `runs/<time>_<host>`, where its TensorBoard callback writes under a training stage's output."""
    return os.path.join("runs", time.strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname())


class Tracker:
    """One tracker run per requested tracker, open on the main process only (elsewhere, and without `report_to`,
    every call does nothing). Scalars are logged by step; images where the tracker takes them."""

    def __init__(self, report_to, run_name: str | None, output: str | os.PathLike, *, is_main: bool = True):
        names = [n for n in requested(report_to) if n in TRACKERS] if is_main else []
        self.step = 0
        self.runs = [_OPEN[n](run_name, Path(output)) for n in names]

    def log(self, scalars: dict[str, Any], step: int = 0) -> None:
        """The numbers of `scalars` (None and other values left out) at `step`."""
        numbers = {
            k: float(v)
            for k, v in scalars.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        self.step = max(self.step, step)
        for run in self.runs:
            if numbers:
                run.log(numbers, step)

    def images(self, paths: dict[str, str | os.PathLike]) -> None:
        """PNG charts, by name, at the last step logged (trackers without images are skipped)."""
        existing = {name: Path(p) for name, p in paths.items() if Path(p).is_file()}
        for run in self.runs:
            if existing:
                run.images(existing, self.step)

    def close(self) -> None:
        for run in self.runs:
            run.close()
        self.runs = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TensorBoard:
    def __init__(self, run_name: str | None, output: Path):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.getenv("TENSORBOARD_LOGGING_DIR")
        self.writer = SummaryWriter(log_dir=os.path.expanduser(log_dir) if log_dir else str(output / default_logdir()))
        if run_name:
            self.writer.add_text("run_name", run_name)

    def log(self, numbers: dict[str, float], step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def images(self, paths: dict[str, Path], step: int) -> None:
        from matplotlib.image import imread

        for name, path in paths.items():
            self.writer.add_image(name, imread(path)[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, run_name: str | None, output: Path):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=TRACKIO_PROJECT, name=run_name, resume="allow")

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def images(self, paths: dict[str, Path], step: int) -> None:
        self.run.log({name: self.trackio.Image(str(path)) for name, path in paths.items()}, step=step)

    def close(self) -> None:
        """trackio.init makes its run the process's current one (for trackio.log, and for the finish trackio runs
        again at exit); as transformers' callback does, trackio.finish() closes it and leaves none current."""
        if self.trackio.context_vars.current_run.get() is self.run:
            self.trackio.finish()
        else:  # another run has been made current since: it stays so
            self.run.finish()


class _Wandb:
    def __init__(self, run_name: str | None, output: Path):
        import wandb

        self.wandb = wandb
        # a run a training stage left current in this process is finished, not logged into
        self.run = wandb.init(
            project=os.getenv("WANDB_PROJECT", "huggingface"), name=run_name, reinit="finish_previous"
        )

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def images(self, paths: dict[str, Path], step: int) -> None:
        self.run.log({name: self.wandb.Image(str(path)) for name, path in paths.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """MLflow's metric names allow letters, digits and `_-. /:` only: anything else becomes `_`."""

    def __init__(self, run_name: str | None, output: Path):
        import mlflow

        self.mlflow = mlflow
        experiment = os.getenv("MLFLOW_EXPERIMENT_NAME")
        if experiment:
            mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({re.sub(r"[^\w\-. /:]", "_", k): v for k, v in numbers.items()}, step=step)

    def images(self, paths: dict[str, Path], step: int) -> None:
        for path in paths.values():
            self.mlflow.log_artifact(str(path), artifact_path="charts")

    def close(self) -> None:
        self.mlflow.end_run()


_OPEN = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb, "mlflow": _MLflow}


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """`{"a": {"b": 1}}` under `prefix` → `{"prefix/a/b": 1}`: a stage's nested figures as tracker names."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}/{key}", inner))
        return out
    return {prefix: value}
