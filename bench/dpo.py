"""DPO benchmarks: offline steps/s with precomputed reference log-probs vs computed each step, and the wall time of
one online iteration split into sampling, scoring and training.

1. Offline: the same pairs and model through polyalign's own DPO path (align.stages.dpo.build_dpo_trainer, i.e. trl's
   DPOTrainer), stepped by hand (loss, backward, optimizer step) with the modes interleaved step by step so drift of
   the machine weighs on both. `precompute_ref_log_probs` pays once before training (reported separately).
2. Online: one `polyalign iterate` iteration (align.stages.online.run_iterate) with a LoRA policy; the per-step seconds are
   the ones the loop records in `iter_1/metrics.json`. The ranker is the model with a fresh, seeded scalar head
   (reward_model timing does not depend on what the head learned).

Data: MT-Bench questions in 7 languages (../shared/data) as prompts; for the offline pairs, the GPT-4 reference
answer as chosen and another question's reference answer as rejected.

    .venv/bin/python bench/dpo.py [--model smollm2-135m] [--pairs 32] [--steps 6] [--prompts 16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = [ROOT.parent / "shared" / "data" / "mt_bench_multilingual", Path("/work/shared/data/mt_bench_multilingual")]


def mt_bench(limit: int) -> list[dict]:
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
        refs = {}
        for line in (folder / "reference_answer_gpt4.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                refs[row["question_id"]] = row["choices"][0]["turns"][0]
        rows = []
        for line in (folder / "question.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                if q["question_id"] in refs:
                    rows.append(
                        {
                            "prompt": q["turns"][0],
                            "answer": refs[q["question_id"]],
                            "lang": q.get("lang", "English"),
                            "id": f"{folder.name}-{q['question_id']}",
                        }
                    )
        per_lang.append(rows)
    mixed = [item for group in zip(*per_lang) for item in group]
    return mixed[:limit]


def offline(opts, workdir: Path) -> list[dict]:
    import torch

    from align.data import load_records
    from align.stages.dpo import build_dpo_trainer, parse_dpo_config

    rows = mt_bench(opts.pairs + 1)
    pairs = [
        {"prompt": r["prompt"], "chosen": r["answer"], "rejected": rows[i + 1]["answer"], "lang": r["lang"]}
        for i, r in enumerate(rows[:-1])
    ]
    data = workdir / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    modes = {"reference computed each step": False, "reference precomputed": True}
    runs = {}
    for name, precompute in modes.items():
        raw = {
            "model": opts.model,
            "dataset": str(data),
            "output_dir": str(workdir / f"o-{precompute}"),
            "lora": True,
            "max_length": opts.max_length,
            "per_device_train_batch_size": opts.batch_size,
            "precompute_ref_log_probs": precompute,
            "learning_rate": 1e-5,
            "max_steps": 1000,
            "gradient_checkpointing": False,
            "seed": 0,
            "report_to": "none",
            "disable_tqdm": True,
        }
        job = parse_dpo_config(raw)
        began = time.perf_counter()
        trainer, reference, _ = build_dpo_trainer(job, load_records(str(data), "preference"))
        setup = time.perf_counter() - began
        trainer.model.train()
        optimizer = trainer.create_optimizer()
        batches = iter(trainer.get_train_dataloader())
        runs[name] = {
            "trainer": trainer,
            "optimizer": optimizer,
            "batches": batches,
            "seconds": 0.0,
            "steps": 0,
            "setup_s": setup,
            "reference": reference,
        }

    def step(run, timed=True):
        try:
            batch = next(run["batches"])
        except StopIteration:
            run["batches"] = iter(run["trainer"].get_train_dataloader())
            batch = next(run["batches"])
        batch = run["trainer"]._prepare_inputs(batch)
        began = time.perf_counter()
        loss = run["trainer"].compute_loss(run["trainer"].model, batch)
        loss.backward()
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if timed:
            run["seconds"] += time.perf_counter() - began
            run["steps"] += 1

    for run in runs.values():
        step(run, timed=False)  # warm-up
    for _ in range(opts.steps):
        for run in runs.values():
            step(run)
        print(
            "  " + ", ".join(f"{n}: {r['steps'] / r['seconds']:.3f} steps/s" for n, r in runs.items()),
            file=sys.stderr,
            flush=True,
        )
    return [
        {
            "mode": n,
            "steps": r["steps"],
            "seconds": round(r["seconds"], 2),
            "steps_per_s": r["steps"] / r["seconds"],
            "setup_s": round(r["setup_s"], 1),
            "reference": r["reference"],
        }
        for n, r in runs.items()
    ]


def online(opts, workdir: Path) -> dict:
    from align.stages.online import run_iterate
    from reward.rank import RewardRanker

    rows = mt_bench(opts.prompts)
    prompts = workdir / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "lang": r["lang"], "id": r["id"]}, ensure_ascii=False) + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    ranker = RewardRanker(opts.model, batch_size=16, max_length=opts.max_length, new_head=True)
    out = run_iterate(
        {
            "model": opts.model,
            "prompts": str(prompts),
            "output_dir": str(workdir / "online"),
            "iterations": 1,
            "samples": opts.samples,
            "temperature": 0.8,
            "max_new_tokens": opts.max_new_tokens,
            "batch_size": 16,
            "heldout_fraction": 0,
            "lora": True,
            "dpo": {
                "max_steps": opts.steps,
                "per_device_train_batch_size": opts.batch_size,
                "max_length": opts.max_length,
                "gradient_checkpointing": False,
                "disable_tqdm": True,
            },
        },
        ranker=ranker,
    )
    metrics = json.loads((out / "iter_1" / "metrics.json").read_text())
    return {"seconds": metrics["seconds"], "pairs": metrics["pairs"], "prompts": metrics["prompts"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--skip-online", action="store_true")
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="polyalign-bench-dpo-") as tmp:
        results = offline(opts, Path(tmp))
        split = None if opts.skip_online else online(opts, Path(tmp))
    print(f"## DPO benchmark ({datetime.date.today().isoformat()})\n")
    print(f"- command: `.venv/bin/python bench/dpo.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(
        f"- model: {opts.model} with a LoRA policy (r 8 on q, k, v); batch size {opts.batch_size}; max_length "
        f"{opts.max_length}"
    )
    print(
        f"- machine: {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), GPU: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}\n"
    )
    base = results[0]["steps_per_s"]
    print("| offline DPO | timed steps | seconds | steps/s | vs computed each step | one-time setup s | reference |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['steps']} | {r['seconds']} | {r['steps_per_s']:.3f} | "
            f"{r['steps_per_s'] / base:.2f}x | {r['setup_s']} | {r['reference']} |"
        )
    if split:
        total = sum(split["seconds"].values())
        print(
            f"\nOne online iteration: {split['prompts']} prompts × {opts.samples} samples, {opts.max_new_tokens} new "
            f"tokens, {split['pairs']} pairs, {opts.steps} DPO steps\n"
        )
        print("| step | seconds | share |")
        print("|---|---:|---:|")
        for name, seconds in split["seconds"].items():
            print(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
        print(f"| total | {total:.1f} | 100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
