"""Errors a user can act on: each renders as one line naming where the problem is."""

from __future__ import annotations


class PolyalignError(Exception):
    """Base class: the CLI prints `str(error)` as one line and exits non-zero."""


class InputError(PolyalignError):
    """Bad data: names the file (or dataset), the line or row, and the field."""

    def __init__(self, source: str, message: str, *, line: int | None = None, row: int | None = None,
                 field: str | None = None):
        self.source, self.line, self.row, self.field, self.message = source, line, row, field, message
        where = source
        if line is not None:
            where += f":{line}"
        elif row is not None:
            where += f" row {row}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class ConfigError(PolyalignError):
    """Bad recipe or command-line option: names the config file and the key."""

    def __init__(self, source: str | None, key: str | None, message: str):
        where = source or "command line"
        if key:
            where += f": '{key}'"
        super().__init__(f"{where}: {message}")
