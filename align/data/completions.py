"""Answers that exist already, as a JSONL of `{"id", "completion"}`: a competitor's answers in evaluation, a teacher
that is a dataset (human-written, or a model run elsewhere) in arbitrage. Matched to prompts by `id`."""

from __future__ import annotations

import json

from align.core.errors import InputError


def read_completions(path: str) -> dict[str, str]:
    """id → completion; a line that is not a JSON object with a string `completion` is one error naming it."""
    by_id: dict[str, str] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None
    with f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"not JSON ({e.msg})", line=line_number) from None
            if not isinstance(row, dict) or not isinstance(row.get("completion"), str):
                raise InputError(path, "expected a string", line=line_number, field="completion")
            if row.get("id") is None:
                raise InputError(path, "missing: the id of the prompt answered", line=line_number, field="id")
            by_id[str(row["id"])] = row["completion"]
    return by_id
