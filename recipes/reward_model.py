"""Reward-model training, launchable with accelerate:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/reward_model.py --config recipes/demo/reward.yaml

Identical to `polyalign reward --config ...`; any `--key value` overrides the recipe. `recipes/reward_model.py score
--config x.yaml` scores instead, sharded across the launched processes (the same as `polyalign score`).
"""

import sys

from align.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    stage = args.pop(0) if args[:1] == ["score"] else "reward"
    sys.exit(main([stage, *args]))
