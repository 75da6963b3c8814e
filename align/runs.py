"""The lifecycle every stage shares, from the hidden partial directory to the finished output: one rule, stated once.

- An existing output is refused unless `overwrite`.
- The work happens in `.<output>.partial`, marked with the hash of the stage's config (`overwrite` aside).
- A rerun with the same config resumes what the partial holds (checkpoints, append logs); a changed config, or a stage
  with nothing resumable, starts over. A partial that a live process on this machine is building is refused.
- The finished partial, with metrics.json and polyalign_recipe.json, is renamed into place: the output appears whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from transformers import TrainerCallback

from .config import build_dataclass, config_hash, require, split_known
from .console import print_rows
from .data import language_mix, load_records
from .data.loader import describe_skipped
from .errors import ConfigError, PolyalignError, writing_to
from .io import partial_dir, promote, relocate_paths, write_json
from .models import LoraArgs, ModelArgs, load_model
from .preemption import Preempted, agreed_signal, deferred

log = logging.getLogger(__name__)

HASH_MARKER = "polyalign_config_hash"
OWNER_MARKER = "polyalign_owner"


@dataclass
class TrainingArgs(ModelArgs):
    """The keys every training stage has; a stage's own Args add to them, and every other recipe key is a field of
    the stage's trl config."""

    dataset: Any = None
    output_dir: str | None = None
    overwrite: bool = False
    lora: dict | bool | None = None  # true for the defaults, or {r, alpha, dropout, target_modules, ...}
    save_merged: bool = False  # with LoRA: also write the adapter merged into its base under <output_dir>/merged
    keep_checkpoints: bool = False


@dataclass
class TrainingJob:
    """A training stage's parsed recipe: polyalign's keys, the trl config, LoRA, and where the recipe was written."""

    args: TrainingArgs
    training: Any  # the stage's trl config (SFTConfig, DPOConfig, RewardConfig)
    lora: LoraArgs | None
    raw: dict = field(default_factory=dict)
    source: str | None = None


def parse_training_keys(raw: dict, source: str | None, own_cls, trl_cls, *, dataset_help: str,
                        output_help: str = "where to write the trained model"):
    """The config steps every training stage shares: polyalign's keys vs the trl config's, the required keys, and
    LoRA (a 4/8-bit base trains only through adapters). Returns (own args, trl kwargs, LoraArgs or None)."""
    own, trl_kwargs = split_known(raw, own_cls, trl_cls, source)
    args = build_dataclass(own_cls, own, source)
    require(args, source, output_dir=output_help, dataset=dataset_help)
    lora = None
    if args.lora not in (None, False):
        lora = build_dataclass(LoraArgs, {} if args.lora is True else args.lora, source, prefix="lora.")
        check_values(LORA_RULES, vars(lora), source, prefix="lora.")
    elif args.load_in_4bit or args.load_in_8bit:
        raise ConfigError(source, "load_in_4bit" if args.load_in_4bit else "load_in_8bit",
                          "a 4/8-bit base can only be trained through LoRA adapters: add `lora: true`")
    return args, trl_kwargs, lora


def take_chat_template_path(args, trl_kwargs: dict, source: str | None) -> None:
    """trl's `chat_template_path` is polyalign's `chat_template` (align.templates applies it before tokenising)."""
    path = trl_kwargs.pop("chat_template_path", None)
    if path:
        if args.chat_template:
            raise ConfigError(source, "chat_template_path", "give chat_template or chat_template_path, not both")
        args.chat_template = path


class Rule(NamedTuple):
    """A value a key must have; `when` (given the config's values) says whether the key is used at all."""

    key: str
    test: Callable[[Any], bool]
    message: str
    when: Callable[[dict], bool] = lambda values: True


def _steps_or_ratio(value) -> bool:
    """A whole number of steps, or below 1 a ratio of the total steps (as transformers reads these values)."""
    return value >= 0 and (value < 1 or value == int(value))


def _by_steps(what: str) -> Callable[[dict], bool]:
    """Whether `<what>_strategy` is "steps" (trl's strategies are str enums)."""
    return lambda values: str(getattr(values[f"{what}_strategy"], "value", values[f"{what}_strategy"])) == "steps"


STEPS_OR_RATIO = "must be a whole number of steps > 0, or a ratio of the total steps in (0, 1)"
# Values that trl or torch accept while the config is built and refuse (or misread) only once training starts:
# checked while the recipe is read, so that the error names the key and where it was written, before any model loads.
TRAINING_RULES = (
    Rule("learning_rate", lambda v: v >= 0, "must be >= 0"),
    Rule("num_train_epochs", lambda v: v > 0, "must be > 0", lambda values: values["max_steps"] == -1),
    Rule("max_steps", lambda v: v == -1 or v >= 1, "must be -1 (train for num_train_epochs) or at least 1"),
    *(Rule(key, lambda v: v >= 1, "must be at least 1") for key in (
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length")),
    Rule("warmup_steps", _steps_or_ratio, "must be a whole number of steps, or a ratio of the total steps in [0, 1)"),
    Rule("weight_decay", lambda v: v >= 0, "must be >= 0"),
    Rule("max_grad_norm", lambda v: v >= 0, "must be >= 0 (0 turns clipping off)"),
    *(Rule(f"{what}_steps", lambda v: v > 0 and _steps_or_ratio(v), STEPS_OR_RATIO, _by_steps(what))
      for what in ("logging", "save", "eval")),
    Rule("beta", lambda v: v > 0, "must be > 0"),  # DPO
)
# LoraArgs' values, checked where the stage reads them (peft refuses them only when the model is wrapped).
LORA_RULES = (
    Rule("r", lambda v: v >= 1, "must be at least 1"),
    Rule("alpha", lambda v: v > 0, "must be > 0"),
    Rule("dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
)


def check_values(rules, values: dict, source: str | None, prefix: str = "") -> None:
    """Every rule whose key `values` sets (to other than None) and uses: a ConfigError naming the first broken one."""
    for rule in rules:
        value = values.get(rule.key)
        if value is not None and rule.when(values) and not rule.test(value):
            raise ConfigError(source, f"{prefix}{rule.key}", f"{rule.message}, got {value!r}")


# trl defaults that polyalign changes: never report to a tracker nobody configured, and save checkpoints often
# enough to resume after a kill.
TRAINING_DEFAULTS = {"report_to": "none", "logging_steps": 10, "save_strategy": "steps", "save_steps": 200,
                     "save_total_limit": 2}


def build_trl_config(trl_cls, kwargs: dict, args, source: str | None):
    """The trl config of a stage: polyalign's defaults, then the recipe's values checked (TRAINING_RULES); bf16 only
    where the hardware has it (trl defaults to bf16, which a CPU run cannot use); without CUDA a gloo CPU group (so
    several processes work under torchrun / `accelerate launch --multi_gpu`); checkpoints in the partial directory."""
    from .models import cuda_available  # looked up per call: tests stand in a machine without CUDA

    kwargs = {**TRAINING_DEFAULTS, **kwargs}
    defaults = {f.name: f.default for f in dataclasses.fields(trl_cls) if f.default is not dataclasses.MISSING}
    check_values(TRAINING_RULES, {**defaults, **kwargs}, source)
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
            writing_to.append(str(self.partial))
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.digest)
            (self.partial / OWNER_MARKER).write_text(f"{socket.gethostname()}:{os.getpid()}")
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
        """Main process: remove the work files (`drop`: glob patterns) and markers, write metrics and recipe, rename
        the partial into place."""
        for pattern in (*drop, HASH_MARKER, OWNER_MARKER):
            for path in self.partial.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if metrics is not None:
            write_json(self.partial / "metrics.json", metrics)
        write_json(self.partial / "polyalign_recipe.json", self.recipe())
        relocate_paths(self.partial, self.partial.resolve(), self.final.resolve())
        if not self.partial.is_absolute():
            relocate_paths(self.partial, self.partial, self.final)
        promote(self.partial, self.final, overwrite=self.overwrite)
        if str(self.partial) in writing_to:
            writing_to.remove(str(self.partial))
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
        self.layout: str | None = None  # how the batches reach the model, where a stage chooses (align.packed_pairs)
        self.real_token_fraction: float | None = None
        self.skipped = Counter()  # rows the formats dropped, per reason (Arena ties, undesirable KTO answers)

    def run(self) -> Path:
        from accelerate import PartialState

        job = self.job
        state = PartialState(cpu=job.training.use_cpu)
        main = state.is_main_process
        if main:
            warn_unsupported_engine(state)
        run = TrainingRun(job.args.output_dir, job.raw, stage=self.stage, overwrite=job.args.overwrite,
                          source=job.source, is_main=main)  # an existing output is refused before any work
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
            raise Preempted(preemption.signum, f"checkpoint-{preemption.step} saved in {run.partial}; the same command "
                            "resumes from it")
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
            self.records = load_records(self.job.args.dataset, self.kind, seed=self.job.training.seed,
                                        source=self.job.source, skipped=self.skipped)
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
                save_merged(trainer, directory / "merged", adapter=directory,
                            load=lambda path: load_model(self.job.args.model_args(path)))

    def metrics(self, trainer, result, common: dict) -> dict:
        return common

    def rows(self, metrics: dict) -> list[tuple[str, object]]:
        return [("steps", metrics["steps"]), ("train loss", f"{metrics['train_loss']:.4f}")]


def describe_languages(records: list[dict]) -> str:
    """`3 languages: fr 2, de 1, ja 1`."""
    mix = language_mix(records)
    return f"{len(mix)} languages: " + ", ".join(f"{lang} {n}" for lang, n in mix.items())


def gather_on_save(trainer) -> None:
    """A stage's output is one loadable model on every engine: under FSDP the final save gathers a full state dict (a
    sharded one, right for resuming checkpoints, leaves no weights in the output). ZeRO-3 gathers when the accelerate
    config sets zero3_save_16bit_model, as recipes/accelerate/deepspeed_zero3.yaml does."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


def is_sharded(trainer) -> bool:
    """Whether no one process holds the whole model (FSDP, DeepSpeed ZeRO)."""
    return trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled


@contextlib.contextmanager
def unpartitioned_loading(trainer):
    """Under ZeRO-3 transformers partitions every model it loads across the processes, a collective call: the main
    process loading a model alone must step outside it, or it waits forever for the others."""
    if not trainer.is_deepspeed_enabled:
        yield
        return
    from transformers.integrations import deepspeed

    held = deepspeed._hf_deepspeed_config_weak_ref  # transformers' one switch for zero.Init; no public getter
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = held


def save_merged(trainer, directory: Path, *, adapter: Path | None = None, load=None) -> None:
    """The trained adapter merged into its base, with the tokenizer: a model that loads without peft. A sharded
    model, whose parameters no one process holds, is merged on the CPU: `load(adapter)` reads the saved adapter on
    its base."""
    if is_sharded(trainer):
        with unpartitioned_loading(trainer):
            merged = load(str(adapter)).merge_and_unload()
    else:
        merged = trainer.model.merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)
    trainer.processing_class.save_pretrained(directory)


class RunTally(TrainerCallback):
    """What a resumed run needs to report the whole training: the step and token count it started from (the state is
    restored from the checkpoint before training begins), and a logged loss at every checkpoint, so that the restored
    log history covers every step before the resume point exactly (the loss of steps since the last log is otherwise
    lost with the killed process)."""

    def __init__(self):
        self.start_step, self.start_tokens, self.began = 0, 0, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step, self.start_tokens, self.began = state.global_step, state.num_input_tokens_seen or 0, time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


class PreemptionCallback(TrainerCallback):
    """At each step boundary: if any process got SIGTERM or SIGUSR1 (align.preemption), save a checkpoint and stop."""

    def __init__(self):
        self.signum: int | None = None
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = agreed_signal()
        if signum:
            self.signum, self.step = signum, state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


def whole_run_loss(trainer, result, start_step: int) -> float | None:
    """The mean training loss over every step, as an uninterrupted run reports it: the steps before the resume point
    from the restored log history (weighted by the steps each log covers), the rest from this process."""
    if start_step == 0:
        return result.training_loss
    before, covered, total = [h for h in trainer.state.log_history if "loss" in h and h["step"] <= start_step], 0, 0.0
    for entry in before:
        total += entry["loss"] * (entry["step"] - covered)
        covered = entry["step"]
    if covered != start_step:
        return None  # a checkpoint from before RunTally: the losses of some steps were never logged
    after = trainer.state.global_step - start_step
    return (total + result.training_loss * after) / max(trainer.state.global_step, 1)


def training_metrics(trainer, result, tally: RunTally, processes: int, lora: bool, resume: str | None) -> dict:
    """What every training stage's metrics.json says about the run itself: counts and losses over the whole training,
    resumed or not; timings over the steps this process ran (`timed_steps`, all of them unless resumed)."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "processes": processes,
        "engine": training_engine(trainer),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "train_loss": whole_run_loss(trainer, result, tally.start_step),
        "final_logged_loss": history[-1]["loss"] if history else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", time.time() - tally.began), 2),
        "timed_steps": trainer.state.global_step - tally.start_step,
        "timed_tokens": (trainer.state.num_input_tokens_seen or 0) - tally.start_tokens,
        "resumed_from": Path(resume).name if resume else None,
        "lora": lora,
    }


def training_engine(trainer) -> str:
    """What trained the model, as accelerate ran it: `single`, `DDP`, `FSDP2`, `DeepSpeed ZeRO-3`, ...; the proof that a
    launch config took effect."""
    accelerator = trainer.accelerator
    if trainer.is_deepspeed_enabled:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return f"DeepSpeed ZeRO-{stage}"
    if trainer.is_fsdp_enabled:
        return f"FSDP{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    return "DDP" if accelerator.num_processes > 1 else "single"


def warn_unsupported_engine(state) -> None:
    """accelerate applies an FSDP config only on accelerators; on CPUs it quietly trains with DDP over gloo."""
    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
            and state.distributed_type == DistributedType.MULTI_CPU:
        log.warning("FSDP was asked for, but accelerate runs FSDP only on GPUs: this run trains with DDP over gloo "
                    "on the CPU (DeepSpeed ZeRO-3 does run on CPUs)")


def barrier() -> None:
    """Wait for every process of a distributed run (a no-op in one process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
