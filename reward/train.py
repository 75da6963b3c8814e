"""Bradley–Terry reward model on trl's RewardTrainer.

What polyalign adds to RewardTrainer: preference records from any ingested format; tokenisation by the ranker's own
encoder (reward.rank.PairEncoder), so a trained model is scored exactly as it was trained, with explicit truncation
(end of prompt, start of completion) instead of trl's silent dropping of long pairs; a held-out split stratified by
language and grouped by prompt (no prompt on both sides); held-out pairwise accuracy overall and per language,
before and after training; a run that resumes after a kill; an output directory that appears only when complete and
that AutoModelForSequenceClassification loads (a LoRA run is merged into its base; the adapter is kept beside it).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import ConfigError, InputError
from align.data import load_records
from align.models.loading import load_reward_model, load_reward_tokenizer, reward_lora_config
from align.training.keys import TrainingArgs, TrainingJob, build_trl_config, parse_training_keys
from align.training.packed_pairs import PaddingFreeArgs, choose, layout_rows
from align.training.sharded import gather_on_save, is_sharded, save_merged
from align.training.stage import TrainingStage, describe_languages
from reward.rank import PairEncoder, RewardRanker, pairwise_accuracy, score_sharded

log = logging.getLogger(__name__)


@dataclass
class RewardArgs(PaddingFreeArgs, TrainingArgs):
    """polyalign's own reward keys; every other recipe key is a trl RewardConfig field."""

    eval_dataset: Any = None  # held-out preference data; when absent, `eval_fraction` of `dataset` is held out
    eval_fraction: float = 0.1  # without eval_dataset: the share of each language's prompts held out
    margin_from_scores: bool = False  # Llama-2 style margin loss: margin = chosen_score - rejected_score
    eval_batch_size: int = 16  # pairs per scoring batch for the held-out accuracy
    # A LoRA reward model is always merged, so that AutoModelForSequenceClassification loads the output; the adapter
    # is kept under <output_dir>/adapter.
    save_merged: bool = True


# RewardConfig fields that would make trl tokenise or load differently from what polyalign does.
REFUSED = {
    "chat_template_path": "set the chat template in the model's tokenizer instead",
    "model_init_kwargs": "use polyalign's model keys (dtype, attn_implementation, trust_remote_code, revision)",
    "pad_token": "polyalign pads with the tokenizer's pad token (or its eos token)",
    "eos_token": "polyalign scores the text exactly as the chat template renders it",
}


def parse_reward_config(raw: dict, source: str | None = None) -> TrainingJob:
    from trl import RewardConfig

    args, trl_kwargs, lora = parse_training_keys(
        raw,
        source,
        RewardArgs,
        RewardConfig,
        dataset_help="preference data (prompt/chosen/rejected), a file, folder or datasets name (or a list of them)",
        output_help="where to write the reward model",
    )
    if not 0 <= args.eval_fraction < 1:
        raise ConfigError(source, "eval_fraction", f"must be in [0, 1), got {args.eval_fraction}")
    if args.eval_batch_size < 1:
        raise ConfigError(source, "eval_batch_size", f"must be at least 1, got {args.eval_batch_size}")
    if lora and not args.save_merged:
        raise ConfigError(
            source,
            "save_merged",
            "a LoRA reward model is always saved merged into its base (the adapter beside it, under adapter/)",
        )
    for key, why in REFUSED.items():
        if key in trl_kwargs:
            raise ConfigError(source, key, f"not supported by polyalign reward: {why}")
    if args.chat_template:  # the reward model reads text with its own tokenizer's template, or as plain text
        raise ConfigError(
            source, "chat_template", f"not supported by polyalign reward: {REFUSED['chat_template_path']}"
        )
    return TrainingJob(args, build_trl_config(RewardConfig, trl_kwargs, args, source), lora, raw, source)


# ---------------------------------------------------------------------------------------------------- data


def split_heldout(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of each language's prompts (all pairs of a held-out prompt go together), seeded."""
    if fraction <= 0:
        return records, []
    by_lang: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for i, record in enumerate(records):
        key = json.dumps(record["prompt"], sort_keys=True, ensure_ascii=False)
        by_lang[record["lang"]].setdefault(key, []).append(i)
    held: set[int] = set()
    rng = random.Random(seed)
    for lang in sorted(by_lang):
        groups = list(by_lang[lang].values())
        rng.shuffle(groups)
        n = min(len(groups) - 1, max(1, round(len(groups) * fraction))) if len(groups) > 1 else 0
        for group in groups[:n]:
            held.update(group)
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def encode_pairs(records: list[dict], encoder: PairEncoder, margin: bool):
    """Preference records → a datasets.Dataset of chosen_ids/rejected_ids (the columns RewardTrainer takes as
    already processed), and counts for the summary."""
    import datasets

    columns: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    truncated = tokens = 0
    for record in records:
        chosen, rejected = (
            encoder.encode(record["prompt"], record["chosen"]),
            encoder.encode(record["prompt"], record["rejected"]),
        )
        columns["chosen_ids"].append(chosen.input_ids)
        columns["rejected_ids"].append(rejected.input_ids)
        truncated += chosen.truncated or rejected.truncated
        tokens += len(chosen.input_ids) + len(rejected.input_ids)
    if margin:
        columns["margin"] = [_margin(r) for r in records]
    stats = {
        "pairs": len(records),
        "truncated": truncated,
        "tokens": tokens,
        "pairs_per_language": dict(Counter(r["lang"] for r in records).most_common()),
    }
    return datasets.Dataset.from_dict(columns), stats


def _margin(record: dict) -> float:
    scores = record.get("chosen_score"), record.get("rejected_score")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise InputError(
            record.get("source", "dataset"),
            "margin_from_scores needs numeric chosen_score and "
            f"rejected_score in every record; record '{record.get('id')}' has {scores}",
            field="chosen_score",
        )
    return float(scores[0] - scores[1])


def heldout_accuracy(model, tokenizer, records: list[dict], max_length: int | None, batch_size: int) -> dict | None:
    """Pairwise accuracy (chosen scored above rejected) on held-out records, overall and per language; scored by
    the same ranker that `polyalign score` uses, shared across processes."""
    if not records:
        return None
    ranker = RewardRanker(model, tokenizer, batch_size=batch_size, max_length=max_length)
    prompts = [r["prompt"] for r in records]
    scores = score_sharded(ranker, prompts + prompts, [r["chosen"] for r in records] + [r["rejected"] for r in records])
    n = len(records)
    return pairwise_accuracy(scores.scores[:n], scores.scores[n:], [r["lang"] for r in records])


# ---------------------------------------------------------------------------------------------------- stage


class RewardStage(TrainingStage):
    stage, label = "reward", "Reward model"

    def __init__(self, job: TrainingJob, *, callbacks: list | None = None):
        super().__init__(job)
        self.callbacks = callbacks

    def load(self) -> str:
        """The training and held-out pairs, tokenised by the ranker's encoder (how the trained model is scored)."""
        job, seed = self.job, self.job.training.seed
        records = load_records(job.args.dataset, "preference", seed=seed, source=job.source)
        if job.args.eval_dataset is not None:
            self.records, self.eval_records = (
                records,
                load_records(job.args.eval_dataset, "preference", seed=seed, source=job.source, key="eval_dataset"),
            )
        else:
            self.records, self.eval_records = split_heldout(records, job.args.eval_fraction, seed)
        if not self.records:
            raise ConfigError(job.source, "eval_fraction", "nothing left to train on after holding out the eval split")
        self.tokenizer = load_reward_tokenizer(job.args)
        encoder = PairEncoder(self.tokenizer, job.training.max_length)
        self.train_data, self.stats = encode_pairs(self.records, encoder, job.args.margin_from_scores)
        self.eval_data, self.eval_stats = (
            encode_pairs(self.eval_records, encoder, job.args.margin_from_scores)
            if self.eval_records
            else (None, {"pairs": 0, "truncated": 0})
        )
        truncated = self.stats["truncated"] + self.eval_stats["truncated"]
        return (
            f"Reward data: {len(self.records)} training pairs in {describe_languages(self.records)}; "
            f"{len(self.eval_records)} held out, {truncated} truncated to {job.training.max_length} tokens"
        )

    def build(self):
        from align.training.packed_trainers import PackedRewardTrainer

        job = self.job
        model = load_reward_model(
            job.args, new_head=True, pad_token_id=self.tokenizer.pad_token_id, seed=job.training.seed
        )
        pack, self.layout = choose(job.args.padding_free, [model], scores=True, source=job.source)
        return PackedRewardTrainer(
            model=model,
            args=job.training,
            train_dataset=self.train_data,
            eval_dataset=self.eval_data,
            processing_class=self.tokenizer,
            callbacks=self.callbacks,
            pack=pack,
            peft_config=reward_lora_config(job.lora, model, job.source) if job.lora else None,
        )

    def starting(self, resume: str | None) -> str:
        return f"Batches {self.layout}" + (f"; resuming from {resume}" if resume else "")

    def train(self, trainer, resume: str | None):
        """Trained between two held-out accuracies: the untrained model's and the trained one's."""
        self.before = self._accuracy(trainer)
        result = super().train(trainer, resume)
        self.after = self._accuracy(trainer)
        return result

    def _accuracy(self, trainer) -> dict | None:
        return heldout_accuracy(
            trainer.model,
            self.tokenizer,
            self.eval_records,
            self.job.training.max_length,
            self.job.args.eval_batch_size,
        )

    def save(self, trainer, directory: Path, is_main: bool) -> None:
        if self.job.lora is None:
            gather_on_save(trainer)
            trainer.save_model(str(directory))
        elif is_sharded(trainer):
            gather_on_save(trainer)
            trainer.save_model(str(directory / "adapter"))
            trainer.accelerator.wait_for_everyone()
            if is_main:
                save_merged(
                    trainer,
                    directory,
                    adapter=directory / "adapter",
                    load=lambda path: load_reward_model(self.job.args.model_args(path), new_head=True),
                )
        elif is_main:
            trainer.model.save_pretrained(directory / "adapter", safe_serialization=True)
            save_merged(trainer, directory)

    def metrics(self, trainer, result, common: dict) -> dict:
        stats, held = self.stats, self.eval_stats
        return {
            "train_pairs": stats["pairs"],
            "eval_pairs": held["pairs"],
            "truncated": stats["truncated"] + held["truncated"],
            "tokens": stats["tokens"],
            "pairs_per_language": stats["pairs_per_language"],
            **common,
            "lora": self.job.lora is not None,
            "eval": self.after,
            "eval_untrained": self.before,
        }

    def rows(self, m: dict) -> list[tuple[str, object]]:
        def accuracy(block):
            return f"{block['accuracy']:.1%}" if block else "-"

        rows = [
            ("training pairs", m["train_pairs"]),
            ("held-out pairs", m["eval_pairs"]),
            ("truncated", m["truncated"]),
            *super().rows(m),
            *layout_rows(m),
            ("held-out accuracy", f"{accuracy(m['eval'])} (untrained {accuracy(m['eval_untrained'])})"),
        ]
        if m["eval"]:
            rows.append(("per language", ", ".join(f"{lang} {v:.0%}" for lang, v in m["eval"]["per_language"].items())))
        return rows


def run_reward(raw: dict, source: str | None = None, *, callbacks: list | None = None) -> Path:
    """The `reward` stage: returns the output directory. `callbacks` go to the trainer (tests, extensions)."""
    return RewardStage(parse_reward_config(raw, source), callbacks=callbacks).run()
