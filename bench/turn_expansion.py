"""What labelling each turn in its own rendering costs, on real multi-turn chats.

A chat template that renders every turn the same wherever it stands (ChatML: SmolLM2's own) labels a conversation in
one rendering. A template that rewrites history (reasoning shown only after the last user turn, as Qwen3's does)
needs one rendering per earlier assistant turn (align.models.chat). Both run here in one invocation on the same chats
(MT-Bench's two-turn questions with GPT-4 reference answers, ../shared/data): examples, tokens fed, tokens trained,
tokenising seconds, and the seconds of one packed SFT epoch on a small Llama built from a config.

    .venv/bin/python bench/turn_expansion.py [--max-length 1024] [--preset tiny]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_packing import build_preset_model, find_shared, mt_bench_chats  # noqa: E402

# Written for this benchmark in the manner of Qwen3's template: earlier assistant turns lose their reasoning, the
# turns after the last user message show it (empty here: the reference answers have none).
HISTORY_REWRITING = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last %}<think>\n{{ m.get('reasoning_content') or '' }}\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = {"one rendering (ChatML)": None, "per turn (history-rewriting)": HISTORY_REWRITING}


def run(name: str, template: str | None, model: str, records: list[dict], opts, workdir: Path) -> dict:
    from align.stages.sft import build_trainer, parse_sft_config

    raw = {
        "model": model,
        "dataset": "unused",
        "output_dir": str(workdir / "out"),
        "max_length": opts.max_length,
        "per_device_train_batch_size": 1,
        "learning_rate": 1e-5,
        "save_strategy": "no",
        "num_train_epochs": 1,
        "logging_steps": 10_000,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        **({"chat_template": template} if template else {}),
    }
    job = parse_sft_config(raw)
    start = time.perf_counter()
    trainer, stats = build_trainer(job, records)
    built = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    trained = time.perf_counter() - start
    return {
        "rendering": name,
        "conversations": stats["examples"],
        "training_examples": stats["training_examples"],
        "tokens": stats["tokens"],
        "trained_tokens": stats["trained_tokens"],
        "packs": stats.get("packs"),
        "tokenise_and_load_s": round(built, 2),
        "epoch_s": round(trained, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--limit", type=int, default=0, help="at most this many chats (0: all)")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    shared = find_shared()
    if shared is None:
        raise SystemExit("the shared MT-Bench folder is needed (../shared/data or POLYALIGN_MT_BENCH)")
    from align.data import load_records

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        chats = [c for c in mt_bench_chats(shared) if len(c["messages"]) >= 4]
        chats = chats[: opts.limit] if opts.limit else chats
        path = workdir / "chats.jsonl"
        path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
        records = load_records(str(path), "sft", seed=0)
        model = build_preset_model(opts.preset, workdir, opts.max_length, 0)
        rows = [run(name, template, model, records, opts, workdir) for name, template in TEMPLATES.items()]
    one, per_turn = rows
    print(
        f"{len(records)} multi-turn MT-Bench chats, max_length {opts.max_length}, preset {opts.preset}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        "| rendering | conversations | training examples | tokens fed | tokens trained | packs | tokenise+load s | "
        "epoch s |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['rendering']} | {r['conversations']} | {r['training_examples']} | {r['tokens']} | "
            f"{r['trained_tokens']} | {r['packs']} | {r['tokenise_and_load_s']} | {r['epoch_s']} |"
        )
    print(
        f"per turn / one rendering: tokens fed ×{per_turn['tokens'] / one['tokens']:.2f}, tokens trained "
        f"×{per_turn['trained_tokens'] / one['trained_tokens']:.2f}, epoch time ×{per_turn['epoch_s'] / one['epoch_s']:.2f}"
    )


if __name__ == "__main__":
    main()
