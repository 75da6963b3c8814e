"""Packed SFT, launchable with accelerate:

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/sft.py --config recipes/demo/sft.yaml

Identical to `polyalign sft --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
