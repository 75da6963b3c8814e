"""Read rows from files, folders and `datasets` names, remembering where each row came from.

Every row is yielded with its location so that a bad field can be reported as `file:line` or `file row N`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import InputError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Columns that hold lists or dicts; in CSV cells they arrive as JSON text.
STRUCTURED_COLUMNS = (
    "messages",
    "conversations",
    "prompt",
    "chosen",
    "rejected",
    "completion",
    "turns",
    "chosen_messages",
    "rejected_messages",
    "conversation_a",
    "conversation_b",
)


@dataclass(frozen=True)
class Location:
    """Where a row lives: `line` for line-oriented text files, `row` (1-based) for tables and datasets."""

    source: str
    line: int | None = None
    row: int | None = None

    def error(self, message: str, field: str | None = None) -> InputError:
        return InputError(self.source, message, line=self.line, row=self.row, field=field)


def list_files(path: Path) -> list[Path]:
    """Supported data files under a folder, in a stable order."""
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(str(path), f"folder holds no data files ({', '.join(sorted(SUFFIXES))})")
    return files


def iter_file(path: Path) -> Iterator[tuple[Location, dict]]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(str(path), f"unsupported file type '{path.suffix}' (use {', '.join(sorted(SUFFIXES))})")
    if path.stat().st_size == 0:
        raise InputError(str(path), "empty file")
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "csv": _iter_csv}[kind]
    yield from reader(path)


def _check_object(loc: Location, value: Any) -> dict:
    if not isinstance(value, dict):
        raise loc.error(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_utf8(path: Path) -> str:
    """The file's text; one that is not UTF-8 (a Latin-1 or Windows export) is an InputError naming the line, the
    field the first bad byte falls in, and the byte, instead of a UnicodeDecodeError traceback."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        before = raw[line_start : e.start].decode("utf-8", errors="replace")
        keys = re.findall(r'"([^"\\]+)"\s*:', before)
        raise InputError(
            str(path),
            f"not UTF-8: byte 0x{raw[e.start]:02x} at column {len(before) + 1} (save the file as UTF-8)",
            line=raw.count(b"\n", 0, e.start) + 1,
            field=keys[-1] if keys else None,
        ) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[Location, dict]]:
    # Split on newlines only: a JSON string may hold U+2028, which str.splitlines would cut at.
    for lineno, text in enumerate(read_utf8(path).split("\n"), start=1):
        if not text.strip():
            continue
        loc = Location(str(path), line=lineno)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise loc.error(f"invalid JSON ({e.msg} at column {e.colno})") from None
        yield loc, _check_object(loc, value)


def _iter_json(path: Path) -> Iterator[tuple[Location, dict]]:
    text = read_utf8(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # A .json file that is really JSON Lines.
            yield from _iter_jsonl(path)
            return
        raise InputError(str(path), f"invalid JSON ({e.msg} at column {e.colno})", line=e.lineno) from None
    if isinstance(value, dict):
        # A {"data": [...]} or {"train": [...]} wrapper, as some exports write them; otherwise a single record.
        lists = [
            (k, v) for k, v in value.items() if isinstance(v, list) and v and all(isinstance(item, dict) for item in v)
        ]
        if len(lists) == 1 and lists[0][0] not in STRUCTURED_COLUMNS:
            value = lists[0][1]
        else:
            value = [value]
    if not isinstance(value, list):
        raise InputError(str(path), "expected a JSON array of objects")
    for i, item in enumerate(value, start=1):
        loc = Location(str(path), row=i)
        yield loc, _check_object(loc, item)


def _iter_parquet(path: Path) -> Iterator[tuple[Location, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(str(path), f"not a readable Parquet file ({e})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            row += 1
            yield Location(str(path), row=row), item


def _iter_csv(path: Path) -> Iterator[tuple[Location, dict]]:
    text = read_utf8(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InputError(str(path), "CSV file has no header row")
    for i, item in enumerate(reader, start=1):
        loc = Location(str(path), row=i)
        if None in item:
            raise loc.error("more cells than header columns")
        for column in STRUCTURED_COLUMNS:
            cell = item.get(column)
            if isinstance(cell, str) and cell.lstrip()[:1] in ("[", "{"):
                try:
                    item[column] = json.loads(cell)
                except json.JSONDecodeError as e:
                    raise loc.error(f"invalid JSON in cell ({e.msg})", field=column) from None
        yield loc, item


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def iter_dataset(name: str, split: str = "train", config_name: str | None = None) -> Iterator[tuple[Location, dict]]:
    """Rows of a `datasets` dataset: a `save_to_disk` folder, or a name that `datasets.load_dataset` resolves."""
    import datasets

    label = f"dataset '{name}'" + (f" split '{split}'" if split else "")
    path = Path(name)
    try:
        if _is_saved_dataset(path):
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        else:
            data = datasets.load_dataset(name, config_name, split=split)
    except KeyError:
        raise InputError(label, f"no split '{split}'") from None
    except FileNotFoundError as e:
        raise InputError(name, f"not a file, a folder, or a dataset that `datasets` can load ({e})") from None
    except Exception as e:  # network refusal, missing config, bad cache: all surface to the user the same way
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise InputError(label, f"could not be loaded: {type(e).__name__}: {first_line}") from None
    for i, item in enumerate(data, start=1):
        yield Location(label, row=i), item


def iter_source(spec: str, split: str = "train", config_name: str | None = None) -> Iterator[tuple[str, Iterator]]:
    """Yield (unit name, rows) per unit: each file of a folder is its own unit, so formats are detected per file."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        yield str(path), iter_file(path)
    elif path.is_dir() and not _is_saved_dataset(path):
        for file in list_files(path):
            yield str(file), iter_file(file)
    elif not path.exists() and (path.suffix.lower() in SUFFIXES or spec.startswith((".", "/", "~"))):
        raise InputError(spec, "no such file or folder")
    else:
        yield spec, iter_dataset(spec, split, config_name)
