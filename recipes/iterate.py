"""Online iterative DPO (one process: it samples, scores and trains in turn):

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/iterate.py --config my_iterate.yaml

Identical to `polyalign iterate --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["iterate", *sys.argv[1:]]))
