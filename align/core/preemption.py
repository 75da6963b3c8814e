"""Preemption as clusters do it: SIGTERM before the kill, or SIGUSR1 when a job asks for a warning
(`#SBATCH --signal=USR1@120`).

Every `polyalign` command runs with `handlers()` installed. Outside training the signal stops the command at once
with `Preempted`: the generation stages append and flush one record at a time, so everything answered so far is on
disk and a rerun continues from it. Inside training (`deferred()`, around `trainer.train`) the signal is only
noted: align.training.callbacks' PreemptionCallback makes the trainer save a checkpoint at the next step boundary (every process agrees on
which) and stop, and the stage then raises `Preempted` naming that checkpoint instead of writing an output. Either
way the command exits with 128 + the signal's number and one line saying so.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from align.core.errors import PolyalignError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_state = {"deferred": 0, "signal": None}


class Preempted(PolyalignError):
    def __init__(self, signum: int, what: str):
        self.signum = signum
        super().__init__(f"preempted by {signal.Signals(signum).name}: {what}")


def _handle(signum, frame) -> None:
    _state["signal"] = signum
    if not _state["deferred"]:
        raise Preempted(signum, "stopped; every record written so far is kept, and the same command continues from it")


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """SIGTERM and SIGUSR1 handled as preemption for the duration of a command (main thread only)."""
    _state["signal"] = None
    with _handling(_handle):
        yield


@contextlib.contextmanager
def forwarded(process) -> Iterator[None]:
    """A signal during the block is noted and passed on to `process` and every process under it (a launched stage:
    the launcher and its workers, which checkpoint on it, as a cluster signals every process of a job step). On
    leaving, waits until each of them has exited, so that the caller never reports a stage still saving."""
    import psutil

    signalled: dict[int, psutil.Process] = {}

    def forward(signum, frame) -> None:
        _state["signal"] = signum
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(process.pid)
            for target in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    target.send_signal(signum)
                    signalled[target.pid] = target

    with _handling(forward):
        try:
            yield
        finally:
            psutil.wait_procs(list(signalled.values()))


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """`handler` for SIGNALS during the block, the previous handlers after it (signals reach the main thread only:
    elsewhere, nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal during the block is noted (`requested`, `agreed_signal`), not raised."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


def requested() -> int | None:
    """The preemption signal received so far, if any."""
    return _state["signal"]


def agreed_signal() -> int:
    """The signal any process received (0: none), the same answer on every process so that all stop together."""
    import torch

    local = requested() or 0
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    flag = torch.tensor([local], dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
