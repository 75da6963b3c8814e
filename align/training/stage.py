"""The training-stage lifecycle on top of align.core.lifecycle: resume from the newest complete checkpoint, build,
train with whole-run metrics and preemption, save (merged LoRA, sharded engines), finish."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from align.core.config import resolve_recipe
from align.core.console import print_rows
from align.core.lifecycle import StageRun
from align.core.preemption import Preempted, deferred
from align.data import language_mix, load_records
from align.data.loader import describe_skipped
from align.models.loading import load_model
from align.training.callbacks import PreemptionCallback, RunTally, training_metrics
from align.training.keys import TrainingJob
from align.training.sharded import gather_on_save, save_merged, warn_unsupported_engine

log = logging.getLogger(__name__)


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


class TrainingRun(StageRun):
    """A training stage's run: what it resumes is the newest complete checkpoint.

    run = TrainingRun(output_dir, raw, stage="sft", overwrite=..., source=source, is_main=state.is_main_process)
    resume = run.prepare()            # a checkpoint to resume from, or None
    with run.building():              # a failure here, before any checkpoint exists, leaves no trace
        trainer = ...
    trainer.train(resume_from_checkpoint=resume)
    run.finish(metrics, keep_checkpoints=...)   # main process
    """

    def __init__(
        self, final: str | Path, raw: dict, *, stage: str, overwrite: bool, source: str | None = None, is_main: bool
    ):
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
        return super().finish(
            metrics, drop=(*drop, "training_args.bin", *(() if keep_checkpoints else ("checkpoint-*",)))
        )


class TrainingStage:
    """A training stage's run, in the order every training stage follows. A subclass per stage (as trl pairs each
    config with its trainer) brings what is its own: `build` (the trainer), `metrics` and `rows` (what metrics.json
    and the summary add to the common ones), and where it differs from the default: `load` (`dataset`, read as `kind`
    records), `starting` (the line printed before training), `train`, `save` (the model or adapter, and with
    `save_merged` the adapter merged into its base under merged/).

        SFTStage(parse_sft_config(raw, source)).run()    # records=[...]: train on these instead of `dataset`
    """

    stage = label = kind = noun = ""  # the recipe's stage, the summary's title, load_records' kind, what a record is

    def __init__(self, job: TrainingJob, records: list[dict] | None = None):
        self.job, self.records = job, records
        self.wall = 0.0
        # how the batches reach the model, where a stage chooses (align.training.packed_pairs)
        self.layout: str | None = None
        self.real_token_fraction: float | None = None
        self.skipped = Counter()  # rows the formats dropped, per reason (Arena ties, undesirable KTO answers)

    def run(self) -> Path:
        from accelerate import PartialState

        job = self.job
        state = PartialState(cpu=job.training.use_cpu)
        main = state.is_main_process
        if main:
            warn_unsupported_engine(state)
        run = TrainingRun(
            job.args.output_dir,
            resolve_recipe(job.raw, type(job.args), job.source, type(job.training)),
            stage=self.stage,
            overwrite=job.args.overwrite,
            source=job.source,
            is_main=main,
        )  # an existing output is refused before any work
        described = self.load()
        if main:
            print(described, flush=True)
        resume = run.prepare()
        state.wait_for_everyone()
        with run.building():
            trainer = self.build()
        tally, preemption = RunTally(), PreemptionCallback()
        trainer.add_callback(preemption)  # first: a checkpoint it asks for gets RunTally's log too
        trainer.add_callback(tally)
        if main and (line := self.starting(resume)):
            print(line, flush=True)
        with deferred():
            result = self.train(trainer, resume)
        if preemption.signum:
            state.wait_for_everyone()
            raise Preempted(
                preemption.signum,
                f"checkpoint-{preemption.step} saved in {run.partial}; the same command resumes from it",
            )
        lora = hasattr(trainer.model, "peft_config")
        self.save(trainer, run.partial, main)
        state.wait_for_everyone()
        if main:
            common = training_metrics(trainer, result, tally, state.num_processes, lora, resume)
            if self.layout is not None:
                common |= {"padding_free": self.layout, "real_token_fraction": self.real_token_fraction}
            metrics = self.metrics(trainer, result, common)
            run.finish(metrics, keep_checkpoints=job.args.keep_checkpoints)
            print_rows(f"{self.label} summary", [*self.rows(metrics), ("output", str(run.final))])
        state.wait_for_everyone()
        barrier()
        return run.final

    def load(self) -> str:
        """Read and check the data (what can fail on bad input fails before any model loads); the line that says
        what it holds."""
        if self.records is None:
            self.records = load_records(
                self.job.args.dataset,
                self.kind,
                seed=self.job.training.seed,
                source=self.job.source,
                skipped=self.skipped,
            )
        line = f"{self.label} data: {len(self.records)} {self.noun} in {describe_languages(self.records)}"
        return f"{line}; {describe_skipped(self.skipped)}" if self.skipped else line

    def build(self):
        raise NotImplementedError

    def starting(self, resume: str | None) -> str | None:
        return f"Resuming from {resume}" if resume else None

    def train(self, trainer, resume: str | None):
        start = time.time()
        result = trainer.train(resume_from_checkpoint=resume)
        self.wall = time.time() - start
        counted = getattr(trainer, "tokens", None)  # the preference trainers count their real tokens
        self.real_token_fraction = counted.fraction(trainer.accelerator) if counted else None  # every process
        return result

    def save(self, trainer, directory: Path, is_main: bool) -> None:
        gather_on_save(trainer)
        trainer.save_model(str(directory))
        if self.job.args.save_merged and hasattr(trainer.model, "peft_config"):
            trainer.accelerator.wait_for_everyone()  # a sharded model is merged from the adapter on disk
            if is_main:
                save_merged(
                    trainer,
                    directory / "merged",
                    adapter=directory,
                    load=lambda path: load_model(self.job.args.model_args(path)),
                )

    def metrics(self, trainer, result, common: dict) -> dict:
        return common

    def rows(self, metrics: dict) -> list[tuple[str, object]]:
        return [("steps", metrics["steps"]), ("train loss", f"{metrics['train_loss']:.4f}")]


def describe_languages(records: list[dict]) -> str:
    """`3 languages: fr 2, de 1, ja 1`."""
    mix = language_mix(records)
    return f"{len(mix)} languages: " + ", ".join(f"{lang} {n}" for lang, n in mix.items())


def barrier() -> None:
    """Wait for every process of a distributed run (a no-op in one process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
