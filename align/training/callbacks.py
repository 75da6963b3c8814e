"""Trainer callbacks and the metrics they make possible: a loss logged at every checkpoint (so a resumed run reports
its whole training), preemption at a step boundary, and metrics.json's training figures."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from align.core.preemption import agreed_signal
from align.training.sharded import training_engine


class RunTally(TrainerCallback):
    """What a resumed run needs to report the whole training: the step and token count it started from (the state is
    restored from the checkpoint before training begins), and a logged loss at every checkpoint, so that the restored
    log history covers every step before the resume point exactly (the loss of steps since the last log is otherwise
    lost with the killed process)."""

    def __init__(self):
        self.start_step, self.start_tokens, self.began = 0, 0, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step, self.start_tokens, self.began = (
            state.global_step,
            state.num_input_tokens_seen or 0,
            time.time(),
        )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


class PreemptionCallback(TrainerCallback):
    """At each step boundary: if any process got SIGTERM or SIGUSR1 (align.core.preemption), save a checkpoint and stop."""

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
