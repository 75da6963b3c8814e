"""The lifecycle every stage shares, from the hidden partial directory to the finished output: one rule, stated once.

- An existing output is refused unless `overwrite`.
- The work happens in `.<output>.partial`, marked with the hash of the stage's config (`overwrite` aside).
- A rerun with the same config resumes what the partial holds (checkpoints, append logs); a changed config, or a stage
  with nothing resumable, starts over. A partial that a live process on this machine is building is refused.
- The finished partial, with metrics.json and polyalign_recipe.json, is renamed into place: the output appears whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from .config import build_dataclass, config_hash, split_known
from .errors import ConfigError, PolyalignError
from .io import partial_dir, promote, write_json

log = logging.getLogger(__name__)

HASH_MARKER = "polyalign_config_hash"
OWNER_MARKER = "polyalign_owner"


def parse_training_keys(raw: dict, source: str | None, own_cls, trl_cls, *, dataset_help: str,
                        output_help: str = "where to write the trained model"):
    """The config steps every training stage shares: polyalign's keys vs the trl config's, the required keys, and
    LoRA (a 4/8-bit base trains only through adapters). Returns (own args, trl kwargs, LoraArgs or None)."""
    from .models import LoraArgs

    own, trl_kwargs = split_known(raw, own_cls, trl_cls, source)
    args = build_dataclass(own_cls, own, source)
    if not args.output_dir:
        raise ConfigError(source, "output_dir", f"missing: {output_help}")
    if args.dataset is None:
        raise ConfigError(source, "dataset", f"missing: {dataset_help}")
    lora = None
    if args.lora not in (None, False):
        lora = build_dataclass(LoraArgs, {} if args.lora is True else args.lora, source, prefix="lora.")
    elif args.load_in_4bit or args.load_in_8bit:
        raise ConfigError(source, "load_in_4bit" if args.load_in_4bit else "load_in_8bit",
                          "a 4/8-bit base can only be trained through LoRA adapters: add `lora: true`")
    return args, trl_kwargs, lora


def build_trl_config(trl_cls, kwargs: dict, args, source: str | None):
    """The trl config of a stage: bf16 only where the hardware has it; without CUDA a gloo CPU group (so several
    processes work under torchrun / `accelerate launch --multi_gpu`); checkpoints in the partial directory."""
    from .models import cuda_available

    kwargs = dict(kwargs)
    kwargs.setdefault("bf16", cuda_available() and args.dtype in ("auto", "bf16", "bfloat16"))
    kwargs.setdefault("use_cpu", not cuda_available())
    kwargs["output_dir"] = str(partial_dir(args.output_dir))
    try:
        return trl_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(source, None, f"invalid {trl_cls.__name__}: {e}") from None


def refuse_existing(final: Path, overwrite: bool, source: str | None) -> None:
    if final.exists() and not overwrite:
        raise ConfigError(source, "output_dir", f"{final} already exists (pass --overwrite to replace it)")


def last_complete_checkpoint(directory: Path, is_main: bool) -> str | None:
    """The newest checkpoint a kill did not cut short: the Trainer writes trainer_state.json last. (transformers'
    `get_last_checkpoint` takes the highest-numbered one even when a kill cut it short.)"""
    def step(path: Path) -> int:
        suffix = path.name.split("-")[-1]
        return int(suffix) if suffix.isdigit() else -1

    for checkpoint in sorted(directory.glob("checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            log.warning("%s is incomplete (the run was killed while saving it): skipping it", checkpoint)
            if is_main:
                shutil.rmtree(checkpoint, ignore_errors=True)
    return None


class StageRun:
    """One stage's output directory, from the partial sibling to the finished output (the module docstring's rule).

        run = StageRun(output_dir, raw, stage="arbitrage", overwrite=args.overwrite, source=source)  # refuses an
                                                                                     # existing output
        resumed = run.prepare()          # main process: start over or keep the partial; write the markers
        ... work in run.partial (append logs resume from what is there) ...
        run.finish(metrics)              # main process: metrics, recipe, rename into place

    `resumable=False` (merge: nothing in a cut merge is worth keeping) always starts over.
    """

    def __init__(self, final: str | Path, raw: dict, *, stage: str, overwrite: bool, source: str | None = None,
                 is_main: bool = True, resumable: bool = True):
        self.final = Path(final)
        self.partial = partial_dir(self.final)
        self.raw, self.stage, self.source = raw, stage, source
        self.overwrite = overwrite
        self.digest = config_hash({k: v for k, v in raw.items() if k != "overwrite"})
        self.is_main, self.resumable = is_main, resumable
        self.resumed = False
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
                    log.warning("%s holds %s: starting over", self.partial,
                                "a run with another config" if marker.is_file() else "an unfinished run")
                    shutil.rmtree(self.partial)
            self.resumed = same
        if self.is_main:
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.digest)
            (self.partial / OWNER_MARKER).write_text(f"{socket.gethostname()}:{os.getpid()}")
        return self.resumed

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
        """Main process: remove the work files (`drop`: glob patterns) and markers, write metrics and recipe, rename
        the partial into place."""
        for pattern in (*drop, HASH_MARKER, OWNER_MARKER):
            for path in self.partial.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if metrics is not None:
            write_json(self.partial / "metrics.json", metrics)
        write_json(self.partial / "polyalign_recipe.json", self.recipe())
        promote(self.partial, self.final, overwrite=self.overwrite)
        return self.final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrainingRun(StageRun):
    """A training stage's run: what it resumes is the newest complete checkpoint.

        run = TrainingRun(output_dir, raw, stage="sft", overwrite=..., source=source, is_main=state.is_main_process)
        resume = run.prepare()            # a checkpoint to resume from, or None
        with run.building():              # a failure here, before any checkpoint exists, leaves no trace
            trainer = ...
        trainer.train(resume_from_checkpoint=resume)
        run.finish(metrics, keep_checkpoints=...)   # main process
    """

    def __init__(self, final: str | Path, raw: dict, *, stage: str, overwrite: bool, source: str | None = None,
                 is_main: bool):
        super().__init__(final, raw, stage=stage, overwrite=overwrite, source=source, is_main=is_main)
        self.resume: str | None = None

    def prepare(self) -> str | None:
        super().prepare()
        self.resume = last_complete_checkpoint(self.partial, self.is_main)
        return self.resume

    def has_work(self) -> bool:
        return self.resume is not None

    def finish(self, metrics: dict | None, *, keep_checkpoints: bool = False, drop: tuple[str, ...] = ()) -> Path:
        """Drop checkpoints (unless kept) and the pickled training arguments (not ours to ship), then promote."""
        return super().finish(metrics, drop=(*drop, "training_args.bin", *(() if keep_checkpoints
                                                                         else ("checkpoint-*",))))


def barrier() -> None:
    """Wait for every process of a distributed run (a no-op in one process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
