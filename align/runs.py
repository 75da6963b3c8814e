"""The lifecycle every training stage shares (SFT, reward model, DPO): nothing half-written, nothing lost.

A stage trains in a hidden sibling `.<output_dir>.partial`, marked with the hash of its config. A rerun with the same
config resumes from the newest checkpoint a kill did not cut short; a changed config starts over. The finished model
is renamed into place with its metrics and recipe; checkpoints and pickled training arguments are not shipped.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .config import build_dataclass, config_hash, split_known
from .errors import ConfigError
from .io import partial_dir, promote, write_json

log = logging.getLogger(__name__)

HASH_MARKER = "polyalign_config_hash"


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
    """The newest checkpoint a kill did not cut short: the Trainer writes trainer_state.json last."""
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


class TrainingRun:
    """One training stage's output directory, from the partial sibling to the finished model.

        run = TrainingRun(output_dir, raw_config, is_main=state.is_main_process)
        resume = run.prepare()            # a checkpoint to resume from, or None
        with run.building():              # a failure here, before any checkpoint exists, leaves no trace
            trainer = ...
        trainer.train(resume_from_checkpoint=resume)
        run.finish(metrics, recipe, overwrite=..., keep_checkpoints=...)   # main process
    """

    def __init__(self, final: str | Path, raw: dict, *, is_main: bool):
        self.final = Path(final)
        self.partial = partial_dir(self.final)
        self.digest = config_hash({k: v for k, v in raw.items() if k != "overwrite"})
        self.is_main = is_main
        self.resume: str | None = None

    def prepare(self) -> str | None:
        """Reuse the checkpoints of a killed run with the same config; start clean otherwise."""
        marker = self.partial / HASH_MARKER
        if self.partial.exists() and (not marker.exists() or marker.read_text().strip() != self.digest):
            if self.is_main:
                log.warning("%s holds a run with another config: starting over", self.partial)
                shutil.rmtree(self.partial)
        self.resume = last_complete_checkpoint(self.partial, self.is_main) if self.partial.exists() else None
        if self.is_main:
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.digest)
        return self.resume

    def building(self):
        """Context for loading and building: on failure, a partial with nothing worth keeping is removed."""
        run = self

        class _Building:
            def __enter__(self):
                return run

            def __exit__(self, kind, value, traceback):
                if kind is not None and run.is_main and run.resume is None:
                    shutil.rmtree(run.partial, ignore_errors=True)
                return False

        return _Building()

    def finish(self, metrics: dict, recipe: dict, *, overwrite: bool, keep_checkpoints: bool = False) -> Path:
        """Main process: drop checkpoints and internals, write metrics and recipe, rename into place."""
        if not keep_checkpoints:
            for checkpoint in self.partial.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        (self.partial / HASH_MARKER).unlink(missing_ok=True)
        (self.partial / "training_args.bin").unlink(missing_ok=True)  # a pickle: not ours to ship
        write_json(self.partial / "metrics.json", metrics)
        write_json(self.partial / "polyalign_recipe.json", recipe)
        promote(self.partial, self.final, overwrite=overwrite)
        return self.final


def barrier() -> None:
    """Wait for every process of a distributed run (a no-op in one process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
