"""Load one or more data sources as canonical records of the kind a stage needs, with per-source weights."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError, InputError
from align.data.formats import FORMAT_KINDS, Skip, describe_unknown, detect_format, normalise_row, to_kind
from align.data.languages import UnknownLanguage, normalize_lang
from align.data.sources import iter_source

log = logging.getLogger(__name__)


@dataclass
class DataSource:
    """One entry of a recipe's `dataset` list.

    weight: a sampling multiplier (EMMA-500 style): 2.0 repeats every record twice, 0.5 keeps a seeded half.
    lang: the language of every record that does not name its own (skips detection).
    """

    path: str
    weight: float = 1.0
    split: str = "train"
    name: str | None = None  # `datasets` config name
    lang: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str = "dataset", source: str | None = None) -> DataSource:
        """One entry, checked; errors name `source` (the recipe file) and the entry's key, `where`."""
        if isinstance(value, DataSource):
            return value
        if isinstance(value, str):
            return cls(path=value)
        if not isinstance(value, dict):
            raise ConfigError(source, where, f"expected a path or a mapping with 'path', got {type(value).__name__}")
        unknown = set(value) - {"path", "weight", "split", "name", "lang"}
        if unknown:
            raise ConfigError(
                source, f"{where}.{sorted(unknown)[0]}", "unknown key (expected path, weight, split, name, lang)"
            )
        if "path" not in value:
            raise ConfigError(source, f"{where}.path", "missing")
        entry = cls(**value)
        if (
            isinstance(entry.weight, bool)
            or not isinstance(entry.weight, (int, float))
            or not math.isfinite(entry.weight)
            or entry.weight <= 0
        ):
            raise ConfigError(source, f"{where}.weight", f"must be a positive number, got {entry.weight!r}")
        if entry.lang is not None:
            try:
                entry.lang = normalize_lang(entry.lang)
            except UnknownLanguage as e:
                raise ConfigError(source, f"{where}.lang", str(e)) from None
        return entry


def parse_sources(value: Any, source: str | None = None, key: str = "dataset") -> list[DataSource]:
    """A recipe's `dataset:` (or other `key`): a path, a list of paths, or a list of {path, weight, split, name,
    lang} (or DataSource objects). Errors name `source`, the recipe file (None: the command line)."""
    if value is None:
        raise ConfigError(source, key, "missing: give a file, folder or datasets name")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(source, key, "empty list")
    return [DataSource.parse(item, f"{key}[{i}]", source) for i, item in enumerate(items)]


# (kind a file holds, kind a stage asks for) pairs that formats.to_kind can convert; unpaired (KTO) files give their
# desirable records.
CONVERSIONS = {
    ("sft", "sft"),
    ("preference", "preference"),
    ("prompt", "prompt"),
    ("sft", "prompt"),
    ("preference", "prompt"),
    ("preference", "sft"),
    ("unpaired", "sft"),
    ("unpaired", "prompt"),
}


def describe_skipped(skipped: Counter) -> str:
    """`skipped 3 rows: tie 2, undesirable (KTO label false) 1`; "" when none were."""
    if not skipped:
        return ""
    return f"skipped {sum(skipped.values())} rows: " + ", ".join(f"{why} {n}" for why, n in skipped.most_common())


def read_source(entry: DataSource, kind: str, skipped: Counter | None = None) -> list[dict]:
    """All rows of one source, normalised to `kind` records; a malformed row stops everything."""
    return list(iter_source_records(entry, kind, skipped))


def iter_source_records(entry: DataSource, kind: str, skipped: Counter | None = None) -> Iterator[dict]:
    """The rows of one source as `kind` records, one at a time (a file larger than memory streams through). Rows
    with nothing to train on (Arena ties, undesirable KTO answers) are dropped, logged per file and counted in
    `skipped`."""
    for unit, rows in iter_source(entry.path, entry.split, entry.name):
        fmt = None
        dropped: Counter = Counter()
        source_name = Path(unit).stem if Path(unit).suffix else unit.split("/")[-1]
        for index, (loc, row) in enumerate(rows):
            row_fmt = detect_format(row)
            if fmt is None:
                if row_fmt is None:
                    raise loc.error(describe_unknown(row))
                if FORMAT_KINDS[row_fmt] == "unpaired" and kind == "preference":
                    raise InputError(
                        unit,
                        "unpaired data (KTO labels): preference training needs chosen and "
                        "rejected answers for one prompt",
                    )
                if (FORMAT_KINDS[row_fmt], kind) not in CONVERSIONS:
                    raise loc.error(
                        f"holds {row_fmt} data ({FORMAT_KINDS[row_fmt]} records), which cannot serve as {kind} records"
                    )
                fmt = row_fmt
                log.info("%s: format %s", unit, fmt)
            elif row_fmt is None or FORMAT_KINDS[row_fmt] != FORMAT_KINDS[fmt]:
                # Same-kind formats may mix in one file (messages and ShareGPT rows, say); other rows are errors.
                raise loc.error(f"row does not match this file's format ({fmt}): " + describe_unknown(row))
            try:
                record = normalise_row(loc, row, row_fmt, source_name=source_name, index=index, default_lang=entry.lang)
            except Skip as skip:
                dropped[skip.reason] += 1
                continue
            yield to_kind(record, kind)
        if fmt is None:
            raise InputError(unit, "no records")
        if dropped:
            log.info("%s: %s", unit, describe_skipped(dropped))
            if skipped is not None:
                skipped.update(dropped)


def apply_weight(records: list[dict], weight: float, seed: int) -> list[dict]:
    """Repeat whole copies for the integer part of `weight`, then a seeded sample for the fraction."""
    whole, fraction = int(weight), weight - int(weight)
    out = records * whole
    if fraction > 0:
        rng = random.Random(seed)
        k = round(len(records) * fraction)
        out += [records[i] for i in sorted(rng.sample(range(len(records)), k))]
    return out


def _no_records(sources: list[DataSource], skipped: Counter) -> InputError:
    why = describe_skipped(skipped)
    return InputError(", ".join(s.path for s in sources), "no records after weighting" + (f" ({why})" if why else ""))


def load_records(
    dataset: Any,
    kind: str,
    *,
    seed: int = 0,
    source: str | None = None,
    key: str = "dataset",
    skipped: Counter | None = None,
) -> list[dict]:
    """Read every source of a recipe's `dataset` entry, weighted, as canonical `kind` records (`source`, `key`: where
    the entry was written, for its errors). `skipped`, when given, receives the count of rows dropped per reason
    (`describe_skipped` words it for the stage's summary); each file's is logged at INFO."""
    sources = parse_sources(dataset, source, key)
    skipped = Counter() if skipped is None else skipped
    records: list[dict] = []
    for i, entry in enumerate(sources):
        records += apply_weight(read_source(entry, kind, skipped), entry.weight, seed + i)
    if not records:
        raise _no_records(sources, skipped)
    return records


def iter_records(
    dataset: Any,
    kind: str,
    *,
    seed: int = 0,
    source: str | None = None,
    key: str = "dataset",
    skipped: Counter | None = None,
) -> Iterator[dict]:
    """`load_records` one record at a time: sources of weight 1 stream row by row (a weighted source is read whole,
    since its seeded sample needs its size). Records come in the order `load_records` returns them; `skipped` is
    complete once the iterator is exhausted."""
    sources = parse_sources(dataset, source, key)
    skipped = Counter() if skipped is None else skipped
    count = 0
    for i, entry in enumerate(sources):
        if entry.weight == 1:
            rows = iter_source_records(entry, kind, skipped)
        else:
            rows = iter(apply_weight(read_source(entry, kind, skipped), entry.weight, seed + i))
        for record in rows:
            count += 1
            yield record
    if not count:
        raise _no_records(sources, skipped)


def language_mix(records: list[dict]) -> dict[str, int]:
    """Records per language, largest first: printed before training so the mix is never a surprise."""
    return dict(Counter(r["lang"] for r in records).most_common())


def hold_out_by_id(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A stable split (kept, held out): a record is held out by a seeded hash of its id, whatever the order or count
    of the rest; at least one record is held out when `fraction` > 0."""

    if fraction == 0:
        return records, []

    def bucket(record):
        return int(hashlib.sha256(f"{seed}:{record['id']}".encode()).hexdigest()[:8], 16) / 16**8

    held = [r for r in records if bucket(r) < fraction] or records[-1:]
    held_ids = {id(r) for r in held}
    return [r for r in records if id(r) not in held_ids], held
