"""Load one or more data sources as canonical records of the kind a stage needs, with per-source weights."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, InputError
from .formats import FORMAT_KINDS, describe_unknown, detect_format, normalise_row, to_kind
from .languages import UnknownLanguage, normalize_lang
from .sources import iter_source

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
    def parse(cls, value: Any, where: str = "dataset") -> "DataSource":
        if isinstance(value, str):
            return cls(path=value)
        if isinstance(value, dict):
            unknown = set(value) - {"path", "weight", "split", "name", "lang"}
            if unknown:
                raise ConfigError(None, f"{where}.{sorted(unknown)[0]}", "unknown key (expected path, weight, split, name, lang)")
            if "path" not in value:
                raise ConfigError(None, f"{where}.path", "missing")
            source = cls(**value)
            if isinstance(source.weight, bool) or not isinstance(source.weight, (int, float)) \
                    or not math.isfinite(source.weight) or source.weight <= 0:
                raise ConfigError(None, f"{where}.weight", f"must be a positive number, got {source.weight!r}")
            if source.lang is not None:
                try:
                    source.lang = normalize_lang(source.lang)
                except UnknownLanguage as e:
                    raise ConfigError(None, f"{where}.lang", str(e)) from None
            return source
        raise ConfigError(None, where, f"expected a path or a mapping with 'path', got {type(value).__name__}")


def parse_sources(value: Any) -> list[DataSource]:
    """`dataset:` accepts a path, a list of paths, or a list of {path, weight, split, name, lang}."""
    if value is None:
        raise ConfigError(None, "dataset", "missing: give a file, folder or datasets name")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(None, "dataset", "empty list")
    return [DataSource.parse(item, f"dataset[{i}]") for i, item in enumerate(items)]


# (kind a file holds, kind a stage asks for) pairs that formats.to_kind can convert.
CONVERSIONS = {("sft", "sft"), ("preference", "preference"), ("prompt", "prompt"), ("sft", "prompt"),
               ("preference", "prompt"), ("preference", "sft")}


def read_source(source: DataSource, kind: str) -> list[dict]:
    """All rows of one source, normalised to `kind` records; a malformed row stops everything."""
    return list(iter_source_records(source, kind))


def iter_source_records(source: DataSource, kind: str) -> Iterator[dict]:
    """The rows of one source as `kind` records, one at a time (a file larger than memory streams through)."""
    for unit, rows in iter_source(source.path, source.split, source.name):
        fmt = None
        source_name = Path(unit).stem if Path(unit).suffix else unit.split("/")[-1]
        for index, (loc, row) in enumerate(rows):
            row_fmt = detect_format(row)
            if fmt is None:
                if row_fmt is None:
                    raise loc.error(describe_unknown(row))
                if (FORMAT_KINDS[row_fmt], kind) not in CONVERSIONS:
                    raise loc.error(f"holds {row_fmt} data ({FORMAT_KINDS[row_fmt]} records), which cannot serve "
                                    f"as {kind} records")
                fmt = row_fmt
                log.info("%s: format %s", unit, fmt)
            elif row_fmt is None or FORMAT_KINDS[row_fmt] != FORMAT_KINDS[fmt]:
                # Same-kind formats may mix in one file (messages and ShareGPT rows, say); other rows are errors.
                raise loc.error(f"row does not match this file's format ({fmt}): " + describe_unknown(row))
            record = normalise_row(loc, row, row_fmt, source_name=source_name, index=index, default_lang=source.lang)
            yield to_kind(record, kind)
        if fmt is None:
            raise InputError(unit, "no records")


def apply_weight(records: list[dict], weight: float, seed: int) -> list[dict]:
    """Repeat whole copies for the integer part of `weight`, then a seeded sample for the fraction."""
    whole, fraction = int(weight), weight - int(weight)
    out = records * whole
    if fraction > 0:
        rng = random.Random(seed)
        k = round(len(records) * fraction)
        out += [records[i] for i in sorted(rng.sample(range(len(records)), k))]
    return out


def load_records(dataset: Any, kind: str, *, seed: int = 0) -> list[dict]:
    """Read every source of a recipe's `dataset` entry, weighted, as canonical `kind` records."""
    sources = dataset if isinstance(dataset, list) and dataset and all(isinstance(s, DataSource) for s in dataset) \
        else parse_sources(dataset)
    records: list[dict] = []
    for i, source in enumerate(sources):
        rows = read_source(source, kind)
        records += apply_weight(rows, source.weight, seed + i)
    if not records:
        raise InputError(", ".join(s.path for s in sources), "no records after weighting")
    return records


def iter_records(dataset: Any, kind: str, *, seed: int = 0) -> Iterator[dict]:
    """`load_records` one record at a time: sources of weight 1 stream row by row (a weighted source is read whole,
    since its seeded sample needs its size). Records come in the order `load_records` returns them."""
    sources = dataset if isinstance(dataset, list) and dataset and all(isinstance(s, DataSource) for s in dataset) \
        else parse_sources(dataset)
    count = 0
    for i, source in enumerate(sources):
        if source.weight == 1:
            rows = iter_source_records(source, kind)
        else:
            rows = iter(apply_weight(read_source(source, kind), source.weight, seed + i))
        for record in rows:
            count += 1
            yield record
    if not count:
        raise InputError(", ".join(s.path for s in sources), "no records after weighting")


def language_mix(records: list[dict]) -> dict[str, int]:
    """Records per language, largest first: printed before training so the mix is never a surprise."""
    return dict(Counter(r["lang"] for r in records).most_common())
