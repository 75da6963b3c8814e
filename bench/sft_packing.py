"""Packed vs padded SFT: real (non-pad) tokens per second and the share of real tokens in what the model sees.

Both modes run in one invocation, on the same records, tokenised and batched by polyalign's own SFT path
(align.stages.sft.parse_sft_config / build_trainer, i.e. trl's SFTTrainer and its data collator), with the same model
weights reloaded from disk for each mode:

- packed: polyalign's default (best-fit-decreasing packs of up to --max-length tokens, no attention mask, position
  ids restarting per example; align.training.packing picks the layout: per-example sdpa on a flattened batch on CPU, one row
  per pack on CUDA sdpa and eager, trl's flattened batch on flash-attention);
- packed-rows (with `--modes packed,padded,packed-rows`): the same packs, one row per pack, block-diagonal mask;
- packed-flat (with `--modes packed,padded,packed-flat`): the same packs in trl's flattened layout on every backend;
- padded: packing off, padding_free off: every batch is padded to its longest example (trl's default collator).
  `--modes ...,padded-grouped` adds padding with `train_sampling_strategy: group_by_length` (batches of similar
  lengths), the usual cheaper alternative to packing.

All trainers are built first; each then runs --warmup untimed batches. The timed batches are interleaved: after each
of the --steps packed batches, every padded mode steps until it has seen at least as many real tokens (capped at
--max-padded-steps), so all modes train on about the same amount of data and drift of the machine weighs on them
alike. A step is forward + backward + optimizer step on a batch of `trainer.get_train_dataloader()`, with
`trainer.compute_loss` (the loss trl trains on); data loading and collation are not in the timed region.

Data: recipes/demo/data/sft.jsonl, plus MT-Bench questions with their GPT-4 reference answers in 7 languages from
../shared/data/mt_bench_multilingual when that folder exists (skipped otherwise).

    .venv/bin/python bench/sft_packing.py [--model tiny|llama-0.5b|smollm2-135m] [--attn auto|sdpa|...] [--steps N] [--batch-size B] [--max-length L]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_DATA = ROOT / "recipes" / "demo" / "data" / "sft.jsonl"
SHARED_CANDIDATES = [
    ROOT.parent / "shared" / "data" / "mt_bench_multilingual",
    Path("/work/shared/data/mt_bench_multilingual"),
]


def find_shared() -> Path | None:
    env = os.environ.get("POLYALIGN_MT_BENCH")
    for path in ([Path(env)] if env else []) + SHARED_CANDIDATES:
        if path.is_dir():
            return path
    return None


def mt_bench_chats(root: Path) -> list[dict]:
    """Each MT-Bench question with a GPT-4 reference answer → a multi-turn chat (user, assistant, user, assistant)."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        questions, answers = folder / "question.jsonl", folder / "reference_answer_gpt4.jsonl"
        if not (questions.is_file() and answers.is_file()):
            continue
        refs = {}
        for line in answers.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                refs[row["question_id"]] = row["choices"][0]["turns"]
        for line in questions.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            q = json.loads(line)
            ref = refs.get(q["question_id"])
            if not ref:
                continue
            messages = []
            for user, assistant in zip(q["turns"], ref):
                if not (user and assistant and user.strip() and assistant.strip()):
                    break
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            if messages:
                rows.append(
                    {
                        "messages": messages,
                        "lang": q.get("lang") or "English",
                        "id": f"{folder.name}-{q['question_id']}",
                    }
                )
    return rows


def load_data(workdir: Path, seed: int) -> tuple[list[dict], list[str], list[str]]:
    from align.data import load_records

    sources, notes = [], []
    if DEMO_DATA.is_file():
        sources.append(str(DEMO_DATA))
        notes.append(f"{DEMO_DATA.relative_to(ROOT)}")
    else:
        notes.append(f"{DEMO_DATA.relative_to(ROOT)} missing: skipped")
    shared = find_shared()
    if shared is not None:
        chats = mt_bench_chats(shared)
        if chats:
            path = workdir / "mt_bench_sft.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chats), encoding="utf-8")
            sources.append(str(path))
            notes.append(f"MT-Bench questions + GPT-4 reference answers from {shared} ({len(chats)} chats)")
    else:
        notes.append("shared MT-Bench data not found: skipped")
    if not sources:
        raise SystemExit("no data: neither recipes/demo/data/sft.jsonl nor the shared MT-Bench folder exists")
    return load_records(sources, "sft", seed=seed), sources, notes


# Models built from a config with the embedded model's tokenizer: nothing downloaded. "llama-0.5b" is the
# 0.5B-class model for GPU runs (Qwen2.5-0.5B / SmolLM2-360M proportions).
PRESETS = {
    "tiny": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    ),
    "llama-0.5b": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    ),
}


def build_preset_model(
    preset: str, workdir: Path, max_length: int, seed: int, family: str = "llama", window: int = 256
) -> str:
    """A model of the preset's shape in `family`'s own config class (sliding-window families get `window`-token
    windows) with the embedded SmolLM2 tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.models.loading import ModelArgs, load_tokenizer

    tokenizer = load_tokenizer(ModelArgs())  # the embedded SmolLM2 tokenizer (converted once, then cached)
    shape = PRESETS[preset]
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        max_position_embeddings=max(2048, max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        **shape,
    )
    if getattr(config, "sliding_window", None) is not None or family == "mistral":
        config.sliding_window = window
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    target = workdir / f"{preset}-{family}"
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return str(target)


# Dense bf16 peak of the GPU, for model FLOPs utilisation (MFU = 6 * parameters * real tokens/s / peak).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


MODES = {
    "packed": {"packing": True},
    "padded": {"packing": False, "padding_free": False},
    "padded-grouped": {"packing": False, "padding_free": False, "train_sampling_strategy": "group_by_length"},
    # The same packs, one row per pack with transformers' block-diagonal mask: polyalign's layout for sdpa on CUDA
    # and for eager (the default on CPU sdpa is `segments`: one flattened row, attention per example).
    "packed-rows": {"packing": True, "packed_attention": "rows"},
    # The same packs in trl's flattened padding-free layout on plain sdpa/eager: a (B*L)^2 block-diagonal mask.
    "packed-flat": {"packing": True, "packed_attention": "rows"},
}
FLATTENED = {"packed-flat"}


def batch_counts(batch, pad_token_id: int) -> tuple[int, int, int]:
    """(real tokens, tensor tokens, examples) of one collated batch."""
    ids = batch["input_ids"]
    if "attention_mask" in batch:  # padded: real tokens are the mask's ones
        return int(batch["attention_mask"].sum()), ids.numel(), ids.shape[0]
    # packs: position ids restart at 0 for each example; a row's pad tail (all pad tokens) is a segment of its own
    positions = batch["position_ids"]
    real, examples = ids.numel(), int((positions == 0).sum())
    for row in range(ids.shape[0]):
        last = int((positions[row] == 0).nonzero().max())
        if (ids[row, last:] == pad_token_id).all():
            real -= ids.shape[1] - last
            examples -= 1
    return real, ids.numel(), examples


class Mode:
    """One trainer built by polyalign's SFT path, stepped by hand: forward + backward + optimizer step per batch."""

    def __init__(self, name: str, model: str, sources: list[str], records: list[dict], opts, workdir: Path):
        import torch

        from align.stages.sft import build_trainer, parse_sft_config

        raw = {
            "model": model,
            "dataset": sources,  # recorded only: the records are loaded once, passed below
            "output_dir": str(workdir / f"out-{name}"),
            "max_length": opts.max_length,
            "per_device_train_batch_size": opts.batch_size,
            "learning_rate": 1e-5,
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "logging_steps": 1000,
            "max_steps": 1000,
            "seed": opts.seed,
            "report_to": "none",
            "attn_implementation": opts.attn,
            **MODES[name],
        }
        job = parse_sft_config(raw)
        torch.manual_seed(opts.seed)
        self.name = name
        self.trainer, self.stats = build_trainer(job, records)  # tokenises, reloads the same weights from disk
        if name in FLATTENED:
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            self.trainer.data_collator = DataCollatorForLanguageModeling(
                pad_token_id=self.trainer.processing_class.pad_token_id, padding_free=True
            )
        self.model = self.trainer.model
        self.model.train()
        self.optimizer = self.trainer.create_optimizer()
        self.batches = self._batches(self.trainer.get_train_dataloader())
        self.real = self.tensor = self.examples = self.steps = 0
        self.seconds = 0.0
        self.step_seconds: list[float] = []
        self.loss = float("nan")

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @staticmethod
    def _batches(loader):
        while True:  # restart the epoch if the data runs out
            yield from loader

    def step(self, timed: bool = True) -> None:
        batch = next(self.batches)
        real, tensor, examples = batch_counts(batch, self.trainer.processing_class.pad_token_id)
        self._sync()
        start = time.perf_counter()
        loss = self.trainer.compute_loss(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        elapsed = time.perf_counter() - start
        self.loss = float(loss.detach())
        if timed:
            self.real, self.tensor, self.examples = self.real + real, self.tensor + tensor, self.examples + examples
            self.steps += 1
            self.seconds += elapsed
            self.step_seconds.append(round(elapsed, 3))

    def result(self) -> dict:
        return {
            "mode": self.name,
            "batches": self.steps,
            "examples": self.examples,
            "real_tokens": self.real,
            "tensor_tokens": self.tensor,
            "real_fraction": self.real / self.tensor if self.tensor else 0.0,
            "seconds": self.seconds,
            "tokens_per_s": self.real / self.seconds if self.seconds else 0.0,
            "tensor_tokens_per_s": self.tensor / self.seconds if self.seconds else 0.0,
            "step_seconds": self.step_seconds,
            "last_loss": self.loss,
            "dataset_rows": len(self.trainer.train_dataset),
            "stats": self.stats,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "layout": self.stats.get("packed_attention", "padded"),
            "attention": self.model.config._attn_implementation,
            "dtype": str(self.model.dtype),
        }


def measure(modes: list[str], model: str, sources: list[str], records: list[dict], opts, workdir: Path) -> list[dict]:
    """Interleaved: after each timed packed batch, every padded mode steps until it has caught up in real tokens,
    so that drift of the machine (and the order of the modes) weighs on all modes alike."""
    runs = [Mode(name, model, sources, records, opts, workdir) for name in modes]
    for run in runs:
        for _ in range(opts.warmup):
            run.step(timed=False)
    packed, others = runs[0], runs[1:]
    for _ in range(opts.steps):
        packed.step()
        for run in others:
            while run.real < packed.real and run.steps < opts.max_padded_steps:
                run.step()
        print(
            f"  packed {packed.steps}/{opts.steps}: "
            + ", ".join(f"{r.name} {r.steps} batches {r.real / r.seconds if r.seconds else 0:.0f} tok/s" for r in runs),
            file=sys.stderr,
            flush=True,
        )
    return [run.result() for run in runs]


def machine() -> dict:
    import torch
    import transformers
    import trl

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="tiny",
        help=f"{' or '.join(PRESETS)} (built here from a config, nothing "
        "downloaded), smollm2-135m (the embedded default), or any model polyalign can load",
    )
    parser.add_argument(
        "--family",
        default="llama",
        help="the preset model's family (its transformers model_type: "
        "gemma2, gemma3_text, cohere2, mistral, qwen3, ...)",
    )
    parser.add_argument("--window", type=int, default=256, help="sliding window of a windowed family's preset model")
    parser.add_argument("--save-model", help="also keep the preset model in this folder (for bench/padding_free.py)")
    parser.add_argument(
        "--attn", default="auto", help="attention backend (auto: flash_attention_2 if installed on CUDA, else sdpa)"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed packed batches (padded modes match its tokens)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per mode")
    parser.add_argument("--max-padded-steps", type=int, default=200, help="cap on timed batches of a padded mode")
    parser.add_argument("--modes", default="packed,padded", help=f"comma-separated, packed first ({', '.join(MODES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    if not modes or modes[0] != "packed" or any(m not in MODES for m in modes):
        parser.error(f"--modes must start with packed and name only {', '.join(MODES)}")

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    began = time.time()
    with tempfile.TemporaryDirectory(prefix="polyalign-bench-") as tmp:
        workdir = Path(tmp)
        records, sources, notes = load_data(workdir, opts.seed)
        model = (
            build_preset_model(opts.model, workdir, opts.max_length, opts.seed, opts.family, opts.window)
            if opts.model in PRESETS
            else opts.model
        )
        results = measure(modes, model, sources, records, opts, workdir)
        if opts.save_model and opts.model in PRESETS:
            shutil.copytree(model, opts.save_model, dirs_exist_ok=True)

    info = machine()
    langs = {}
    for r in records:
        langs[r["lang"]] = langs.get(r["lang"], 0) + 1
    stats = results[0]["stats"]
    print(f"## SFT packing benchmark ({datetime.date.today().isoformat()})\n")
    print(
        f"- command: `{' '.join(['.venv/bin/python', 'bench/sft_packing.py', *(argv if argv is not None else sys.argv[1:])])}`"
    )
    first = results[0]
    print(
        f"- model: {opts.model} ({first['parameters'] / 1e6:.0f}M parameters, {first['dtype']}, attention "
        f"{first['attention']}); batch size {opts.batch_size}; max_length {opts.max_length}; "
        f"{opts.warmup} warm-up batches per mode; packed timed batches {opts.steps}"
    )
    print(
        f"- machine: {info['cpu_count']} CPUs ({info['torch_threads']} torch threads), "
        f"GPU: {info['cuda'] or 'none'}; torch {info['torch']}, transformers {info['transformers']}, "
        f"trl {info['trl']}, Python {info['python']}"
    )
    print(
        f"- data: {len(records)} chats in {len(langs)} languages ("
        + ", ".join(f"{k} {v}" for k, v in sorted(langs.items(), key=lambda kv: -kv[1]))
        + "); "
        + "; ".join(notes)
    )
    print(
        f"- tokenised: {stats['tokens']} tokens, {stats['truncated']} chats truncated to {opts.max_length}; "
        f"packed into {stats.get('packs', '?')} packs (packing efficiency {stats.get('packing_efficiency', 0):.1%})"
    )
    print()
    base = results[0]["tokens_per_s"]
    peak = peak_flops()
    print(
        "| mode | batches | examples | real tokens | tensor tokens | real-token fraction | real tokens/s "
        "| tensor tokens/s | packed / this (real tokens/s) |" + (" MFU (6N) |" if peak else "")
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if peak else ""))
    for r in results:
        ratio = base / r["tokens_per_s"] if r["tokens_per_s"] else float("nan")
        mfu = f" {6 * r['parameters'] * r['tokens_per_s'] / peak:.1%} |" if peak else ""
        print(
            f"| {r['mode']} ({r['layout']}, {r['attention']}) | {r['batches']} | {r['examples']} | {r['real_tokens']} | {r['tensor_tokens']} "
            f"| {r['real_fraction']:.1%} | {r['tokens_per_s']:.0f} | {r['tensor_tokens_per_s']:.0f} | {ratio:.2f}x |"
            + mfu
        )
    print(f"\ntotal wall time {time.time() - began:.0f}s")
    if opts.json:
        Path(opts.json).write_text(
            json.dumps(
                {"machine": info, "options": vars(opts), "notes": notes, "results": results}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
