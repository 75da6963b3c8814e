"""A pipeline stage as its own `accelerate launch` job: its config written to a file, the stage started as a
subprocess (`accelerate launch ... -m align.cli <stage> --config <file>`), its output shown and kept in a log.

Stages talk only through files, so a launched stage is the same stage: it resumes from its own partial output, and
the pipeline records it in `state.json` only when it exits 0. Each stage being its own process also frees its GPU
memory before the next one starts. The `launch` mapping holds accelerate launch's own options (`num_processes`,
`config_file`, `num_machines`, `main_process_ip`, ...), checked by accelerate's parser when the pipeline is read.

On several nodes accelerate launch must start on each of them with its own `machine_rank`: `prefix` is the command
that does so (`srun --nodes 2 --ntasks-per-node 1`), and an option's value may name an environment variable
(`machine_rank: $SLURM_NODEID`), expanded on each node by its shell. Without a prefix such values are expanded here.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from align.core import preemption
from align.core.errors import ConfigError, PolyalignError
from align.core.io import safe_name, write_json

# What `accelerate launch` asks for when it has no config file (it warns, then guesses): one machine, no mixed
# precision (the stage's own dtype decides), no dynamo.
WITHOUT_CONFIG_FILE = {"num_machines": 1, "mixed_precision": "no", "dynamo_backend": "no"}
# Launchers that start several processes on one machine; without one (and without a config file that names one),
# several processes need torchrun's, which accelerate calls --multi_gpu and which gives a gloo group on CPUs.
MULTI_PROCESS = ("multi_gpu", "use_fsdp", "use_deepspeed", "use_megatron_lm", "tpu", "cpu")
LOG_TAIL = 20


@dataclass
class Launch:
    """How a stage is started: accelerate launch's flags, after `prefix` (the command that starts it on every node)."""

    flags: list[str]
    prefix: list[str] = field(default_factory=list)

    def describe(self) -> str:
        launch = f"accelerate launch {' '.join(self.flags)}"
        return f"{shlex.join(self.prefix)} {launch}" if self.prefix else launch

    def argv(self, module_args: list[str]) -> list[str]:
        """The command line: with a prefix, a shell on each node expands the `$VARIABLE` values; without one, this
        process does."""
        command = [sys.executable, "-m", "accelerate.commands.launch"]
        if not self.prefix:
            return [*command, *(os.path.expandvars(f) for f in self.flags), *module_args]
        script = " ".join(f'"{f}"' if "$" in f else shlex.quote(f) for f in [*command, *self.flags, *module_args])
        return [*self.prefix, "bash", "-c", f"exec {script}"]


def launch_flags(launch: dict, source: str | None, key: str) -> Launch:
    """How to launch a stage from its `launch` mapping: accelerate launch's options, checked by its own parser (a
    bad option names `key`), and polyalign's `prefix`."""
    from accelerate.commands.launch import launch_command_parser

    if not isinstance(launch, dict):
        raise ConfigError(
            source, key, "expected a mapping of accelerate launch options (num_processes, config_file, ...)"
        )
    options = dict(launch)
    prefix = options.pop("prefix", None) or []
    if isinstance(prefix, str):
        prefix = shlex.split(prefix)
    if isinstance(prefix, list):  # started from this process: expanded here (the node rank is expanded per node)
        prefix = [os.path.expandvars(str(p)) for p in prefix]
    if not isinstance(prefix, list):
        raise ConfigError(
            source,
            f"{key}.prefix",
            "expected the command that starts accelerate launch on every "
            "node, e.g. 'srun --nodes 2 --ntasks-per-node 1'",
        )
    if "config_file" in options:
        if not Path(os.path.expandvars(str(options["config_file"]))).is_file():
            raise ConfigError(source, f"{key}.config_file", f"{options['config_file']} is not a file")
    else:
        options = {**WITHOUT_CONFIG_FILE, **options}
        processes = str(options.get("num_processes", 1) or 1)
        if (not processes.isdigit() or int(processes) > 1) and not any(options.get(k) for k in MULTI_PROCESS):
            options["multi_gpu"] = True
    flags = []
    for name, value in options.items():
        if value is True:
            flags.append(f"--{name}")
        elif value not in (False, None):
            flags += [f"--{name}", str(value)]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):  # a value a node's shell fills in is checked as a number
            launch_command_parser().parse_args([*("0" if "$" in f else f for f in flags), "-m", "align.cli"])
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise ConfigError(source, key, f"accelerate launch refuses it: {message}") from None
    return Launch(flags, prefix)


def run_launched(stage: str, command: str, cfg: dict, launch: Launch, run_dir: Path) -> None:
    """Run `polyalign <command>` on `cfg` under accelerate launch; its output goes to the console and to
    `<run_dir>/logs/<stage>.log`. A non-zero exit raises one line naming the stage, the exit code and the log."""
    name = safe_name(stage)
    config = run_dir / "launch" / f"{name}.json"  # JSON is YAML: the stage reads it as any recipe
    write_json(config, cfg)
    log = run_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = launch.argv(["-m", "align.cli", command, "--config", str(config)])
    print(f"{launch.describe()} -m align.cli {command} --config {config}", flush=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    with (
        open(log, "w", encoding="utf-8") as out,
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=preemption_env()
        ) as proc,
        preemption.forwarded(proc),
    ):
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    if code != 0 and preemption.requested():
        raise preemption.Preempted(
            preemption.requested(),
            f"stage {stage} was passed the signal and exited with "
            f"code {code} (log: {log}); the same command resumes it",
        )
    if code != 0:
        print(f"--- last lines of {log} ---", *tail, sep="\n", file=sys.stderr, flush=True)
        raise PolyalignError(f"stage {stage} exited with code {code} under accelerate launch (log: {log})")


def preemption_env() -> dict:
    """The launched stage's environment: torchrun's agent passes SIGUSR1 on to its workers as it does SIGTERM (by
    default SIGUSR1 would kill the agent and orphan them), and waits for them to save a checkpoint before it
    kills them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default; a user's own value is kept)."""
    names = {
        n.strip() for n in os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT").split(",")
    }
    names |= {s.name for s in preemption.SIGNALS}
    return {
        **os.environ,
        "TORCHELASTIC_SIGNALS_TO_HANDLE": ",".join(sorted(names)),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600"),
    }
