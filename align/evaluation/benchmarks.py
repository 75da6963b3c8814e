"""Benchmarks through lm-evaluation-harness: its task definitions, its prompts and its metrics, so that a number here
means what the same number means in any paper that ran lm-eval.

A benchmark is an lm-eval task name (a group such as `xcopa` runs its per-language subtasks) or the path of a task YAML
file or folder. Tasks are resolved, datasets included, before any model is loaded: an unknown name or a dataset that
is not available offline is one line naming the task. Results are `{task: {metric: value}}` with lm-eval's metric
names (`acc`, `acc_norm`, `acc_stderr`; a filter other than lm-eval's default `none` is appended, as in
`exact_match_flexible-extract`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError
from align.generation.generate import choose_backend
from align.models.loading import ModelArgs, adapter_base, cuda_available, model_path, resolve_dtype

log = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "hf", "vllm")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class BenchmarkArgs:
    """The `benchmarks` keys of a stage: which tasks, and how much of each to run."""

    tasks: list[str] = field(default_factory=list)
    limit: int | None = None  # documents per task (lm-eval's --limit); None: all
    num_fewshot: int | None = None  # None: each task's own default
    batch_size: int = 8
    backend: str = "auto"  # auto: vLLM when installed and CUDA is present, else transformers ("hf")

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if self.backend not in BACKENDS:
            raise ConfigError(
                None, "backend", f"unknown benchmark backend {self.backend!r} (expected {', '.join(BACKENDS)})"
            )
        for key in ("limit", "batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(None, key, f"must be at least 1, got {getattr(self, key)}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(None, "num_fewshot", f"must be at least 0, got {self.num_fewshot}")


@dataclass
class ResolvedTasks:
    """Tasks built once (datasets loaded), reusable for every model: lm-eval rebuilds their requests on each run."""

    manager: Any  # lm_eval.tasks.TaskManager
    names: list[str]
    objects: list  # lm-eval Task and Group objects, in the order of `names`


def resolve_tasks(tasks: list[str], source: str | None = None) -> ResolvedTasks:
    """Build every task, so that a bad name or a missing dataset is refused before any model runs."""
    manager, names = index_tasks(tasks, source)
    objects = [obj for name in names for obj in _build(manager, name, source)]
    try:
        manager.load(objects)  # lm-eval refuses a task listed twice (`xcopa` and `xcopa_it`): say so now
    except ValueError as e:
        raise ConfigError(source, "benchmarks", _first_line(e)) from None
    return ResolvedTasks(manager, names, objects)


def index_tasks(tasks: list[str], source: str | None = None) -> tuple[Any, list[str]]:
    """(lm-eval TaskManager, task names): every entry checked to name a task lm-eval knows, no dataset loaded."""
    if not tasks:
        raise ConfigError(source, "benchmarks", "no tasks listed")
    specs = [_spec(task, source) for task in tasks]
    folders = tuple(sorted({folder for _, folder in specs if folder is not None}))
    manager = _task_manager(folders, any(folder is None for _, folder in specs))
    names = [name for spec_names, _ in specs for name in spec_names]
    for name in names:
        if name not in manager.task_index:
            raise ConfigError(source, "benchmarks", f"unknown lm-eval task '{name}' (`lm-eval ls tasks` lists them)")
    return manager, names


def _spec(task: str, source: str | None) -> tuple[list[str], str | None]:
    """(task names, folder to index) for one `benchmarks` entry: a path when it looks like one (a YAML suffix, a
    slash, a leading `.` or `~`), else a name in lm-eval's own index (folder None)."""
    from lm_eval.tasks._index import Kind, TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    if not (task.endswith(YAML_SUFFIXES) or "/" in task or task.startswith(("~", "."))):
        return [task], None
    path = Path(task).expanduser()
    if not path.exists():
        raise ConfigError(source, "benchmarks", f"task file '{task}': no such file or folder")
    if path.is_file():
        try:
            config = load_yaml(path, resolve_func=False)
        except Exception as e:  # yaml's errors, or lm-eval's for an `include:` it cannot find
            raise ConfigError(source, "benchmarks", f"task file '{task}': {_first_line(e)}") from None
        name = config.get("group", config.get("task")) if isinstance(config, dict) else None  # as lm-eval reads it
        if not isinstance(name, str):
            raise ConfigError(source, "benchmarks", f"task file '{task}' names no `task:` or `group:`")
        return [name], str(path.resolve().parent)
    entries = TaskIndex.build([path.resolve()]).values()
    groups = sorted(e.name for e in entries if e.kind == Kind.GROUP)
    names = groups or sorted(e.name for e in entries if e.kind in (Kind.TASK, Kind.PY_TASK))
    if not names:
        raise ConfigError(source, "benchmarks", f"task folder '{task}' holds no lm-eval task YAML")
    return names, str(path.resolve())


def _task_manager(folders: tuple[str, ...], defaults: bool):
    """lm-eval's task index over `folders`, and over its own tasks only when a name needs them (indexing those takes
    seconds). Not cached: task files may change between runs of one process; resolve once and reuse the result."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=defaults)


def _build(manager, name: str, source: str | None) -> list:
    try:
        built = manager.load([name])
    except Exception as e:  # datasets and lm-eval raise many kinds; each is still about this one task
        problem = "its dataset is not available offline" if _dataset_missing(e) else "cannot be built"
        raise ConfigError(source, "benchmarks", f"task '{name}': {problem} ({_first_line(e)})") from None
    return [built["groups"][name]] if name in built.get("groups", {}) else list(built["tasks"].values())


def _dataset_missing(error: Exception) -> bool:
    return isinstance(error, (ConnectionError, FileNotFoundError)) or type(error).__name__ in (
        "DatasetNotFoundError",
        "DataFilesNotFoundError",
        "EmptyDatasetError",
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().strip('"') or type(error).__name__
    return text.splitlines()[0]


def run_benchmarks(
    model: str,
    tasks: list[str] | ResolvedTasks,
    *,
    model_args: ModelArgs | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    backend: str = "auto",
    log_dir: str | Path | None = None,
    source: str | None = None,
) -> dict[str, dict[str, float]]:
    """`{task: {metric: value}}` for one model (a path, alias or LoRA adapter directory), a group's subtasks each
    under its own name (one per language) and the group's aggregate, when lm-eval computes one, under the group's."""
    import lm_eval

    resolved = tasks if isinstance(tasks, ResolvedTasks) else resolve_tasks(tasks, source)
    model_type, lm_args = lm_model(model, model_args or ModelArgs(model=model), backend)
    log.info("lm-eval %s on %s: %s", model_type, model, ", ".join(resolved.names))
    results = lm_eval.simple_evaluate(
        model=model_type,
        model_args=lm_args,
        tasks=resolved.objects,
        task_manager=resolved.manager,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device="cuda" if cuda_available() else "cpu",
        log_samples=log_dir is not None,
    )
    if log_dir is not None:
        _save_log(results, Path(log_dir))
    return metrics_of(results)


def lm_model(model: str, args: ModelArgs, backend: str = "auto") -> tuple[str, dict]:
    """lm-eval's model type and model_args: the weights and dtype polyalign would load, remote code only if asked."""
    backend = choose_backend("transformers" if backend == "hf" else backend)
    path = model_path(model)
    base = adapter_base(Path(path))
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    lm_args: dict[str, Any] = {
        "pretrained": model_path(base) if base else path,
        "dtype": dtype,
        "trust_remote_code": args.trust_remote_code,
    }
    if args.revision:
        lm_args["revision"] = args.revision
    if backend == "vllm":
        if base:
            rank = json.loads((Path(path) / "adapter_config.json").read_text()).get("r", 16)
            lm_args.update(lora_local_path=path, max_lora_rank=max(16, int(rank)))
        return "vllm", lm_args
    if base:
        lm_args["peft"] = path
    return "hf", lm_args


def metrics_of(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's results table as `{task: {metric: value}}`: numbers only (a group's stderr may be "N/A")."""
    table = {}
    for task, row in {**results.get("results", {}), **results.get("groups", {})}.items():
        metrics = {
            metric_name(key): float(value)
            for key, value in row.items()
            if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if metrics:
            table[task] = metrics
    return table


def metric_name(key: str) -> str:
    """`acc,none` → `acc`; `acc_stderr,none` → `acc_stderr`; `exact_match_stderr,strict-match` →
    `exact_match_strict-match_stderr` (every stderr ends in `_stderr`)."""
    metric, _, filter_name = key.partition(",")
    stderr = metric.endswith("_stderr")
    name = metric.removesuffix("_stderr")
    if filter_name and filter_name != "none":
        name += f"_{filter_name}"
    return name + ("_stderr" if stderr else "")


def _save_log(results: dict, log_dir: Path) -> None:
    """lm-eval's own results file and per-task samples, as its CLI's --output_path writes them."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(log_dir))
    samples = results.pop("samples", {})
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results.get("configs", {}):
        if task in samples:
            tracker.save_results_samples(task_name=task, samples=samples[task])
