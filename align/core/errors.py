"""Errors a user can act on: each renders as one line naming where the problem is."""

from __future__ import annotations

import errno
import re


class PolyalignError(Exception):
    """Base class: the CLI prints `str(error)` as one line and exits non-zero."""


class InputError(PolyalignError):
    """Bad data: names the file (or dataset), the line or row, and the field."""

    def __init__(
        self, source: str, message: str, *, line: int | None = None, row: int | None = None, field: str | None = None
    ):
        self.source, self.line, self.row, self.field, self.message = source, line, row, field, message
        where = source
        if line is not None:
            where += f":{line}"
        elif row is not None:
            where += f" row {row}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class ConfigSource(str):
    """The recipe file a stage's config came from, remembering which keys the command line overrode, so that an
    error names the place the offending value was written."""

    def __new__(cls, path: str, overridden: set[str] = frozenset()):
        source = super().__new__(cls, path)
        source.overridden = frozenset(overridden)
        return source

    def where(self, key: str | None) -> str:
        if key is not None:
            parts = [p for p in re.split(r"[.\[\]]+", key) if p]
            if any(".".join(parts[:n]) in self.overridden for n in range(1, len(parts) + 1)):
                return "command line"
        return str(self)


class ConfigError(PolyalignError):
    """Bad recipe or command-line option: names the config file (or the command line) and the key.

    Raised with `source=None` by code that does not know the file (a dataclass's own checks); `config.build_dataclass`
    re-raises it naming the file."""

    def __init__(self, source: str | None, key: str | None, message: str):
        self.source, self.key, self.message = source, key, message
        if isinstance(source, ConfigSource):
            where = source.where(key)
        else:
            where = source or "command line"
        if key:
            where += f": '{key}'"
        super().__init__(f"{where}: {message}")

    def located(self, source: str | None, prefix: str = "") -> ConfigError:
        """The same error, naming `source` and the key under `prefix`, when it named no file of its own."""
        if self.source is not None or source is None:
            return self
        return ConfigError(source, f"{prefix}{self.key}" if self.key else prefix.rstrip(".") or None, self.message)


# The partial output directory of the stage running in this process: a failed write that names no file (a full disk
# under safetensors or a trainer's save) is reported as a failure to write there.
writing_to: list[str] = []


def io_failure(error: BaseException) -> str | None:
    """One line for a failed read or write (a full disk, a file too large, a file gone or unreadable), naming the
    file where the error does, else the output being written; None for any other error."""
    if isinstance(error, OSError) and error.errno is not None:
        reason = f"{error.strerror or error} ({errno.errorcode.get(error.errno, error.errno)})"
        if error.filename:
            return f"{error.filename}: {reason}"
    elif type(error).__name__ == "SafetensorError" and "I/O error" in str(error):
        reason = str(error).split("I/O error: ", 1)[-1]
    else:
        return None
    where = f"writing in {writing_to[-1]}" if writing_to else "reading or writing a file"
    return f"{where}: {reason}"
