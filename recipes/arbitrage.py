"""Multi-teacher arbitrage, launchable with accelerate (prompts are split between processes, joined in order):

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/arbitrage.py --config my_arbitrage.yaml

Identical to `polyalign arbitrage --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["arbitrage", *sys.argv[1:]]))
