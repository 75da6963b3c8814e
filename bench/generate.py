"""Generation throughput: batched, length-sorted prompts against one prompt at a time, same model and prompts.

Both modes go through polyalign's own generation path (align.generation.generate: TransformersBackend behind iter_batches, the
interface arbitrage and online DPO sample with), greedy, the same max_new_tokens. The modes alternate chunk by chunk
(batched on a chunk of prompts, then one at a time on the same chunk), so drift of the machine weighs on both alike.
Throughput counts generated tokens up to each sequence's end (pads after an early stop are not counted).

Prompts: the first turns of MT-Bench in 7 languages from ../shared/data/mt_bench_multilingual (round-robin over the
languages, so every chunk mixes scripts and lengths).

    .venv/bin/python bench/generate.py [--model smollm2-135m] [--prompts 32] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = [ROOT.parent / "shared" / "data" / "mt_bench_multilingual", Path("/work/shared/data/mt_bench_multilingual")]


def load_prompts(n: int) -> list[tuple[str, list[dict]]]:
    root = next(
        (
            p
            for p in ([Path(os.environ["POLYALIGN_MT_BENCH"])] if "POLYALIGN_MT_BENCH" in os.environ else []) + SHARED
            if p.is_dir()
        ),
        None,
    )
    if root is None:
        raise SystemExit("MT-Bench data not found (set POLYALIGN_MT_BENCH)")
    per_lang = []
    for folder in sorted(p for p in root.iterdir() if (p / "question.jsonl").is_file()):
        rows = [
            json.loads(line)
            for line in (folder / "question.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        per_lang.append([(r.get("lang", "English"), [{"role": "user", "content": r["turns"][0]}]) for r in rows])
    mixed = [item for group in zip(*per_lang) for item in group]
    return mixed[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16, help="prompts per alternation of the two modes")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="padded prompt tokens per batch (default: polyalign's, 4096 on CPU, 65536 on CUDA)",
    )
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from align.generation.generate import GenerationArgs, TransformersBackend, batch_token_budget, iter_batches
    from align.models.loading import ModelArgs, load_model, load_tokenizer

    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(ModelArgs(model=opts.model))
    model = load_model(ModelArgs(model=opts.model))
    if torch.cuda.is_available():
        model.to("cuda")
    prompts = load_prompts(opts.prompts)
    modes = {"batched (length-sorted)": opts.batch_size, "one at a time": 1}
    totals = {name: {"tokens": 0, "seconds": 0.0, "prompts": 0} for name in modes}
    backends = {name: TransformersBackend(model, tokenizer) for name in modes}
    warm = GenerationArgs(max_new_tokens=4, batch_size=opts.batch_size)
    for _ in iter_batches(backends["one at a time"], tokenizer, [prompts[0][1]], warm, progress=False):
        pass
    for start in range(0, len(prompts), opts.chunk):
        chunk = [p for _, p in prompts[start : start + opts.chunk]]
        for name, batch_size in modes.items():
            args = GenerationArgs(
                max_new_tokens=opts.max_new_tokens, batch_size=batch_size, max_batch_tokens=opts.max_batch_tokens
            )
            backend = backends[name]
            before = backend.generated_tokens
            began = time.perf_counter()
            for _ in iter_batches(backend, tokenizer, chunk, args, progress=False):
                pass
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            totals[name]["seconds"] += time.perf_counter() - began
            totals[name]["tokens"] += backend.generated_tokens - before
            totals[name]["prompts"] += len(chunk)
        print(
            f"  {start + len(chunk)}/{len(prompts)} prompts: "
            + ", ".join(f"{n} {t['tokens'] / t['seconds']:.1f} tok/s" for n, t in totals.items()),
            file=sys.stderr,
            flush=True,
        )

    langs = sorted({lang for lang, _ in prompts})
    print(f"## Generation benchmark ({datetime.date.today().isoformat()})\n")
    print(f"- command: `.venv/bin/python bench/generate.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(
        f"- model: {opts.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {model.dtype}); "
        f"greedy, max_new_tokens {opts.max_new_tokens}; batch size {opts.batch_size}, at most "
        f"{batch_token_budget(GenerationArgs(max_batch_tokens=opts.max_batch_tokens))} padded prompt tokens; "
        f"modes alternate every "
        f"{opts.chunk} prompts"
    )
    print(
        f"- machine: {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), GPU: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )
    print(
        f"- prompts: {len(prompts)} MT-Bench first turns, round-robin over {len(langs)} languages ({', '.join(langs)})\n"
    )
    base = totals["one at a time"]["tokens"] / totals["one at a time"]["seconds"]
    print("| mode | prompts | generated tokens | seconds | tokens/s | vs one at a time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in totals.items():
        rate = t["tokens"] / t["seconds"]
        print(f"| {name} | {t['prompts']} | {t['tokens']} | {t['seconds']:.1f} | {rate:.1f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
