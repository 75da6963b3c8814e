"""The lifecycle every stage shares, from the hidden partial directory to the finished output: one rule, stated once.

- An existing output is refused unless `overwrite`.
- The work happens in `.<output>.partial`, marked with the hash of the stage's config (`overwrite` aside).
- A rerun with the same config resumes what the partial holds (checkpoints, append logs); a changed config, or a stage
  with nothing resumable, starts over. A partial that a live process on this machine is building is refused.
- The finished partial, with metrics.json and polyalign_recipe.json, is renamed into place: the output appears whole.
- Every record written in a partial (metrics, recipe, a nested stage's LoRA adapter) names paths where they will be
  once it is renamed (`published`): nothing is rewritten after the rename.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

from align.core.config import recipe_hash
from align.core.errors import ConfigError, PolyalignError, writing_to
from align.core.io import partial_dir, promote, write_json

log = logging.getLogger(__name__)


HASH_MARKER = "polyalign_config_hash"


OWNER_MARKER = "polyalign_owner"


# The runs this process builds (their main process), outermost first: the online loop's own and those nested in it.
_building: list[StageRun] = []


def published(value):
    """`value`, a path or a record holding paths (dicts, lists), as it will read once the partials of the runs this
    process builds are renamed into place, innermost first; anything else as it is. Every record written in a partial
    names paths this way, so none is rewritten after the rename. A path keeps its form (relative or absolute)."""
    if isinstance(value, dict):
        return {k: published(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [published(v) for v in value]
    if isinstance(value, Path):
        return Path(published(str(value)))
    if isinstance(value, str):
        for run in reversed(_building):
            for old, new in run.moves:
                if value == old or value.startswith(old + os.sep):
                    value = new + value[len(old) :]
                    break
    return value


def refuse_existing(final: Path, overwrite: bool, source: str | None) -> None:
    if final.exists() and not overwrite:
        raise ConfigError(source, "output_dir", f"{final} already exists (pass --overwrite to replace it)")


class StageRun:
    """One stage's output directory, from the partial sibling to the finished output (the module docstring's rule).

        run = StageRun(output_dir, raw, stage="arbitrage", overwrite=args.overwrite, source=source)  # refuses an
                                                                                     # existing output
        resumed = run.prepare()          # main process: start over or keep the partial; write the markers
        ... work in run.partial (append logs resume from what is there) ...
        run.finish(metrics)              # main process: metrics, recipe, rename into place

    `resumable=False` (merge: nothing in a cut merge is worth keeping) always starts over.
    """

    def __init__(
        self,
        final: str | Path,
        raw: dict,
        *,
        stage: str,
        overwrite: bool,
        source: str | None = None,
        is_main: bool = True,
        resumable: bool = True,
    ):
        self.final = Path(final)
        self.partial = partial_dir(self.final)
        self.raw, self.stage, self.source = raw, stage, source
        self.overwrite = overwrite
        self.digest = recipe_hash(raw)
        self.is_main, self.resumable = is_main, resumable
        self.resumed = False
        self.moves: tuple[tuple[str, str], ...] = ()  # (partial, final), as given and resolved: what `published` maps
        if self.final.exists() and not self.final.is_dir():
            raise ConfigError(source, "output_dir", f"{self.final} exists and is a file; give a directory")
        refuse_existing(self.final, self.overwrite, source)

    def prepare(self) -> bool:
        """Keep a partial of the same config (True: there is work to resume), clear any other; mark it as ours."""
        marker = self.partial / HASH_MARKER
        if self.partial.exists():
            same = self.resumable and marker.is_file() and marker.read_text().strip() == self.digest
            if self.is_main:
                self._refuse_live_owner()
                if not same:
                    log.warning(
                        "%s holds %s: starting over",
                        self.partial,
                        "a run with another config" if marker.is_file() else "an unfinished run",
                    )
                    shutil.rmtree(self.partial)
            self.resumed = same
        if self.is_main:
            writing_to.append(str(self.partial))
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.digest)
            (self.partial / OWNER_MARKER).write_text(f"{socket.gethostname()}:{os.getpid()}")
            self.moves = (
                (str(self.partial), str(self.final)),
                (str(self.partial.resolve()), str(self.final.resolve())),
            )
            _building[:] = [run for run in _building if run.partial != self.partial] + [self]
        return self.resumed

    def prepare_shared(self, state) -> bool:
        """`prepare` on the main process of accelerate's `state`, with every process waiting for it; True (on the
        main process) when there is work to resume."""
        resumed = self.prepare() if self.is_main else False
        state.wait_for_everyone()
        return resumed

    def _refuse_live_owner(self) -> None:
        try:
            host, pid = (self.partial / OWNER_MARKER).read_text().rsplit(":", 1)
            pid = int(pid)
        except (OSError, ValueError):
            return
        if host == socket.gethostname() and pid != os.getpid() and _alive(pid):
            raise PolyalignError(f"another run is building {self.final} (pid {pid}); wait for it, or stop it")

    def building(self):
        """Context for loading and building: on failure, a partial with nothing worth keeping is removed."""
        run = self

        class _Building:
            def __enter__(self):
                return run

            def __exit__(self, kind, value, traceback):
                if kind is not None and run.is_main and not run.has_work():
                    shutil.rmtree(run.partial, ignore_errors=True)
                return False

        return _Building()

    def has_work(self) -> bool:
        return self.resumed

    def recipe(self) -> dict:
        return {"stage": self.stage, "config": self.raw, "source": self.source}

    def finish(self, metrics: dict | None, *, drop: tuple[str, ...] = ()) -> Path:
        """Main process: remove the work files (`drop`: glob patterns) and markers, write metrics and recipe (their
        paths `published`), rename the partial into place."""
        for pattern in (*drop, HASH_MARKER, OWNER_MARKER):
            for path in self.partial.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if metrics is not None:
            write_json(self.partial / "metrics.json", published(metrics))
        write_json(self.partial / "polyalign_recipe.json", published(self.recipe()))
        promote(self.partial, self.final, overwrite=self.overwrite)
        if str(self.partial) in writing_to:
            writing_to.remove(str(self.partial))
        if self in _building:
            _building.remove(self)
        return self.final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
