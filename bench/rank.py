"""Reward-model scoring throughput: length-sorted batches vs unsorted batches of the same size.

Both modes score the same (prompt, completion) pairs with the same RewardRanker (one model in memory; only
`sort_by_length` differs), end to end: re-tokenisation with the reward model's own chat template, batching, padding,
the forward pass. The pairs are MT-Bench first-turn questions with their GPT-4 reference answers in 7 languages
(../shared/data/mt_bench_multilingual/*/question.jsonl + reference_answer_gpt4.jsonl), the same number from each
language, in a seeded random order (the order arbitrage candidates arrive in). Unsorted batches take that order;
sorted batches take the longest pairs first.

Timing is interleaved batch by batch, so that drift of a shared machine weighs on both modes alike: the pairs are
tokenised once (timed, and counted in both modes' time), then the k-th sorted batch and the k-th unsorted batch run
one after the other, which one first alternating with k, for --repeats rounds. Wall-clock and process CPU time are
both recorded. The script also checks that both modes give the same scores, and that they equal `ranker.score`.

    .venv/bin/python bench/rank.py [--model smollm2-135m|tiny|PATH] [--pairs N] [--batch-size B] [--max-length L]

`smollm2-135m` is the embedded default with a fresh scalar head (seeded); `tiny` is a 4-layer Llama (hidden 256)
built here from a config with SmolLM2's tokenizer; a PATH is any sequence-classification reward model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("sorted", "unsorted")
SHARED_CANDIDATES = [
    ROOT.parent / "shared" / "data" / "mt_bench_multilingual",
    Path("/work/shared/data/mt_bench_multilingual"),
]


def find_shared() -> Path:
    env = os.environ.get("POLYALIGN_MT_BENCH")
    for path in ([Path(env)] if env else []) + SHARED_CANDIDATES:
        if path.is_dir():
            return path
    sys.exit("bench/rank.py: MT-Bench multilingual data not found (set POLYALIGN_MT_BENCH to its folder)")


def load_pairs(root: Path, per_language: int, seed: int) -> list[dict]:
    """First-turn question + GPT-4 reference answer, `per_language` from each language folder, shuffled."""
    rng = random.Random(seed)
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        questions, answers = folder / "question.jsonl", folder / "reference_answer_gpt4.jsonl"
        if not (questions.is_file() and answers.is_file()):
            continue
        refs = {}
        for line in answers.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                refs[row["question_id"]] = row["choices"][0]["turns"][0]
        rows = []
        for line in questions.read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                answer = refs.get(q["question_id"])
                if answer and answer.strip() and q["turns"][0].strip():
                    rows.append({"prompt": q["turns"][0], "completion": answer, "lang": q.get("lang", "English")})
        pairs += rng.sample(rows, min(per_language, len(rows)))
    rng.shuffle(pairs)
    return pairs


def build_model(name: str, workdir: Path) -> tuple[str, bool]:
    """(model path, needs a new head)."""
    if name != "tiny":
        from transformers import AutoConfig

        from align.models.loading import is_sequence_classifier, model_path

        path = model_path(name)
        return path, not is_sequence_classifier(AutoConfig.from_pretrained(path))
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from align.models.loading import ModelArgs, load_tokenizer

    tokenizer = load_tokenizer(ModelArgs())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForSequenceClassification(config).save_pretrained(workdir / "tiny", safe_serialization=True)
    tokenizer.save_pretrained(workdir / "tiny")
    return str(workdir / "tiny"), False


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=112, help="pairs in all (the same number per language)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per batch (RewardRanker's default)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds over all batches")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def time_modes(ranker, ids: list, plans: dict, repeats: int, encode_s: float) -> tuple[dict, dict, dict]:
    """Wall and CPU seconds per mode and round, and each mode's scores: the k-th batches of both modes back to back,
    which one first alternating with k and the round."""
    wall = {mode: [0.0] * repeats for mode in MODES}
    cpu = {mode: [0.0] * repeats for mode in MODES}
    scores = {mode: [None] * len(ids) for mode in MODES}
    for r in range(repeats):
        for k in range(len(plans["sorted"])):
            for mode in MODES if (k + r) % 2 == 0 else MODES[::-1]:
                batch = plans[mode][k]
                t0, c0 = time.perf_counter(), time.process_time()
                out = ranker.score_encoded([ids[i] for i in batch])
                wall[mode][r] += time.perf_counter() - t0
                cpu[mode][r] += time.process_time() - c0
                for i, score in zip(batch, out):
                    scores[mode][i] = score
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{mode} {len(ids) / (wall[mode][r] + encode_s):.3f} pairs/s" for mode in MODES),
            flush=True,
        )
    return wall, cpu, scores


def summarise(lengths: list[int], plans: dict, wall: dict, cpu: dict, encode_s: float, encode_cpu: float) -> dict:
    results = {}
    for mode in MODES:
        real = sum(lengths)
        padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in plans[mode])
        times = [w + encode_s for w in wall[mode]]
        results[mode] = {
            "seconds": [round(t, 1) for t in times],
            "cpu_seconds": [round(c, 1) for c in cpu[mode]],
            "pairs_per_s": round(len(lengths) / statistics.median(times), 4),
            "pairs_per_cpu_s": round(len(lengths) / (statistics.median(cpu[mode]) + encode_cpu), 4),
            "real_tokens": real,
            "tensor_tokens": padded,
            "real_fraction": round(real / padded, 3),
        }
    return results


def report(opts, command: str, run: dict, results: dict) -> None:
    """The BENCHMARKS.md section: setup, then one table row per mode and the speed-up."""
    import torch

    pairs, lengths = run["pairs"], run["lengths"]
    by_lang: dict[str, int] = {}
    for p in pairs:
        by_lang[p["lang"]] = by_lang.get(p["lang"], 0) + 1
    print(f"\n## Reward scoring: length-sorted vs unsorted batches ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(
        f"- model: {opts.model} ({run['parameters'] / 1e6:.0f}M parameters"
        f"{', fresh scalar head' if run['new_head'] else ''}, {run['dtype']}), batch size {opts.batch_size}, "
        f"max_length {opts.max_length}"
    )
    print(
        f"- machine: {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(
        f"- data: {len(pairs)} MT-Bench question + GPT-4 reference answer pairs ("
        + ", ".join(f"{k} {v}" for k, v in sorted(by_lang.items()))
        + f"); {sum(lengths)} tokens, "
        f"{min(lengths)}–{max(lengths)} per pair, {run['truncated']} truncated"
    )
    print(
        f"- timing: batches interleaved (k-th sorted and k-th unsorted batch back to back, alternating which goes "
        f"first), {opts.repeats} round(s); tokenisation ({run['encode_s']:.1f}s, identical for both) counted in "
        f"both; largest score difference between modes {run['drift']:.1e}\n"
    )
    print(
        "| batches | pairs/s (wall, median) | pairs/s (process CPU time) | seconds per round | real tokens "
        "| tensor tokens | real-token fraction |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['pairs_per_s']:.3f} | {r['pairs_per_cpu_s']:.3f} | {', '.join(f'{x:.0f}' for x in r['seconds'])} "
            f"| {r['real_tokens']} | {r['tensor_tokens']} | {r['real_fraction']:.1%} |"
        )


def main(argv=None) -> int:
    opts = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from reward.rank import RewardRanker, length_batches

    if opts.threads:
        torch.set_num_threads(opts.threads)
    root = find_shared()
    languages = sum(1 for p in root.iterdir() if (p / "reference_answer_gpt4.jsonl").is_file())
    pairs = load_pairs(root, max(1, opts.pairs // languages), opts.seed)
    prompts, completions = [p["prompt"] for p in pairs], [p["completion"] for p in pairs]
    began = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        path, new_head = build_model(opts.model, Path(workdir))
        ranker = RewardRanker(path, batch_size=opts.batch_size, max_length=opts.max_length, new_head=new_head)
        ranker.score(prompts[: opts.batch_size], completions[: opts.batch_size])  # warm-up, untimed
        start, cpu_start = time.perf_counter(), time.process_time()
        encoded = ranker.encode(prompts, completions)
        encode_s, encode_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        ids = [e.input_ids for e in encoded]
        lengths = [len(x) for x in ids]
        plans = {mode: length_batches(lengths, opts.batch_size, sort=mode == "sorted") for mode in MODES}
        wall, cpu, scores = time_modes(ranker, ids, plans, opts.repeats, encode_s)
        reference = ranker.score(prompts[: 2 * opts.batch_size], completions[: 2 * opts.batch_size])
    drift = max(abs(a - b) for a, b in zip(scores["sorted"], scores["unsorted"]))
    drift = max(drift, max(abs(a - b) for a, b in zip(reference, scores["sorted"])))
    results = summarise(lengths, plans, wall, cpu, encode_s, encode_cpu)
    speedup = results["sorted"]["pairs_per_s"] / results["unsorted"]["pairs_per_s"]
    cpu_speedup = results["sorted"]["pairs_per_cpu_s"] / results["unsorted"]["pairs_per_cpu_s"]
    command = " ".join([".venv/bin/python", "bench/rank.py", *(argv if argv is not None else sys.argv[1:])])
    run = {
        "pairs": pairs,
        "lengths": lengths,
        "parameters": sum(p.numel() for p in ranker.model.parameters()),
        "new_head": new_head,
        "dtype": next(ranker.model.parameters()).dtype,
        "encode_s": encode_s,
        "drift": drift,
        "truncated": sum(e.truncated for e in encoded),
    }
    report(opts, command, run, results)
    print(
        f"\nspeed-up of sorted over unsorted: {speedup:.2f}x wall-clock, {cpu_speedup:.2f}x CPU time "
        f"(total wall time {time.time() - began:.0f}s)"
    )
    if opts.json:
        Path(opts.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "model": opts.model,
                    "pairs": len(pairs),
                    "results": results,
                    "speedup": round(speedup, 3),
                    "cpu_speedup": round(cpu_speedup, 3),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
