"""A pipeline stage as its own `accelerate launch` job: its config written to a file, the stage started as a
subprocess (`accelerate launch ... -m align.cli <stage> --config <file>`), its output shown and kept in a log.

Stages talk only through files, so a launched stage is the same stage: it resumes from its own partial output, and
the pipeline records it in `state.json` only when it exits 0. Each stage being its own process also frees its GPU
memory before the next one starts. The `launch` mapping holds accelerate launch's own options (`num_processes`,
`config_file`, `num_machines`, `main_process_ip`, ...), checked by accelerate's parser when the pipeline is read.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections import deque
from pathlib import Path

from .errors import ConfigError, PolyalignError
from .io import safe_name, write_json

# What `accelerate launch` asks for when it has no config file (it warns, then guesses): one machine, no mixed
# precision (the stage's own dtype decides), no dynamo.
WITHOUT_CONFIG_FILE = {"num_machines": 1, "mixed_precision": "no", "dynamo_backend": "no"}
# Launchers that start several processes on one machine; without one (and without a config file that names one),
# several processes need torchrun's, which accelerate calls --multi_gpu and which gives a gloo group on CPUs.
MULTI_PROCESS = ("multi_gpu", "use_fsdp", "use_deepspeed", "use_megatron_lm", "tpu", "cpu")
LOG_TAIL = 20


def launch_flags(launch: dict, source: str | None, key: str) -> list[str]:
    """accelerate launch's arguments for `launch`, checked by its own parser (a bad option names `key`)."""
    from accelerate.commands.launch import launch_command_parser

    if not isinstance(launch, dict):
        raise ConfigError(source, key, "expected a mapping of accelerate launch options (num_processes, "
                                       "config_file, ...)")
    options = dict(launch)
    if "config_file" in options:
        if not Path(str(options["config_file"])).is_file():
            raise ConfigError(source, f"{key}.config_file", f"{options['config_file']} is not a file")
    else:
        options = {**WITHOUT_CONFIG_FILE, **options}
        if int(options.get("num_processes", 1) or 1) > 1 and not any(options.get(k) for k in MULTI_PROCESS):
            options["multi_gpu"] = True
    flags = []
    for name, value in options.items():
        if value is True:
            flags.append(f"--{name}")
        elif value not in (False, None):
            flags += [f"--{name}", str(value)]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            launch_command_parser().parse_args([*flags, "-m", "align.cli"])
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise ConfigError(source, key, f"accelerate launch refuses it: {message}") from None
    return flags


def run_launched(stage: str, command: str, cfg: dict, flags: list[str], run_dir: Path) -> None:
    """Run `polyalign <command>` on `cfg` under accelerate launch; its output goes to the console and to
    `<run_dir>/logs/<stage>.log`. A non-zero exit raises one line naming the stage, the exit code and the log."""
    name = safe_name(stage)
    config = run_dir / "launch" / f"{name}.json"  # JSON is YAML: the stage reads it as any recipe
    write_json(config, cfg)
    log = run_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "align.cli", command,
            "--config", str(config)]
    print(f"accelerate launch {' '.join(flags)} -m align.cli {command} --config {config}", flush=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    with open(log, "w", encoding="utf-8") as out, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        print(f"--- last lines of {log} ---", *tail, sep="\n", file=sys.stderr, flush=True)
        raise PolyalignError(f"stage {stage} exited with code {code} under accelerate launch (log: {log})")
