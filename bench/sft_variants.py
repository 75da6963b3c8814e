"""Can the SFT stage alone beat the base without teaching echo? SFT keys and forms of the human answers, tried on
one seed's arbitrage picks.

Each variant trains one global SFT model on `<efficacy run>/seed-<s>/arbitrage/sft.jsonl` (the picks of a
bench/recipe_efficacy.py run) with the demo recipe's SFT keys and one change: a key, or the text of every pick the
human answers supplied, swapped for another form of the same answer from bench/data/ (the model teachers' picks stay).
align's evaluation scores every variant beside the base, the run's own global SFT (`controls/sft-arbitrage`, when
its weights are still there; the `recipe` variant trains the same afresh) and the echo control on the 96 held-out
prompts (echo-free and plain chrF++, echo rate, fidelity, paired differences in report.md), and the script prints
each variant's echo rate against the base's (paired bootstrap over the prompts).

    .venv/bin/python bench/sft_variants.py --efficacy runs/bench/efficacy16 --seed 42 --variants recipe content-first two-clauses
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
DATA = Path(__file__).resolve().parent / "data"
# name: (SFT keys changed, human answers that replace the human picks' text)
VARIANTS = {
    "recipe": ({}, None),  # the recipe's own SFT keys and picks, trained beside the variants
    "lr5e-6": ({"learning_rate": 5e-6}, None),
    "lr1e-5": ({"learning_rate": 1e-5}, None),
    "lora2e-4": ({"lora": True, "learning_rate": 2e-4}, None),
    # the answer before anything else, no words of the question restated: "Acht, in vier Paaren."
    "content-first": ({}, DATA / "human_answers_content_first.jsonl"),
    # the recipe's answers with a clause that adds a fact: "Eine Spinne hat acht Beine, in vier Paaren."
    "two-clauses": ({}, DATA / "human_answers_two_clauses.jsonl"),
}


def swap_human_picks(picks: Path, answers: Path, out: Path) -> int:
    """Writes the picks with every human-answer pick's text taken from `answers` (by id); returns how many."""
    text = {row["id"]: row["completion"] for row in map(json.loads, answers.read_text().splitlines())}
    rows, swapped = [], 0
    for row in map(json.loads, picks.read_text().splitlines()):
        if row.get("teacher") == "human":
            row["messages"][-1]["content"] = text[row["id"]]
            swapped += 1
        rows.append(json.dumps(row, ensure_ascii=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    return swapped


def echo_vs_base(answers: Path, name: str) -> tuple[float, float, float]:
    """Echo rate of `name` minus the base's over the same prompts, with its 95% paired bootstrap interval."""
    from align.core.io import safe_name
    from align.core.stats import mean_interval

    flags = {
        model: [
            row["echo"] for row in map(json.loads, (answers / f"{safe_name(model)}.jsonl").read_text().splitlines())
        ]
        for model in ("base", name)
    }
    diffs = [int(ours) - int(theirs) for ours, theirs in zip(flags[name], flags["base"])]
    low, high = mean_interval(diffs)
    return sum(diffs) / len(diffs), low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--efficacy", default="runs/bench/efficacy36")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/bench/sft_variants")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    args = parser.parse_args()
    from align.core.config import load_yaml
    from align.stages.evaluate import run_evaluate
    from align.stages.sft import run_sft

    run, out = Path(args.efficacy) / f"seed-{args.seed}", Path(args.out) / f"seed-{args.seed}"
    raw = load_yaml(RECIPE)
    keys = {"model": raw["model"], "seed": args.seed, **raw["sft"], "dataset": str(run / "arbitrage" / "sft.jsonl")}
    models = {"base": raw["model"]}
    control = run / "controls" / "sft-arbitrage"
    if (control / "model.safetensors").is_file():
        models["sft-arbitrage (global)"] = str(control)
    for name in args.variants:
        change, answers = VARIANTS[name]
        if answers is not None:
            dataset = out / "data" / f"{name}.jsonl"
            swapped = swap_human_picks(Path(keys["dataset"]), answers, dataset)
            print(f"{name}: {swapped} human picks take their text from {answers.name}", flush=True)
            change = {**change, "dataset": str(dataset)}
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
    for name in args.variants:
        mean, low, high = echo_vs_base(out / "eval" / "answers", name)
        print(f"{name:24s} echo rate vs base {mean:+.0%} [{low:+.0%}, {high:+.0%}]")


if __name__ == "__main__":
    main()
