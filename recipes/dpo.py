"""Offline DPO, launchable with accelerate:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/dpo.py --config my_dpo.yaml

Identical to `polyalign dpo --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["dpo", *sys.argv[1:]]))
