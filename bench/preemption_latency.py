"""How long a SIGTERM takes to become a saved checkpoint and an exit, on the demo's SFT recipe (the embedded 135M
model): `polyalign sft` is started, signalled once its k-th loss is logged (k = 3, 4, 5 over the trials), and timed
from the signal to the process's exit (the step in flight finishes, the checkpoint is written, the stage exits 143).

    .venv/bin/python bench/preemption_latency.py [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp()) / "sft"
    argv = [
        sys.executable,
        "-u",
        "-m",
        "align.cli",
        "sft",
        "--config",
        "recipes/demo/sft.yaml",
        "--output_dir",
        str(out),
        "--max_steps",
        "200",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(args.trials):
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        losses = 0
        while losses < 3 + trial:
            line = process.stdout.readline()
            if not line:
                raise SystemExit(process.stderr.read()[-2000:])
            losses += "'loss'" in line
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate()
        seconds = time.monotonic() - began
        said = [line for line in err.splitlines() if line.startswith("polyalign sft:")]
        print(f"trial {trial + 1}: exit {process.returncode} after {seconds:.2f} s: {said[-1] if said else err[-300:]}")
        shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)


if __name__ == "__main__":
    main()
