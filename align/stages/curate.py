"""`polyalign curate`: a configurable sequence of curation steps over any dataset polyalign reads (as SFT records).

    polyalign curate --config recipes/demo/curate.yaml

Steps (align.data.steps), in the order the recipe lists them: clean, exact_dedup, minhash_dedup, semantic_dedup,
language_filter, ifd, provenance, and last, optionally, mix. Records stream through in chunks of `chunk_size`:
per-record work runs in `num_proc` processes (datasets.map), dedup decisions are sequential against what was kept
before, model-based steps score a chunk at a time. Only two steps need the whole set in memory: `ifd` with
`top_percent` (a percentile needs every score) and `mix` (its sampling needs every language's count); semantic dedup
keeps only the kept records' embeddings, MinHash their signatures, exact dedup a hash per kept record (with its id,
for the drop reasons).

The output directory appears, complete, when the run ends (built in a hidden `.<output_dir>.partial` sibling):

    curated.jsonl  dropped.jsonl  mixed.jsonl (with a mix step)  report.md  curation.png  metrics.json

One module over 400 lines: the scheduling of the steps (streaming chunks, parallel passes, sequential decisions,
resume) is one loop.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from align.core.config import build_dataclass, require, resolve_recipe
from align.core.console import print_table
from align.core.errors import ConfigError
from align.core.io import save_figure, write_jsonl
from align.core.lifecycle import StageRun
from align.data.loader import DataSource, iter_records, parse_sources
from align.data.steps import STEPS, MixStep, Step, Verdict

log = logging.getLogger(__name__)


@dataclass
class CurateArgs:
    dataset: Any = None  # required: a file, folder or datasets name, read as SFT records
    output_dir: str | None = None  # required: where the curated records and the report go
    # the steps, in order: clean, exact_dedup, minhash_dedup, semantic_dedup, language_filter, ifd, provenance, mix
    steps: list = field(default_factory=list)
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    num_proc: int = 1  # processes for the per-record steps (datasets.map)
    chunk_size: int = 10000  # records held at once by the streaming steps
    seed: int = 0  # the seed of weighted sources (`dataset: [{path, weight}]`)


@dataclass
class CurateJob:
    args: CurateArgs
    steps: list[Step]  # enabled, in order
    disabled: list[str]
    raw: dict
    source: str | None
    sources: list[DataSource]  # the `dataset` entries, checked


def parse_steps(value: Any, source: str | None) -> tuple[list[Step], list[str]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            source,
            "steps",
            "expected a non-empty list of steps, e.g. [clean, exact_dedup, "
            "{minhash_dedup: {threshold: 0.8}}] (known: " + ", ".join(STEPS) + ")",
        )
    steps, disabled, seen = [], [], Counter()
    for i, item in enumerate(value):
        where = f"steps[{i}]"
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
        else:
            raise ConfigError(source, where, "expected a step name or a mapping {name: {options}}")
        if name not in STEPS:
            close = difflib.get_close_matches(str(name), list(STEPS), n=1)
            raise ConfigError(
                source,
                where,
                f"unknown step {name!r}"
                + (f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(STEPS)})"),
            )
        if options is None or options is True:
            options = {}
        elif options is False:
            options = {"enabled": False}
        elif not isinstance(options, dict):
            raise ConfigError(source, f"{where}.{name}", "expected a mapping of options, true or false")
        cls = STEPS[name]
        args = build_dataclass(cls.args_cls, options, source, prefix=f"{where}.{name}.")
        seen[name] += 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        if not args.enabled:
            disabled.append(label)
            continue
        step = cls(args, label, f"{where}.{name}", source)
        step.validate()
        steps.append(step)
    mixes = [k for k, s in enumerate(steps) if isinstance(s, MixStep)]
    if len(mixes) > 1 or (mixes and mixes[0] != len(steps) - 1):
        raise ConfigError(
            source,
            steps[mixes[0]].where,
            "mix must be the last step, and only one (it samples the curated set into mixed.jsonl)",
        )
    return steps, disabled


def parse_curate_config(raw: dict, source: str | None = None) -> CurateJob:
    args = build_dataclass(CurateArgs, raw, source)
    require(
        args,
        source,
        output_dir="where to write curated.jsonl and the report",
        dataset="the data to curate (any format polyalign reads)",
    )
    sources = parse_sources(args.dataset, source)
    if args.num_proc < 1:
        raise ConfigError(source, "num_proc", f"must be at least 1, got {args.num_proc}")
    if args.chunk_size < 1:
        raise ConfigError(source, "chunk_size", f"must be at least 1, got {args.chunk_size}")
    steps, disabled = parse_steps(args.steps, source)
    return CurateJob(args, steps, disabled, raw, source, sources)


# ------------------------------------------------------------------------------------------------ bookkeeping


class Tally:
    """Per step: records in, kept, dropped (by reason), changed (by what); dropped records go to dropped.jsonl."""

    def __init__(self, steps: list[Step], dropped_path: Path):
        self.rows = {
            s.label: {"in": 0, "kept": 0, "dropped": 0, "reasons": Counter(), "changed": Counter(), "seconds": 0.0}
            for s in steps
        }
        self.langs: dict[str, Counter] = defaultdict(Counter)  # lang → {"input": n, "curated": n, "mixed": n}
        self._dropped = open(dropped_path, "w", encoding="utf-8")

    def count(self, step: Step, record: dict, verdict: Verdict) -> None:
        row = self.rows[step.label]
        row["in"] += 1
        if verdict.record is None:
            row["dropped"] += 1
            row["reasons"][verdict.reason] += 1
            dropped = {**record, "dropped_by": step.label, "drop_reason": verdict.reason}
            if verdict.detail:
                dropped["drop_detail"] = verdict.detail
            self._dropped.write(json.dumps(dropped, ensure_ascii=False) + "\n")
        else:
            row["kept"] += 1
            row["changed"].update(verdict.changed)

    def close(self) -> None:
        self._dropped.close()


# ------------------------------------------------------------------------------------------------ parallel pass


@dataclass
class Applied:
    """One record after the parallel pass: as the dropping step saw it (or as it came out), the index of the step
    that dropped it (-1: none), that step's verdict, what each step changed, the dedup features, seconds per step."""

    record: dict
    dropped_at: int
    verdict: Verdict | None
    changed: list[tuple[int, str]]
    features: list[bytes]
    seconds: list[float]


def _apply_chain(steps: list[Step], tails: list[Step], record: dict) -> Applied:
    changed, seconds = [], []
    for k, step in enumerate(steps):
        t0 = time.perf_counter()
        verdict = step.apply(record)
        seconds.append(time.perf_counter() - t0)
        changed += [(k, c) for c in verdict.changed]
        if verdict.record is None:
            return Applied(record, k, verdict, changed, [], seconds + [0.0] * (len(steps) - k - 1 + len(tails)))
        record = verdict.record
    features = []
    for tail in tails:
        t0 = time.perf_counter()
        features.append(tail.feature(record))
        seconds.append(time.perf_counter() - t0)
    return Applied(record, -1, None, changed, features, seconds)


def _map_batch(batch: dict, steps: list[Step], tails: list[Step]) -> dict:
    out: dict[str, list] = {
        "record": [],
        "dropped_at": [],
        "reason": [],
        "detail": [],
        "changed": [],
        "seconds": [],
        **{f"feature{t}": [] for t in range(len(tails))},
    }
    for text in batch["record"]:
        a = _apply_chain(steps, tails, json.loads(text))
        out["record"].append(json.dumps(a.record, ensure_ascii=False))
        out["dropped_at"].append(a.dropped_at)
        out["reason"].append((a.verdict.reason or "") if a.verdict else "")
        out["detail"].append((a.verdict.detail or "") if a.verdict else "")
        out["changed"].append(json.dumps(a.changed))
        out["seconds"].append(a.seconds)
        for t in range(len(tails)):
            out[f"feature{t}"].append(a.features[t] if a.features else b"")
    return out


@contextlib.contextmanager
def _quiet_datasets():
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def parallel_apply(chunk: list[dict], steps: list[Step], tails: list[Step], num_proc: int, tag: str) -> list[Applied]:
    """_apply_chain over a chunk: in this process, or with datasets.map over `num_proc` processes (records travel
    as JSON text, so any record shape passes through unchanged)."""
    if num_proc <= 1 or len(chunk) < 2 * num_proc:
        return [_apply_chain(steps, tails, r) for r in chunk]
    import datasets

    features = datasets.Features(
        {
            "record": datasets.Value("string"),
            "dropped_at": datasets.Value("int32"),
            "reason": datasets.Value("string"),
            "detail": datasets.Value("string"),
            "changed": datasets.Value("string"),
            "seconds": datasets.Sequence(datasets.Value("float64")),
            **{f"feature{t}": datasets.Value("binary") for t in range(len(tails))},
        }
    )
    table = datasets.Dataset.from_dict({"record": [json.dumps(r, ensure_ascii=False) for r in chunk]})
    with _quiet_datasets():
        mapped = table.map(
            _map_batch,
            batched=True,
            batch_size=max(1, min(1000, -(-len(chunk) // num_proc))),
            num_proc=num_proc,
            fn_kwargs={"steps": steps, "tails": tails},
            remove_columns=["record"],
            features=features,
            keep_in_memory=True,
            new_fingerprint=tag,
        ).to_dict()
    out = []
    for i in range(len(chunk)):
        k = mapped["dropped_at"][i]
        verdict = Verdict(None, mapped["reason"][i] or None, mapped["detail"][i] or None) if k >= 0 else None
        out.append(
            Applied(
                json.loads(mapped["record"][i]),
                k,
                verdict,
                [tuple(c) for c in json.loads(mapped["changed"][i])],
                [mapped[f"feature{t}"][i] for t in range(len(tails))] if k < 0 else [],
                mapped["seconds"][i],
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ stages


class MapStage:
    """Consecutive per-record steps in one parallel pass, which also computes the features of the dedup steps
    (`tails`) that follow them; then each dedup step decides, in order, sequentially."""

    def __init__(self, steps: list[Step], tails: list[Step], num_proc: int):
        self.steps, self.tails, self.num_proc = steps, tails, num_proc
        self.label = "+".join(s.label for s in [*steps, *tails])

    def run(self, chunks: Iterable[list[dict]], tally: Tally) -> Iterator[list[dict]]:
        for c, chunk in enumerate(chunks):
            results = parallel_apply(chunk, self.steps, self.tails, self.num_proc, f"curate-{self.label}-{c}")
            survivors: list[tuple[dict, list[bytes]]] = []
            for original, a in zip(chunk, results):
                per_step = defaultdict(list)
                for j, name in a.changed:
                    per_step[j].append(name)
                for j, step in enumerate(self.steps):
                    if j == a.dropped_at:
                        tally.count(step, a.record, a.verdict)
                        break
                    tally.count(step, original, Verdict(a.record, changed=tuple(per_step[j])))
                else:
                    survivors.append((a.record, a.features))
                for step, seconds in zip([*self.steps, *self.tails], a.seconds):
                    tally.rows[step.label]["seconds"] += seconds
            for t, tail in enumerate(self.tails):
                start = time.perf_counter()
                verdicts = tail.decide([r for r, _ in survivors], [f[t] for _, f in survivors])
                kept = []
                for (record, features), verdict in zip(survivors, verdicts):
                    tally.count(tail, record, verdict)
                    if verdict.record is not None:
                        kept.append((verdict.record, features))
                survivors = kept
                tally.rows[tail.label]["seconds"] += time.perf_counter() - start
            yield [r for r, _ in survivors]


class ProcessStage:
    """A model-based step: a chunk at a time, or every record at once for a whole-set step."""

    def __init__(self, step: Step, chunk_size: int):
        self.step, self.chunk_size = step, chunk_size
        self.label = step.label

    def run(self, chunks: Iterable[list[dict]], tally: Tally) -> Iterator[list[dict]]:
        if self.step.whole_set:
            chunks = [[r for chunk in chunks for r in chunk]]
        for chunk in chunks:
            if not chunk:
                continue
            start = time.perf_counter()
            kept = []
            for record, verdict in zip(chunk, self.step.process(chunk)):
                tally.count(self.step, record, verdict)
                if verdict.record is not None:
                    kept.append(verdict.record)
            tally.rows[self.step.label]["seconds"] += time.perf_counter() - start
            if self.step.whole_set:
                for k in range(0, len(kept), self.chunk_size):
                    yield kept[k : k + self.chunk_size]
            else:
                yield kept


def build_stages(steps: list[Step], num_proc: int, chunk_size: int) -> list:
    """Group the steps: per-record steps and the dedup steps right after them share one parallel pass."""
    stages: list = []
    pending: list[Step] = []
    tails: list[Step] = []

    def flush():
        if pending or tails:
            stages.append(MapStage(list(pending), list(tails), num_proc))
        pending.clear()
        tails.clear()

    for step in steps:
        if isinstance(step, MixStep):
            continue
        if step.has_apply:
            if tails:
                flush()
            pending.append(step)
        elif step.has_feature:
            tails.append(step)
        else:
            flush()
            stages.append(ProcessStage(step, chunk_size))
    flush()
    return stages


def chunked(records: Iterable[dict], size: int, tally: Tally) -> Iterator[list[dict]]:
    iterator = iter(records)
    while True:
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        for record in chunk:
            tally.langs[record["lang"]]["input"] += 1
        yield chunk


# ------------------------------------------------------------------------------------------------ report


def step_rows(job: CurateJob, tally: Tally) -> list[dict]:
    rows = []
    for step in job.steps:
        if isinstance(step, MixStep):
            continue
        row = tally.rows[step.label]
        rows.append(
            {
                "step": step.label,
                "in": row["in"],
                "kept": row["kept"],
                "dropped": row["dropped"],
                "reasons": dict(row["reasons"].most_common()),
                "changed": dict(row["changed"].most_common()),
                "seconds": round(row["seconds"], 3),
                "notes": step.notes(),
            }
        )
    return rows


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "-"


def write_report(path: Path, job: CurateJob, metrics: dict, plan_text: str | None) -> None:
    m = metrics
    lines = [
        "# Curation report",
        "",
        f"Input: {m['input']} records from `{json.dumps(job.args.dataset, ensure_ascii=False)}`; curated: "
        f"{m['curated']} ({m['curated'] / m['input']:.1%} kept), dropped: {m['dropped']}"
        + (f"; mixed: {m['mixed']}" if m.get("mixed") is not None else "")
        + ".",
        f"Processes for per-record steps: {job.args.num_proc}; wall time {m['seconds']:.1f} s "
        f"({_rate(m['records_per_second'])} input records/s).",
        "",
        "| step | in | kept | dropped | why dropped | changed (kept records) | step seconds* |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for row in m["steps"]:
        lines.append(
            f"| {row['step']} | {row['in']} | {row['kept']} | {row['dropped']} | {_counts(row['reasons'])} "
            f"| {_counts(row['changed'])} | {row['seconds']:.2f} |"
        )
    lines += [
        "",
        "\\* time spent in the step, summed over the processes of the per-record steps (wall time for the others).",
    ]
    if job.disabled:
        lines += ["", f"Steps turned off: {', '.join(job.disabled)}."]
    notes = [f"- {row['step']}: {note}" for row in m["steps"] for note in row["notes"]]
    if notes:
        lines += ["", "## Step settings", "", *notes]
    lines += [
        "",
        "## Records per language",
        "",
        "| lang | input | curated |" + (" mixed |" if plan_text else ""),
        "|---|---:|---:|" + ("---:|" if plan_text else ""),
    ]
    for lang, row in m["languages"].items():
        lines.append(f"| {lang} | {row['input']} | {row['curated']} |" + (f" {row['mixed']} |" if plan_text else ""))
    if plan_text:
        lines += ["", "## Mix", "", "```", plan_text, "```"]
    lines += [
        "",
        "Dropped records, each with `dropped_by`, `drop_reason` and `drop_detail`, are in `dropped.jsonl`.",
        "",
        "![records kept and dropped by each step](curation.png)",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot_curation(metrics: dict, path: Path) -> None:
    """Left: kept and dropped records per step. Right: records per language before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = metrics["steps"]
    langs = list(metrics["languages"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.45 * max(len(steps), 4) + 1.5)))
    names = [s["step"] for s in steps][::-1]
    kept = [s["kept"] for s in steps][::-1]
    dropped = [s["dropped"] for s in steps][::-1]
    left.barh(names, kept, color="#4c9f70", label="kept")
    left.barh(names, dropped, left=kept, color="#d1495b", label="dropped")
    for y, (k, d) in enumerate(zip(kept, dropped)):
        if d:
            left.text(k + d, y, f" -{d}", va="center", fontsize="small")
    left.set_xlabel("records")
    left.set_title("Records in each step: kept and dropped")
    left.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    series = [("input", "#9aa5b1"), ("curated", "#4c9f70")] + (
        [("mixed", "#3d5a80")] if metrics.get("mixed") is not None else []
    )
    width = 0.8 / len(series)
    for k, (key, color) in enumerate(series):
        right.bar(
            [x + k * width for x in range(len(langs))],
            [metrics["languages"][l][key] for l in langs],
            width,
            label=key,
            color=color,
        )
    right.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(langs))], langs)
    right.set_ylabel("records")
    right.set_title("Records per language")
    right.legend(fontsize="small")
    save_figure(fig, path, dpi=110)


def print_summary(metrics: dict, final: Path) -> None:
    header = ["step", "in", "kept", "dropped", "why dropped"]
    rows = [
        [r["step"], str(r["in"]), str(r["kept"]), str(r["dropped"]), _counts(r["reasons"])] for r in metrics["steps"]
    ]
    print_table("Curation summary", header, rows, left=(0, 4))
    print(
        f"  {metrics['input']} records in, {metrics['curated']} curated"
        + (f", {metrics['mixed']} in the mix" if metrics.get("mixed") is not None else "")
        + f" ({_rate(metrics['records_per_second'])} records/s) → {final}",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------ stage


def write_curated(job: CurateJob, tally: Tally, path: Path, keep: bool) -> tuple[int, list[dict]]:
    """Stream the dataset through the stages into `path`: the number of records curated, and the records themselves
    when `keep` (the mix samples from all of them)."""
    chunks: Iterable[list[dict]] = chunked(
        iter_records(job.sources, "sft", seed=job.args.seed), job.args.chunk_size, tally
    )
    for stage in build_stages(job.steps, job.args.num_proc, job.args.chunk_size):
        chunks = stage.run(chunks, tally)
    count, kept = 0, []
    with open(path, "w", encoding="utf-8") as out:
        for chunk in chunks:
            for record in chunk:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                tally.langs[record["lang"]]["curated"] += 1
            count += len(chunk)
            if keep:
                kept += chunk
    return count, kept


def write_mixed(mix: MixStep, curated: list[dict], tally: Tally, path: Path) -> tuple[int, dict, str]:
    """Sample the curated records into `path`: (records in the mix, the mix's metrics, its plan as text)."""
    from align.data.mix import format_plan

    start = time.perf_counter()
    mixed, plan = mix.mix(curated)
    plan_text = format_plan(plan)
    print("Language mix (written to mixed.jsonl):\n" + plan_text, flush=True)
    write_jsonl(path, mixed)
    for record in mixed:
        tally.langs[record["lang"]]["mixed"] += 1
    return len(mixed), {"plan": [p.__dict__ for p in plan], "seconds": round(time.perf_counter() - start, 3)}, plan_text


def curate(job: CurateJob, partial: Path) -> dict:
    """Run the steps over the dataset, writing curated.jsonl, dropped.jsonl (and mixed.jsonl) into `partial`."""
    start = time.perf_counter()
    for step in job.steps:
        step.prepare()
    mix = job.steps[-1] if job.steps and isinstance(job.steps[-1], MixStep) else None
    tally = Tally(job.steps, partial / "dropped.jsonl")
    try:
        n_curated, curated = write_curated(job, tally, partial / "curated.jsonl", keep=mix is not None)
    finally:
        tally.close()
    if n_curated == 0:
        raise ConfigError(job.source, "steps", "no record survived curation; loosen the thresholds")
    n_mixed, mix_metrics, plan_text = (
        (None, None, None) if mix is None else write_mixed(mix, curated, tally, partial / "mixed.jsonl")
    )
    seconds = time.perf_counter() - start
    total_in = sum(c["input"] for c in tally.langs.values())
    metrics = {
        "input": total_in,
        "curated": n_curated,
        "dropped": total_in - n_curated,
        "mixed": n_mixed,
        "steps": step_rows(job, tally),
        "disabled_steps": job.disabled,
        "languages": {
            lang: {"input": c["input"], "curated": c["curated"], "mixed": c["mixed"]}
            for lang, c in sorted(tally.langs.items(), key=lambda kv: (-kv[1]["input"], kv[0]))
        },
        "num_proc": job.args.num_proc,
        "seconds": round(seconds, 3),
        "records_per_second": round(total_in / seconds, 1) if seconds else None,
    }
    if mix_metrics is not None:
        metrics["mix"] = mix_metrics
    write_report(partial / "report.md", job, metrics, plan_text)
    plot_curation(metrics, partial / "curation.png")
    return metrics


def run_curate(raw: dict, source: str | None = None) -> Path:
    """The `curate` stage. Its output appears whole when the run ends; a failed run leaves no output and no partial,
    a killed one only a partial, which the next run clears (nothing in it is worth resuming)."""
    job = parse_curate_config(raw, source)
    run = StageRun(
        job.args.output_dir,
        resolve_recipe(job.raw, CurateArgs, source),
        stage="curate",
        overwrite=job.args.overwrite,
        source=source,
        resumable=False,
    )
    run.prepare()
    with run.building():
        print(
            f"Curate: {', '.join(s.label for s in job.steps)} ({job.args.num_proc} process"
            f"{'es' if job.args.num_proc > 1 else ''} for per-record steps)",
            flush=True,
        )
        metrics = curate(job, run.partial)
        final = run.finish(metrics)
    print_summary(metrics, final)
    return final
