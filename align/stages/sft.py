"""Packed supervised fine-tuning on trl's SFTTrainer.

What polyalign adds to SFTTrainer: records from any ingested format, assistant-only labels for any chat template
(align.models.chat), packing that keeps examples apart (best-fit-decreasing bins with no attention mask, position ids
restarting per example, no KV cache; the layout per attention backend is align.training.packing's: flattened batches with
cu_seqlens for flash-attention, flattened batches with per-example sdpa (align.models.attention) on CPU, one row
per bin with a block-diagonal mask otherwise), a run that resumes from its last checkpoint after a kill, and an
output directory that appears only when training is complete.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError
from align.data import hold_out_by_id, load_records
from align.models.chat import IGNORE_INDEX, TemplateError, tokenize_chat
from align.models.loading import cuda_available, load_model, load_tokenizer, lora_config, match_embeddings
from align.training.keys import (
    TRAINING_DEFAULTS,
    TrainingArgs,
    TrainingJob,
    build_trl_config,
    parse_training_keys,
    take_chat_template_path,
)
from align.training.packing import LAYOUTS, PackRowsCollator, choose_layout
from align.training.stage import TrainingStage, describe_languages

log = logging.getLogger(__name__)


@dataclass
class SFTArgs(TrainingArgs):
    """polyalign's own SFT keys; every other recipe key is a trl SFTConfig field."""

    packed_attention: str = "auto"  # auto | segments | rows: how packs are laid out for sdpa (align.training.packing)
    # Held-out records (a file, folder or datasets name, like `dataset`), or a seeded fraction of `dataset` held out
    # by id: their loss is measured at every save, and the output is the checkpoint with the lowest one unless
    # `load_best_model_at_end: false` (Chen et al.'s protocol: train long, keep the best by held-out perplexity).
    eval_dataset: Any = None
    eval_fraction: float | None = None  # without eval_dataset: the share of `dataset` held out by id

    # not a key: polyalign packs unless told not to, counts the tokens seen (the summary's tokens/s), and labels
    # assistant turns only (its own labels: trl is told not to re-derive them)
    trl_defaults = {
        **TRAINING_DEFAULTS,
        "packing": True,
        "include_num_input_tokens_seen": "all",
        "assistant_only_loss": True,
    }


@dataclass
class SFTJob(TrainingJob):
    assistant_only_loss: bool = True  # labels on assistant turns only (polyalign's, not trl's)


def parse_sft_config(raw: dict, source: str | None = None) -> SFTJob:
    from trl import SFTConfig

    args, trl_kwargs, lora = parse_training_keys(
        raw, source, SFTArgs, SFTConfig, dataset_help="a file, folder, or datasets name (or a list of them)"
    )
    take_chat_template_path(args, trl_kwargs, source)
    if args.packed_attention not in LAYOUTS:
        raise ConfigError(
            source, "packed_attention", f"expected one of {', '.join(LAYOUTS)}, got {args.packed_attention!r}"
        )
    evaluation_keys(args, trl_kwargs, source)
    kwargs = {**SFTArgs.trl_defaults, **trl_kwargs}
    assistant_only = kwargs.pop("assistant_only_loss")
    kwargs |= {"assistant_only_loss": False, "completion_only_loss": False}
    if kwargs["packing"] and kwargs.get("packing_strategy", "bfd") == "wrapped":
        raise ConfigError(
            source,
            "packing_strategy",
            "'wrapped' cuts examples mid-sequence and lets them attend "
            "across boundaries; polyalign packs with 'bfd' (default) or 'bfd_split'",
        )
    training = build_trl_config(SFTConfig, kwargs, args, source)
    return SFTJob(args, training, lora, raw, source, assistant_only_loss=assistant_only)


def evaluation_keys(args: SFTArgs, trl_kwargs: dict, source: str | None) -> None:
    """With held-out records: evaluate at every save and keep the best checkpoint (trl's keys override); without
    them, an evaluation key is an error now rather than the Trainer's once the model has loaded."""
    if args.eval_dataset is not None and args.eval_fraction is not None:
        raise ConfigError(source, "eval_fraction", "give eval_dataset or eval_fraction, not both")
    if args.eval_fraction is not None and not 0 < args.eval_fraction < 1:
        raise ConfigError(source, "eval_fraction", f"must be in (0, 1), got {args.eval_fraction!r}")
    if args.eval_dataset is None and args.eval_fraction is None:
        for key in ("eval_strategy", "load_best_model_at_end"):
            if trl_kwargs.get(key) not in (None, False, "no"):
                raise ConfigError(source, key, "needs held-out records: add eval_dataset or eval_fraction")
        return
    save_strategy = trl_kwargs.get("save_strategy", TRAINING_DEFAULTS["save_strategy"])
    trl_kwargs.setdefault("eval_strategy", save_strategy)
    if str(trl_kwargs["eval_strategy"]) == "steps":
        trl_kwargs.setdefault("eval_steps", trl_kwargs.get("save_steps", TRAINING_DEFAULTS["save_steps"]))
    trl_kwargs.setdefault("load_best_model_at_end", save_strategy != "no")
    if trl_kwargs["load_best_model_at_end"]:
        trl_kwargs.setdefault("metric_for_best_model", "eval_loss")


def tokenize_records(
    records: list[dict], tokenizer, max_length: int | None, *, assistant_only: bool = True, num_proc: int | None = None
):
    """Records → a datasets.Dataset of input_ids/labels, and counts for the summary. A conversation gives more than one
    example where its template rewrites earlier turns (align.models.chat)."""
    import datasets

    def encode(batch):
        out = {"input_ids": [], "labels": [], "truncated": [], "lang": [], "provenance": []}
        for rid, messages, tools, lang, provenance in zip(
            batch["id"], batch["messages"], batch["tools"], batch["lang"], batch["provenance"]
        ):
            try:
                chats = tokenize_chat(
                    tokenizer,
                    messages,
                    max_length=max_length,
                    assistant_only=assistant_only,
                    tools=json.loads(tools) if tools else None,
                )
            except TemplateError as e:
                raise TemplateError(f"record {rid}: {e}") from None
            for chat in chats:
                out["input_ids"].append(chat.input_ids)
                out["labels"].append(chat.labels)
                out["truncated"].append(chat.truncated)
                out["lang"].append(lang)
                out["provenance"].append(provenance)
        return out

    # Messages and tools travel as JSON: their optional keys (tool_calls, reasoning_content) differ between
    # records, which Arrow's one schema per column would fill with nulls the templates would then render.
    table = datasets.Dataset.from_dict(
        {
            "id": [str(r.get("id", i)) for i, r in enumerate(records)],
            "messages": [json.dumps(r["messages"]) for r in records],
            "tools": [json.dumps(r["tools"]) if r.get("tools") else "" for r in records],
            "lang": [r["lang"] for r in records],
            "provenance": [r.get("provenance") or "unspecified" for r in records],
        }
    )
    encoded = table.map(
        lambda batch: encode({**batch, "messages": [json.loads(m) for m in batch["messages"]]}),
        batched=True,
        remove_columns=table.column_names,
        num_proc=num_proc,
        desc="Tokenising (assistant-only labels)",
    )
    kept = encoded.filter(lambda ex: any(label != IGNORE_INDEX for label in ex["labels"]), num_proc=num_proc)
    stats = {
        "examples": len(records),
        "training_examples": len(encoded),  # more than examples where a template rewrites earlier turns
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
    return {
        "packs": len(lengths),
        "packing_efficiency": round(sum(lengths) / (len(lengths) * max_length), 4) if lengths else 0.0,
    }


def packing_layout(job: SFTJob, model) -> str:
    """Pick the layout for the model's attention backend; on `segments`, switch the model to `per_example`."""
    from align.models import attention as segment_attention

    try:
        layout = choose_layout(
            job.args.packed_attention, model.config._attn_implementation, cuda_available() and not job.training.use_cpu
        )
    except ValueError as e:
        raise ConfigError(job.source, "packed_attention", str(e)) from None
    if layout == "segments" and not segment_attention.use_for(model):
        if job.args.packed_attention == "segments":
            raise ConfigError(
                job.source,
                "packed_attention",
                f"{model.config.model_type} has layers "
                "that per-example attention does not handle (chunked, linear or recurrent); use 'rows'",
            )
        layout = "rows"
    return layout


def build_trainer(job: SFTJob, records: list[dict], eval_records: list[dict] | None = None):
    """Tokenise, load the model and build the SFTTrainer: shared by the stage, the tests and the benchmark."""
    from trl import SFTTrainer

    tokenizer = load_tokenizer(job.args)

    def tokenize(rows):
        return tokenize_records(
            rows,
            tokenizer,
            job.training.max_length,
            assistant_only=job.assistant_only_loss,
            num_proc=job.training.dataset_num_proc,
        )

    dataset, stats = tokenize(records)
    if len(dataset) == 0:
        raise ConfigError(job.source, "dataset", "no example has an assistant token left to train on")
    eval_dataset = None
    if eval_records:
        eval_dataset, eval_stats = tokenize(eval_records)
        if len(eval_dataset) == 0:
            raise ConfigError(job.source, "eval_dataset", "no held-out example has an assistant token to score")
        stats["eval_examples"] = len(eval_dataset)
    model = match_embeddings(load_model(job.args), tokenizer)
    layout = None
    if job.training.packing:
        layout = packing_layout(job, model)
    trainer = SFTTrainer(
        model=model,
        args=job.training,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(job.lora, model, source=job.source) if job.lora else None,
    )
    if layout == "rows":
        trainer.data_collator = PackRowsCollator(tokenizer.pad_token_id, job.training.pad_to_multiple_of)
    if layout:  # varlen and segments keep trl's flattened padding-free collator (cu_seqlens, first tokens unlabelled)
        stats.update(packing_stats(trainer.train_dataset, job.training.max_length), packed_attention=layout)
    return trainer, stats


class SFTStage(TrainingStage):
    stage, label, kind, noun = "sft", "SFT", "sft", "examples"

    eval_records: list[dict] | None = None

    def load(self) -> str:
        described = super().load()
        args = self.job.args
        if args.eval_fraction is not None:
            self.records, self.eval_records = hold_out_by_id(self.records, args.eval_fraction, self.job.training.seed)
            if not self.records:
                raise ConfigError(
                    self.job.source, "eval_fraction", "holds out every record; nothing is left to train on"
                )
            described = f"{self.label} data: {len(self.records)} {self.noun} in {describe_languages(self.records)}"
        elif args.eval_dataset is not None:
            self.eval_records = load_records(
                args.eval_dataset, self.kind, seed=self.job.training.seed, source=self.job.source
            )
        if self.eval_records is not None:
            described += f"; held out: {len(self.eval_records)} in {describe_languages(self.eval_records)}"
        return described

    def build(self):
        trainer, self.stats = build_trainer(self.job, self.records, self.eval_records)
        return trainer

    def metrics(self, trainer, result, common: dict) -> dict:
        runtime, timed = common["train_runtime_s"], common["timed_tokens"]
        return {
            **self.stats,
            **common,
            **held_out_metrics(trainer),
            "tokens_seen": trainer.state.num_input_tokens_seen or 0,
            "tokens_per_second": round(timed / runtime, 1) if runtime and timed else None,
        }

    def rows(self, m: dict) -> list[tuple[str, object]]:
        packed = "packing_efficiency" in m
        return [
            ("examples", m["examples"]),
            ("truncated", m["truncated"]),
            ("tokens", m["tokens"]),
            ("trained (assistant) tokens", m["trained_tokens"]),
            ("packs", m.get("packs", "-")),
            ("packing efficiency", f"{m['packing_efficiency']:.1%}" if packed else "-"),
            ("packed attention", m.get("packed_attention", "-")),
            *super().rows(m),
            *(
                [
                    (
                        "held-out loss (best)",
                        f"{m['best_eval_loss']:.4f} at step {m['best_step']}" + (", kept" if m["kept_best"] else ""),
                    )
                ]
                if m.get("best_eval_loss") is not None
                else []
            ),
            ("tokens/s", m["tokens_per_second"]),
        ]


def held_out_metrics(trainer) -> dict:
    """The held-out loss at each evaluation, and the best one (with its perplexity and step): empty without an
    eval set."""
    import math

    history = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
    if not history:
        return {}
    best = min(history, key=lambda h: h["eval_loss"])
    return {
        "eval_loss_history": history,
        "best_eval_loss": best["eval_loss"],
        "best_step": best["step"],
        "best_eval_perplexity": round(math.exp(best["eval_loss"]), 4),
        "kept_best": bool(trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint),
    }


def run_sft(raw: dict, source: str | None = None) -> Path:
    """The `sft` stage: returns the output directory."""
    return SFTStage(parse_sft_config(raw, source)).run()
