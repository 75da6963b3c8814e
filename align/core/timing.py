"""Wall time per named step of a stage, for its metrics.json: where a run spends its time."""

from __future__ import annotations

import contextlib
import time


class Stopwatch:
    """Wall seconds per named step: `with clock("sampling"): ...` (a step timed twice adds up)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 3)
