"""The whole pipeline on tiny models in one process and with every stage launched on N processes (`launch:
{num_processes: N}`): wall time per stage side by side, and which outputs are identical.

The models are the tests' tiny random Llamas (tests/conftest.py), so the figures measure polyalign's orchestration
(process start, model loads, sharding, barriers) rather than model compute. On a 2-core CPU no speedup is expected:
two processes share the two cores the single process already uses, and each pays its own start and model loads.

    .venv/bin/python bench/pipeline_processes.py [--processes 2] [--out runs/bench/processes]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = [
    ("Quelle est la capitale de la France ?", "fr"),
    ("Was ist zwei plus drei?", "de"),
    ("भारत की राजधानी क्या है?", "hi"),
    ("Explain why the sky is blue.", "en"),
    ("¿Cuánto es siete por ocho?", "es"),
    ("Wie heißt die Hauptstadt von Österreich?", "de"),
    ("नमस्ते, आप कैसे हैं?", "hi"),
    ("Combien de jours compte une année ?", "fr"),
] * 2
FAST = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 2}
# Outputs that are a deterministic function of the inputs whatever the process count (what trained models write
# differs: N processes train on N times the batch per step).
IDENTICAL = ["arbitrage/candidates.jsonl", "arbitrage/pairs.jsonl", "arbitrage/sft.jsonl", "eval/answers/base.jsonl"]


def recipe(root: Path, models: dict, processes: int) -> dict:
    from conftest import write_jsonl

    prompts = write_jsonl(
        root / "prompts.jsonl", [{"prompt": p, "lang": lang, "id": f"p{i}"} for i, (p, lang) in enumerate(PROMPTS)]
    )
    gen = {"max_new_tokens": 8, "batch_size": 2}
    raw = {
        "name": "tiny",
        "run_dir": str(root / f"run-{processes}"),
        "model": str(models["base"]),
        "prompts": str(prompts),
        "dtype": "fp32",
        "seed": 0,
        "ranker": {"reward_model": str(models["judge"])},
        "arbitrage": {
            "teachers": [
                {"name": "base", "model": str(models["base"])},
                {"name": "teacher", "model": str(models["teacher"]), "samples": 2},
            ],
            "temperature": 1.0,
            **gen,
        },
        "sft": {"max_steps": 2, "max_length": 128, "learning_rate": 1e-4, **FAST},
        "dpo": {"max_steps": 2, "lora": True, "learning_rate": 1e-4, **FAST},
        "online": {
            "iterations": 1,
            "samples": 2,
            "temperature": 1.0,
            "heldout_fraction": 0.25,
            "lora": True,
            **gen,
            "dpo": {"max_steps": 1, **FAST},
        },
        "evaluate": {"judge": {"reward_model": str(models["judge"])}, **gen},
    }
    if processes > 1:
        raw["launch"] = {"num_processes": processes}
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/processes")
    opts = parser.parse_args()
    os.environ.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    from conftest import scaled_teacher, tiny_reward_model

    from align.models.loading import ModelArgs, load_tokenizer
    from align.stages.pipeline import load_state, run_pipeline

    root = Path(opts.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tokenizer = load_tokenizer(ModelArgs())
    models = {
        "base": scaled_teacher(root / "base", tokenizer, seed=1, scale=5),
        "teacher": scaled_teacher(root / "teacher", tokenizer, seed=2, scale=5),
        "judge": tiny_reward_model(root / "judge", tokenizer),
    }
    walls, states = {}, {}
    for processes in (1, opts.processes):
        began = time.time()
        run = run_pipeline(recipe(root, models, processes))
        walls[processes], states[processes] = time.time() - began, load_state(run)["stages"]
    one, many = (root / f"run-{p}" for p in (1, opts.processes))
    same = {path: (one / path).read_bytes() == (many / path).read_bytes() for path in IDENTICAL}
    lines = [
        f"`python bench/pipeline_processes.py --processes {opts.processes}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, CPU only",
        "",
        f"| stage | 1 process (s) | {opts.processes} processes, launched (s) |",
        "|---|---:|---:|",
    ]
    for name in states[1]:
        lines.append(f"| {name} | {states[1][name]['seconds']} | {states[opts.processes][name]['seconds']} |")
    lines += [
        f"| **whole pipeline** | **{walls[1]:.1f}** | **{walls[opts.processes]:.1f}** |",
        "",
        "Identical outputs: " + ", ".join(f"{p} {'yes' if ok else 'NO'}" for p, ok in same.items()),
    ]
    report = "\n".join(lines)
    (root / "report.md").write_text(report + "\n")
    (root / "report.json").write_text(json.dumps({"walls": walls, "states": states, "identical": same}, indent=2))
    print(report)


if __name__ == "__main__":
    main()
