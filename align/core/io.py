"""Write outputs so that a killed run never leaves a half-written file or directory behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically: a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write JSONL atomically; returns the number of records written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def safe_name(name: str) -> str:
    """A name (a cluster, a model in a report) as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def partial_dir(final: str | os.PathLike) -> Path:
    """The sibling where a stage builds its output before renaming it into place.

    Deterministic (no random suffix) so that every process of a distributed run, and a rerun after a kill,
    agree on it: a rerun finds the checkpoints a killed run left there and resumes from them.
    """
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def promote(partial: str | os.PathLike, final: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Rename a finished partial directory into place (atomic on one filesystem)."""
    partial, final = Path(partial), Path(final)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists")
        trash = final.parent / f".{final.name}.old"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(partial, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, final)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lay a matplotlib figure out, write it atomically (a reader never sees half a PNG), and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def read_logs(directory: str | os.PathLike, pattern: str) -> list[dict]:
    """The complete records of every append log in `directory` matching `pattern` (one per process; a resumed run
    may have another process count). Read-only: a line another process is still writing is left alone."""
    records = []
    for path in sorted(Path(directory).glob(pattern)):
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
        records += [json.loads(line) for line in complete.splitlines() if line.strip()]
    return records


def shard_log(directory: str | os.PathLike, stem: str, rank: int, processes: int) -> Path:
    """The append log of one process: `<stem>.jsonl` itself in a single process, else `<stem>.rank<r>.jsonl`,
    joined into `<stem>.jsonl` by `join_logs` once every process is done."""
    return Path(directory) / (f"{stem}.jsonl" if processes == 1 else f"{stem}.rank{rank}.jsonl")


def join_logs(directory: str | os.PathLike, stem: str, key: Callable[[dict], Any]) -> list[dict]:
    """Main process, after a barrier: `<stem>.jsonl` and the processes' `<stem>.rank*.jsonl` as one log (one record
    per `index`) in `key` order (written whole, then the per-process logs removed); returns its records."""
    directory = Path(directory)
    shards = sorted(directory.glob(f"{stem}.rank*.jsonl"))
    records = read_logs(directory, f"{stem}.jsonl") + read_logs(directory, f"{stem}.rank*.jsonl")
    if shards:
        unique = {r["index"]: r for r in records}
        records = sorted(unique.values(), key=key)
        write_jsonl(directory / f"{stem}.jsonl", records)
        for path in shards:
            path.unlink()
    return records


class AppendLog:
    """A JSONL file that a generation stage appends to one flushed record at a time, and a rerun continues.

    Opening an existing file keeps its complete lines and cuts off a line that a kill left half-written, so a
    resumed run loses nothing that was written and duplicates nothing: `done` holds the keys already there.
    """

    def __init__(self, path: str | os.PathLike, key: Callable[[dict], Hashable]):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        if self.path.exists():
            data = self.path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):
                log.warning("%s: dropping a half-written last line (the run was killed while writing it)", self.path)
                with open(self.path, "r+b") as f:
                    f.truncate(complete)
            self.records = [json.loads(line) for line in data[:complete].decode("utf-8").splitlines() if line.strip()]
        self.done = {key(r) for r in self.records}
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:  # a full disk: name the file (a rerun drops the half-written line)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.records.append(record)
        self.done.add(self.key(record))

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
