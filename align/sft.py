"""Packed supervised fine-tuning on trl's SFTTrainer.

What polyalign adds to SFTTrainer: records from any ingested format, assistant-only labels for any chat template
(align.chat), packing that keeps examples apart (best-fit-decreasing bins with no attention mask, position ids
restarting per example, no KV cache; the layout per attention backend is align.packing's: flattened batches with
cu_seqlens for flash-attention, flattened batches with per-example sdpa (align.segment_attention) on CPU, one row
per bin with a block-diagonal mask otherwise), a run that resumes from its last checkpoint after a kill, and an
output directory that appears only when training is complete.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import IGNORE_INDEX, tokenize_chat
from .data import language_mix, load_records
from .errors import ConfigError
from .models import LoraArgs, ModelArgs, cuda_available, load_model, load_tokenizer, lora_config
from .packing import PackRowsCollator, choose_layout
from .runs import TrainingRun, barrier, build_trl_config, parse_training_keys

log = logging.getLogger(__name__)


@dataclass
class SFTArgs(ModelArgs):
    """polyalign's own SFT keys; every other recipe key is a trl SFTConfig field."""

    dataset: Any = None
    output_dir: str | None = None
    overwrite: bool = False
    lora: dict | bool | None = None  # true for the defaults, or {r, alpha, dropout, target_modules, ...}
    save_merged: bool = False  # with LoRA: also write the adapter merged into its base under <output_dir>/merged
    keep_checkpoints: bool = False
    packed_attention: str = "auto"  # auto | segments | rows: how packs are laid out for sdpa (align.packing)


# trl defaults that polyalign changes: pack by default, never report to a tracker nobody configured, and use
# bf16 only where the hardware has it (trl defaults to bf16, which a CPU run cannot use).
SFT_DEFAULTS = {"packing": True, "report_to": "none", "logging_steps": 10, "save_strategy": "steps",
                "save_steps": 200, "save_total_limit": 2}


@dataclass
class SFTJob:
    args: SFTArgs
    training: Any  # trl.SFTConfig
    lora: LoraArgs | None
    assistant_only_loss: bool
    raw: dict = field(default_factory=dict)


def parse_sft_config(raw: dict, source: str | None = None) -> SFTJob:
    from trl import SFTConfig

    args, trl_kwargs, lora = parse_training_keys(raw, source, SFTArgs, SFTConfig, dataset_help="a file, folder, "
                                                 "or datasets name (or a list of them)")
    # Our labels already mask everything but assistant turns; trl must not re-derive them.
    assistant_only = trl_kwargs.pop("assistant_only_loss", True)
    kwargs = {**SFT_DEFAULTS, **trl_kwargs}
    kwargs.setdefault("include_num_input_tokens_seen", "all")
    kwargs["assistant_only_loss"] = False
    kwargs["completion_only_loss"] = False
    if kwargs.get("packing") and kwargs.get("packing_strategy", "bfd") == "wrapped":
        raise ConfigError(source, "packing_strategy", "'wrapped' cuts examples mid-sequence and lets them attend "
                          "across boundaries; polyalign packs with 'bfd' (default) or 'bfd_split'")
    training = build_trl_config(SFTConfig, kwargs, args, source)
    return SFTJob(args, training, lora, assistant_only, raw)


def tokenize_records(records: list[dict], tokenizer, max_length: int | None, *, assistant_only: bool = True,
                     num_proc: int | None = None):
    """Records → a datasets.Dataset of input_ids/labels/lang, and counts for the summary."""
    import datasets

    def encode(batch):
        out = {"input_ids": [], "labels": [], "truncated": []}
        for messages in batch["messages"]:
            chat = tokenize_chat(tokenizer, messages, max_length=max_length, assistant_only=assistant_only)
            out["input_ids"].append(chat.input_ids)
            out["labels"].append(chat.labels)
            out["truncated"].append(chat.truncated)
        return out

    table = datasets.Dataset.from_dict({"messages": [r["messages"] for r in records],
                                        "lang": [r["lang"] for r in records],
                                        "provenance": [r.get("provenance") or "unspecified" for r in records]})
    encoded = table.map(encode, batched=True, remove_columns=["messages"], num_proc=num_proc,
                        desc="Tokenising (assistant-only labels)")
    kept = encoded.filter(lambda ex: any(label != IGNORE_INDEX for label in ex["labels"]), num_proc=num_proc)
    stats = {
        "examples": len(records),
        "truncated": int(sum(encoded["truncated"])),
        "dropped_no_assistant_tokens": len(encoded) - len(kept),
        "tokens": int(sum(len(ids) for ids in kept["input_ids"])),
        "trained_tokens": int(sum(sum(1 for x in labels if x != IGNORE_INDEX) for labels in kept["labels"])),
        "examples_per_language": dict(Counter(kept["lang"]).most_common()),
        "examples_per_provenance": dict(Counter(kept["provenance"]).most_common()),  # native, machine-translated, ...
    }
    return kept.remove_columns(["truncated", "lang", "provenance"]), stats


def packing_stats(dataset, max_length: int) -> dict:
    """How full the packed bins are: real tokens over bins × max_length."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return {"packs": len(lengths), "packing_efficiency": round(sum(lengths) / (len(lengths) * max_length), 4)
            if lengths else 0.0}


def packing_layout(job: SFTJob, model) -> str:
    """Pick the layout for the model's attention backend; on `segments`, switch the model to `sdpa_packed`."""
    from . import segment_attention

    try:
        layout = choose_layout(job.args.packed_attention, model.config._attn_implementation,
                               cuda_available() and not job.training.use_cpu)
    except ValueError as e:
        raise ConfigError(None, "packed_attention", str(e)) from None
    if layout == "segments" and not segment_attention.use_for(model):
        if job.args.packed_attention == "segments":
            raise ConfigError(None, "packed_attention", f"{model.config.model_type} has sliding-window or "
                              "mixed attention layers; use 'rows'")
        layout = "rows"
    return layout


def build_trainer(job: SFTJob, records: list[dict]):
    """Tokenise, load the model and build the SFTTrainer: shared by the stage, the tests and the benchmark."""
    from trl import SFTTrainer

    tokenizer = load_tokenizer(job.args)
    dataset, stats = tokenize_records(records, tokenizer, job.training.max_length,
                                      assistant_only=job.assistant_only_loss,
                                      num_proc=job.training.dataset_num_proc)
    if len(dataset) == 0:
        raise ConfigError(None, "dataset", "no example has an assistant token left to train on")
    model = load_model(job.args)
    layout = None
    if job.training.packing:
        layout = packing_layout(job, model)
    trainer = SFTTrainer(model=model, args=job.training, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(job.lora) if job.lora else None)
    if layout == "rows":
        trainer.data_collator = PackRowsCollator(tokenizer.pad_token_id, job.training.pad_to_multiple_of)
    if layout:  # varlen and segments keep trl's flattened padding-free collator (cu_seqlens, first tokens unlabelled)
        stats.update(packing_stats(trainer.train_dataset, job.training.max_length), packed_attention=layout)
    return trainer, stats


def run_sft(raw: dict, source: str | None = None) -> Path:
    """The `sft` stage: returns the output directory."""
    from accelerate import PartialState

    job = parse_sft_config(raw, source)
    state = PartialState(cpu=job.training.use_cpu)
    final = Path(job.args.output_dir)

    # Everything that can fail on bad input happens before anything is written.
    records = load_records(job.args.dataset, "sft", seed=job.training.seed)
    if state.is_main_process:
        mix = language_mix(records)
        print(f"SFT data: {len(records)} examples in {len(mix)} languages: "
              + ", ".join(f"{lang} {n}" for lang, n in mix.items()), flush=True)
    run = TrainingRun(final, job.raw, stage="sft", overwrite=job.args.overwrite, source=source,
                      is_main=state.is_main_process)
    resume = run.prepare()
    state.wait_for_everyone()
    with run.building():
        trainer, stats = build_trainer(job, records)
    if resume and state.is_main_process:
        print(f"Resuming from {resume}", flush=True)

    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(run.partial))
    state.wait_for_everyone()
    if state.is_main_process:
        metrics = _summarise(trainer, result, stats, time.time() - start, state.num_processes)
        if job.lora and job.args.save_merged:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(run.partial / "merged", safe_serialization=True)
            trainer.processing_class.save_pretrained(run.partial / "merged")
        run.finish(metrics, keep_checkpoints=job.args.keep_checkpoints)
        _print_summary(final, metrics)
    state.wait_for_everyone()
    barrier()
    return final


def _summarise(trainer, result, stats: dict, wall: float, processes: int) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    tokens_seen = trainer.state.num_input_tokens_seen or 0
    runtime = result.metrics.get("train_runtime", wall)
    return {
        **stats,
        "processes": processes,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "train_loss": result.training_loss,
        "final_logged_loss": history[-1]["loss"] if history else None,
        "train_runtime_s": round(runtime, 2),
        "tokens_seen": tokens_seen,
        "tokens_per_second": round(tokens_seen / runtime, 1) if runtime and tokens_seen else None,
        "lora": trainer.model.__class__.__name__.startswith("Peft"),
    }


def _print_summary(final: Path, m: dict) -> None:
    rows = [("examples", m["examples"]), ("truncated", m["truncated"]), ("tokens", m["tokens"]),
            ("trained (assistant) tokens", m["trained_tokens"]), ("packs", m.get("packs", "-")),
            ("packing efficiency", f"{m['packing_efficiency']:.1%}" if "packing_efficiency" in m else "-"),
            ("packed attention", m.get("packed_attention", "-")), ("steps", m["steps"]), ("train loss", f"{m['train_loss']:.4f}"),
            ("tokens/s", m["tokens_per_second"]), ("output", str(final))]
    width = max(len(k) for k, _ in rows)
    print("\nSFT summary", flush=True)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", flush=True)
