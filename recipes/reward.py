"""Reward-model training, launchable with accelerate:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/reward.py --config recipes/demo/reward.yaml

Identical to `polyalign reward --config ...`; any `--key value` overrides the recipe. `recipes/reward.py score
--config x.yaml` scores instead, sharded across the launched processes (the same as `polyalign score`).
"""

import sys
from pathlib import Path

# Python puts this file's folder first on sys.path, where this file would shadow the `reward` package it runs.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

from align.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    stage = args.pop(0) if args[:1] == ["score"] else "reward"
    sys.exit(main([stage, *args]))
