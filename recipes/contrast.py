"""`polyalign contrast`, launchable as a script:

    python recipes/contrast.py --config recipes/demo/contrast.yaml

Identical to `polyalign contrast --config ...`; any `--key value` overrides the recipe.
"""

import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main(["contrast", *sys.argv[1:]]))
