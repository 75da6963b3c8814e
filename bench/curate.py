"""Curation throughput: records/s of `polyalign curate` on synthetic multilingual SFT records, 1 vs 2 processes.

The synthetic set is built from the words of the demo SFT data (recipes/demo/data/sft.jsonl, 8 languages, 4 scripts):
each record is a question and an answer of random words of one language, so every record is distinct and its
language detectable. Noise is injected at known rates: exact duplicates (case and punctuation changed), near
duplicates (two words changed), HTML, URLs, emoji, merged dialogues, broken list numbering, and records whose text
is in another language than the one declared.

Two measurements, each run through the stage's own code (`run_curate`, as the CLI does):
1. the per-record sequence (clean, exact_dedup, minhash_dedup, language_filter, provenance, mix) on `--records`
   records with `num_proc` 1 and 2, side by side in one run (the two alternate `--repeats` times);
2. the model-based steps alone on a subset, in one process: semantic_dedup (MiniLM embeddings) on
   `--semantic-records`, ifd (SmolLM2-135M) on `--ifd-records`: their cost is per record and dominates everything
   else on a CPU.

    .venv/bin/python bench/curate.py [--records 100000] [--repeats 1] [--semantic-records 2000] [--ifd-records 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOISE = {
    "exact": 0.08,
    "near": 0.05,
    "html": 0.03,
    "url": 0.03,
    "emoji": 0.03,
    "merged": 0.02,
    "numbering": 0.02,
    "wrong_lang": 0.02,
}


def vocabularies() -> dict[str, list[str]]:
    """Words (for Japanese: 2-character pieces) per language, from the demo SFT data."""
    words: dict[str, set[str]] = {}
    for line in (ROOT / "recipes/demo/data/sft.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        text = " ".join(m["content"] for m in record["messages"] if m["role"] != "system")
        if record["lang"] == "ja":
            pieces = [
                p
                for chunk in re.findall(r"[\u3040-\u30ff\u3400-\u9fff]+", text)
                for p in (chunk[i : i + 2] for i in range(0, len(chunk), 2))
                if len(p) == 2
            ]
        else:
            pieces = [w for w in re.findall(r"[^\W\d_]+", text) if len(w) > 1]
        words.setdefault(record["lang"], set()).update(pieces)
    return {lang: sorted(ws) for lang, ws in words.items()}


def sentence(rng: random.Random, vocab: list[str], lang: str, n: int) -> str:
    words = [rng.choice(vocab) for _ in range(n)]
    return ("".join(words) + "。") if lang == "ja" else (" ".join(words).capitalize() + ".")


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = vocabularies()
    langs = sorted(vocab)
    records: list[dict] = []
    for i in range(n):
        roll, lang = rng.random(), rng.choice(langs)
        rid = f"syn-{i}"
        edge = 0.0
        kinds = list(NOISE.items())
        kind = None
        for name, rate in kinds:
            edge += rate
            if roll < edge:
                kind = name
                break
        if kind in ("exact", "near") and records:
            base = rng.choice(records)
            messages = [dict(m) for m in base["messages"]]
            if kind == "exact":
                messages[-1]["content"] = messages[-1]["content"].upper() + "!"
            else:
                words = messages[-1]["content"].split(" ")
                for k in rng.sample(range(len(words)), min(2, len(words))):
                    words[k] = rng.choice(vocab[base["lang"]])
                messages[-1]["content"] = " ".join(words)
            records.append({"messages": messages, "lang": base["lang"], "id": rid, "source": "synthetic"})
            continue
        text_lang = rng.choice([l for l in langs if l != lang]) if kind == "wrong_lang" else lang
        user = sentence(rng, vocab[text_lang], text_lang, rng.randint(6, 12))[:-1] + "?"
        answer = " ".join(
            sentence(rng, vocab[text_lang], text_lang, rng.randint(8, 14)) for _ in range(rng.randint(3, 6))
        )
        if kind == "html":
            answer = f"<p>{answer}</p> <b>&amp;</b>"
        elif kind == "url":
            answer = f"{answer} https://example.org/{lang}/{i}"
        elif kind == "emoji":
            answer = f"{answer} 😀👍🏽"
        elif kind == "merged":
            answer = f"{answer}\nUser: {sentence(rng, vocab[lang], lang, 6)}\nAssistant: {sentence(rng, vocab[lang], lang, 10)}"
        elif kind == "numbering":
            answer = "\n".join(f"{k}. {sentence(rng, vocab[lang], lang, 6)}" for k in (1, 2, 2, 4))
        records.append(
            {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                "lang": lang,
                "id": rid,
                "source": "synthetic",
            }
        )
    return records


PER_RECORD_STEPS = [
    "clean",
    "exact_dedup",
    "minhash_dedup",
    "language_filter",
    {"provenance": {"default": "native"}},
    {"mix": {"temperature": 3.0, "seed": 0}},
]


def run(data: Path, out: Path, steps: list, num_proc: int, chunk_size: int) -> dict:
    from align.stages.curate import run_curate

    config = {
        "dataset": str(data),
        "output_dir": str(out),
        "overwrite": True,
        "num_proc": num_proc,
        "chunk_size": chunk_size,
        "steps": steps,
    }
    start = time.perf_counter()
    run_curate(config, None)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_incl_setup"] = wall
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=25_000)
    parser.add_argument("--semantic-records", type=int, default=2000)
    parser.add_argument("--ifd-records", type=int, default=100)
    parser.add_argument("--json", help="write the figures here too")
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import contextlib
    import io

    import datasets
    import torch

    from align.data.languages import detect_language

    records = synthetic_records(opts.records)
    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        data = tmp / "synthetic.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        # Lingua loads its models on first use: that load is not part of any step's timing.
        detect_language("Warm the language detector before timing.")
        results: dict = {"records": opts.records, "chunk_size": opts.chunk_size, "per_record": {1: [], 2: []}}
        for r in range(opts.repeats):
            for num_proc in (1, 2) if r % 2 == 0 else (2, 1):
                with contextlib.redirect_stdout(io.StringIO()):
                    m = run(data, tmp / f"out{num_proc}", PER_RECORD_STEPS, num_proc, opts.chunk_size)
                results["per_record"][num_proc].append(m)
                print(
                    f"num_proc={num_proc}: {m['input'] / m['seconds']:.0f} records/s "
                    f"({m['seconds']:.1f} s; {m['curated']} curated, {m['mixed']} mixed)",
                    flush=True,
                )
        same = (tmp / "out1" / "curated.jsonl").read_bytes() == (tmp / "out2" / "curated.jsonl").read_bytes()
        results["identical_outputs"] = same
        print(f"curated.jsonl identical with 1 and 2 processes: {same}")

        sub = tmp / "subset.jsonl"
        n_model = max(opts.semantic_records, opts.ifd_records)
        with open(sub, "w", encoding="utf-8") as f:
            for record in records[:n_model]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        for name, steps, n in (
            ("semantic_dedup", [{"semantic_dedup": {"languages": "all"}}], opts.semantic_records),
            ("ifd", [{"ifd": {"max_ifd": None}}], opts.ifd_records),
        ):
            if n <= 0:
                continue
            part = tmp / f"{name}.jsonl"
            part.write_text("".join(sub.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
            with contextlib.redirect_stdout(io.StringIO()):
                m = run(part, tmp / f"out-{name}", steps, 1, opts.chunk_size)
            step = m["steps"][0]
            results[name] = {
                "records": n,
                "seconds": step["seconds"],
                "records_per_second": n / step["seconds"],
                "wall_incl_model_load": m["seconds"],
                "dropped": step["dropped"],
            }
            print(
                f"{name}: {n / step['seconds']:.1f} records/s on {n} records ({step['seconds']:.1f} s, model load "
                f"excluded; {step['dropped']} dropped)",
                flush=True,
            )
        results["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "datasets": datasets.__version__,
            "platform": platform.platform(),
        }
        if opts.json:
            Path(opts.json).write_text(json.dumps(results, indent=2, default=str))
        print_table(results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(results: dict) -> None:
    print("\n| processes | records/s (runs) | wall s | per step s (clean, exact, minhash, language, provenance) |")
    print("|---|---|---|---|")
    for num_proc, runs in results["per_record"].items():
        rates = [m["input"] / m["seconds"] for m in runs]
        steps = runs[-1]["steps"]
        print(
            f"| {num_proc} | {sorted(rates)[len(rates) // 2]:.0f} ({', '.join(f'{r:.0f}' for r in rates)}) "
            f"| {runs[-1]['seconds']:.1f} | {', '.join(format(s['seconds'], '.1f') for s in steps)} |"
        )
    last = results["per_record"][1][-1]
    print("\nkept/dropped per step (1 process):")
    for s in last["steps"]:
        print(f"  {s['step']}: in {s['in']}, kept {s['kept']}, dropped {s['dropped']} {s['reasons']}")


if __name__ == "__main__":
    sys.exit(main())
