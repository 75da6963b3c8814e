"""Can the SFT stage alone beat the base without teaching echo? SFT keys tried on one seed's arbitrage picks.

Each variant trains one global SFT model on `<efficacy run>/seed-<s>/arbitrage/sft.jsonl` (the picks of a
bench/recipe_efficacy.py run) with the demo recipe's SFT keys and one change, and align's evaluation scores every
variant beside the base, the recipe's own global SFT (`controls/sft-arbitrage`) and the echo control on the 96
held-out prompts (echo-free and plain chrF++, echo rate, fidelity, paired differences in report.md).

    .venv/bin/python bench/sft_variants.py --efficacy runs/bench/efficacy36 --seed 1 --out runs/bench/sft_variants
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "demo" / "pipeline.yaml"
VARIANTS = {
    "lr5e-6": {"learning_rate": 5e-6},
    "lr1e-5": {"learning_rate": 1e-5},
    "lora2e-4": {"lora": True, "learning_rate": 2e-4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--efficacy", default="runs/bench/efficacy36")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/bench/sft_variants")
    args = parser.parse_args()
    from align.core.config import load_yaml
    from align.stages.evaluate import run_evaluate
    from align.stages.sft import run_sft

    run, out = Path(args.efficacy) / f"seed-{args.seed}", Path(args.out) / f"seed-{args.seed}"
    raw = load_yaml(RECIPE)
    keys = {"model": raw["model"], "seed": args.seed, **raw["sft"], "dataset": str(run / "arbitrage" / "sft.jsonl")}
    models = {"base": raw["model"], "sft-arbitrage (global)": str(run / "controls" / "sft-arbitrage")}
    for name, change in VARIANTS.items():
        if not (out / name).exists():
            began = time.time()
            run_sft({**keys, **change, "output_dir": str(out / name)}, str(RECIPE))
            print(f"{name}: trained in {time.time() - began:.0f} s", flush=True)
        models[name] = str(out / name)
    run_evaluate(
        {
            **raw["evaluate"],
            "models": models,
            "prompts": raw["heldout"],
            "baseline": "base",
            "output_dir": str(out / "eval"),
            "seed": args.seed,
            "overwrite": True,
        },
        str(RECIPE),
    )
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for name in models:
        row = metrics["models"][name]
        print(
            f"{name:24s} echo-free chrF++ {row['echo_free_chrf++']['all']['score']:5.2f}  "
            f"chrF++ {row['chrf++']['all']['score']:5.2f}  echo rate {row['echo_rate']['all']['mean']:.0%}"
        )


if __name__ == "__main__":
    main()
