"""Padding-free preference training: real tokens/s, real-token fraction and peak memory of a padded vs a packed
(`padding_free: true`) batch, for DPO (align.stages.dpo.build_dpo_trainer) and reward-model training (reward.train's
RewardStage, a new scalar head on the model).

Both modes are built in one process from the same seeded weights and fed the same batches; they are stepped by hand
(forward + backward + optimizer step, timed with time.perf_counter) interleaved step by step (padded, packed,
padded, packed, ...) so that drift of the machine, or another process on it, weighs on both alike. One untimed
warm-up step per mode first.

- real tokens = attention_mask.sum() of the collated batch; real tokens/s = real tokens of the timed steps / their
  seconds.
- real-token fraction = trainer.tokens (align.training.packed_pairs.TokenCount) after the steps: real / fed, where a padded
  forward is fed mask.numel() tokens and a packed one only its real tokens.
- peak memory: on CUDA torch.cuda.max_memory_allocated during a step; on CPU the bytes of tensors autograd saves for
  backward during a step (torch.autograd.graph.saved_tensors_hooks, identical tensors counted once), max over steps.

Data: MT-Bench questions in 7 languages (../shared/data, via bench/dpo.py's loader); chosen = the GPT-4 reference
answer, rejected = the first sentence of the next question's reference answer, so pairs are length-skewed.

    .venv/bin/python bench/padding_free.py [--model smollm2-135m] [--pairs 16] [--steps 4] [--batch-size 4]
        [--max-length 512] [--out bench/results/padding_free.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpo import mt_bench  # noqa: E402  (bench/dpo.py's MT-Bench loader)


def first_sentence(text: str) -> str:
    text = text.strip()
    match = re.search(r"(.+?[.!?।。])(\s|$)", text, flags=re.S)
    return (match.group(1) if match else text.split("\n")[0]).strip()


def pairs(n: int) -> list[dict]:
    rows = mt_bench(n + 1)
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["answer"],
            "rejected": first_sentence(rows[i + 1]["answer"]),
            "lang": r["lang"],
            "id": r["id"],
        }
        for i, r in enumerate(rows[:-1])
    ]


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active (each distinct tensor once)."""

    def __init__(self):
        self.seen, self.bytes = set(), 0

    def pack(self, t):
        key = (t.data_ptr(), t.numel(), t.dtype, tuple(t.stride()))
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t):
        return t


def base_raw(opts, workdir: Path, name: str, pf: bool) -> dict:
    raw = {
        "output_dir": str(workdir / f"{name}-{pf}"),
        "dataset": "unused",
        "dtype": "fp32",
        "max_steps": 1000,
        "per_device_train_batch_size": opts.batch_size,
        "max_length": opts.max_length,
        "padding_free": pf,
        "learning_rate": 1e-6,
        "gradient_checkpointing": False,
        "seed": 0,
        "report_to": "none",
        "disable_tqdm": True,
    }
    if opts.model:
        raw["model"] = opts.model
    return raw


def build_dpo(opts, workdir: Path, data: list[dict], pf: bool):
    import torch

    from align.stages.dpo import build_dpo_trainer, parse_dpo_config

    records = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in data
    ]
    raw = base_raw(opts, workdir, "dpo", pf) | {"beta": 0.1}
    torch.manual_seed(0)
    trainer, reference, layout = build_dpo_trainer(parse_dpo_config(raw), records)
    return trainer, layout, f"reference: {reference}"


def build_reward(opts, workdir: Path, data: list[dict], pf: bool):
    import torch

    from reward.train import RewardStage, parse_reward_config

    path = workdir / "reward.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in data), encoding="utf-8")
    raw = base_raw(opts, workdir, "reward", pf) | {"dataset": str(path), "eval_fraction": 0}
    torch.manual_seed(0)  # the new head is seeded alike in both modes
    stage = RewardStage(parse_reward_config(raw))
    stage.load()
    trainer = stage.build()
    return trainer, stage.layout, "new scalar head"


def measure(opts, workdir: Path, kind: str, build, data: list[dict]) -> list[dict]:
    import torch

    cuda = torch.cuda.is_available()
    runs = {}
    for pf in (False, True):
        trainer, layout, note = build(opts, workdir, data, pf)
        trainer.model.train()
        optimizer = trainer.create_optimizer()
        runs["packed" if pf else "padded"] = {
            "trainer": trainer,
            "optimizer": optimizer,
            "layout": layout,
            "note": note,
            "seconds": 0.0,
            "real": 0,
            "steps": 0,
            "peak": 0,
        }
    # Same batches for both: collate the same example indices with each trainer's own collator.
    n = len(runs["padded"]["trainer"].train_dataset)
    order = list(range(n))
    total = opts.steps + 1
    batch_ids = [[order[(s * opts.batch_size + j) % n] for j in range(opts.batch_size)] for s in range(total)]

    def step(run, ids, timed=True):
        t = run["trainer"]
        batch = t._prepare_inputs(t.data_collator([t.train_dataset[i] for i in ids]))
        real = int(batch["attention_mask"].sum())
        saved = SavedBytes()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            loss = t.compute_loss(t.model, batch)
        loss.backward()
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated() if cuda else saved.bytes
        if timed:
            run["seconds"] += seconds
            run["real"] += real
            run["steps"] += 1
            run["peak"] = max(run["peak"], peak)
        return real, seconds

    for run in runs.values():
        step(run, batch_ids[0], timed=False)  # warm-up
    for s in range(1, total):
        for name, run in runs.items():
            real, seconds = step(run, batch_ids[s])
            print(f"  {kind} step {s} {name}: {real} real tokens in {seconds:.2f}s", file=sys.stderr, flush=True)
    out = []
    for name, r in runs.items():
        t = r["trainer"]
        out.append(
            {
                "training": kind,
                "mode": name,
                "layout": r["layout"],
                "note": r["note"],
                "steps": r["steps"],
                "seconds": round(r["seconds"], 3),
                "real_tokens": r["real"],
                "real_tokens_per_s": round(r["real"] / r["seconds"], 1),
                "real_token_fraction": t.tokens.fraction(),
                "tokens_fed": t.tokens.fed,
                "peak_bytes": r["peak"],
                "peak_kind": "cuda max_memory_allocated" if cuda else "saved-for-backward tensors",
            }
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded default model (smollm2-135m)")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode (after 1 warm-up step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--only", choices=["dpo", "reward"], default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "padding_free.json"))
    opts = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import datasets
    import torch
    import transformers

    from align.models.loading import ModelArgs

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    data = pairs(opts.pairs)
    results = []
    with tempfile.TemporaryDirectory(prefix="polyalign-bench-pf-") as tmp:
        if opts.only in (None, "dpo"):
            results += measure(opts, Path(tmp), "DPO", build_dpo, data)
        if opts.only in (None, "reward"):
            results += measure(opts, Path(tmp), "reward", build_reward, data)
    langs = sorted({p["lang"] for p in data})
    machine = (
        f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), GPU: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )
    command = f".venv/bin/python bench/padding_free.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    print(f"## Padding-free benchmark ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(
        f"- model: {opts.model or ModelArgs().model} (fp32), batch size {opts.batch_size}, max_length "
        f"{opts.max_length}, {len(data)} pairs in {len(langs)} languages, {opts.steps} timed steps per mode"
    )
    print(f"- machine: {machine}\n")
    print(
        "| training | mode | layout | timed steps | real tokens | seconds | real tokens/s | vs padded | "
        "real-token fraction | peak MiB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {r["training"]: r["real_tokens_per_s"] for r in results if r["mode"] == "padded"}
    for r in results:
        r["vs_padded"] = round(r["real_tokens_per_s"] / base[r["training"]], 3)
        print(
            f"| {r['training']} | {r['mode']} | {r['layout']} | {r['steps']} | {r['real_tokens']} | "
            f"{r['seconds']:.2f} | {r['real_tokens_per_s']:.1f} | {r['vs_padded']:.2f}x | "
            f"{r['real_token_fraction']:.2%} | {r['peak_bytes'] / 2**20:.0f} |"
        )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.date.today().isoformat(),
                "command": command,
                "machine": machine,
                "model": opts.model or ModelArgs().model,
                "batch_size": opts.batch_size,
                "max_length": opts.max_length,
                "pairs": len(data),
                "languages": langs,
                "results": results,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
