"""`polyalign curate`, launchable as a script:

    python recipes/curate.py --config recipes/demo/curate.yaml

Identical to `polyalign curate --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
