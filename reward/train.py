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
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.data import language_mix, load_records
from align.errors import ConfigError, InputError
from align.models import LoraArgs, ModelArgs, load_reward_model, load_reward_tokenizer, \
    reward_lora_config
from align.runs import TrainingRun, barrier, build_trl_config, parse_training_keys

from .rank import PairEncoder, RewardRanker, pairwise_accuracy, score_sharded

log = logging.getLogger(__name__)


@dataclass
class RewardArgs(ModelArgs):
    """polyalign's own reward keys; every other recipe key is a trl RewardConfig field."""

    dataset: Any = None
    eval_dataset: Any = None  # held-out preference data; when absent, `eval_fraction` of `dataset` is held out
    eval_fraction: float = 0.1
    output_dir: str | None = None
    overwrite: bool = False
    lora: dict | bool | None = None  # true for the defaults, or {r, alpha, dropout, target_modules, ...}
    margin_from_scores: bool = False  # Llama-2 style margin loss: margin = chosen_score - rejected_score
    eval_batch_size: int = 16  # pairs per scoring batch for the held-out accuracy
    keep_checkpoints: bool = False


# trl defaults that polyalign changes: never report to a tracker nobody configured, bf16 only where the hardware
# has it, checkpoints often enough to resume.
REWARD_DEFAULTS = {"report_to": "none", "logging_steps": 10, "save_strategy": "steps", "save_steps": 200,
                   "save_total_limit": 2}
# RewardConfig fields that would make trl tokenise or load differently from what polyalign does.
REFUSED = {"chat_template_path": "set the chat template in the model's tokenizer instead",
           "model_init_kwargs": "use polyalign's model keys (dtype, attn_implementation, trust_remote_code, revision)",
           "pad_token": "polyalign pads with the tokenizer's pad token (or its eos token)",
           "eos_token": "polyalign scores the text exactly as the chat template renders it"}


@dataclass
class RewardJob:
    args: RewardArgs
    training: Any  # trl.RewardConfig
    lora: LoraArgs | None
    raw: dict = field(default_factory=dict)


def parse_reward_config(raw: dict, source: str | None = None) -> RewardJob:
    from trl import RewardConfig

    args, trl_kwargs, lora = parse_training_keys(raw, source, RewardArgs, RewardConfig, dataset_help="preference "
                                                 "data (prompt/chosen/rejected), a file, folder or datasets name (or "
                                                 "a list of them)", output_help="where to write the reward model")
    if not 0 <= args.eval_fraction < 1:
        raise ConfigError(source, "eval_fraction", f"must be in [0, 1), got {args.eval_fraction}")
    for key, why in REFUSED.items():
        if key in trl_kwargs:
            raise ConfigError(source, key, f"not supported by polyalign reward: {why}")
    training = build_trl_config(RewardConfig, {**REWARD_DEFAULTS, **trl_kwargs}, args, source)
    return RewardJob(args, training, lora, raw)


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
        chosen, rejected = encoder.encode(record["prompt"], record["chosen"]), \
            encoder.encode(record["prompt"], record["rejected"])
        columns["chosen_ids"].append(chosen.input_ids)
        columns["rejected_ids"].append(rejected.input_ids)
        truncated += chosen.truncated or rejected.truncated
        tokens += len(chosen.input_ids) + len(rejected.input_ids)
    if margin:
        columns["margin"] = [_margin(r) for r in records]
    stats = {"pairs": len(records), "truncated": truncated, "tokens": tokens,
             "pairs_per_language": dict(Counter(r["lang"] for r in records).most_common())}
    return datasets.Dataset.from_dict(columns), stats


def _margin(record: dict) -> float:
    scores = record.get("chosen_score"), record.get("rejected_score")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise InputError(record.get("source", "dataset"), "margin_from_scores needs numeric chosen_score and "
                         f"rejected_score in every record; record '{record.get('id')}' has {scores}",
                         field="chosen_score")
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


def run_reward(raw: dict, source: str | None = None, *, callbacks: list | None = None) -> Path:
    """The `reward` stage: returns the output directory. `callbacks` go to the trainer (tests, extensions)."""
    from accelerate import PartialState
    from trl import RewardTrainer

    job = parse_reward_config(raw, source)
    state = PartialState(cpu=job.training.use_cpu)
    final = Path(job.args.output_dir)

    # Everything that can fail on bad input happens before anything is written.
    records = load_records(job.args.dataset, "preference", seed=job.training.seed)
    if job.args.eval_dataset is not None:
        train_records, eval_records = records, load_records(job.args.eval_dataset, "preference", seed=job.training.seed)
    else:
        train_records, eval_records = split_heldout(records, job.args.eval_fraction, job.training.seed)
    if not train_records:
        raise ConfigError(source, "eval_fraction", "nothing left to train on after holding out the eval split")
    tokenizer = load_reward_tokenizer(job.args)
    encoder = PairEncoder(tokenizer, job.training.max_length)
    train_data, stats = encode_pairs(train_records, encoder, job.args.margin_from_scores)
    eval_data, eval_stats = encode_pairs(eval_records, encoder, job.args.margin_from_scores) if eval_records \
        else (None, {"pairs": 0, "truncated": 0})
    if state.is_main_process:
        mix = language_mix(train_records)
        print(f"Reward data: {len(train_records)} training pairs in {len(mix)} languages ("
              + ", ".join(f"{lang} {n}" for lang, n in mix.items()) + f"), {len(eval_records)} held out; "
              f"{stats['truncated'] + eval_stats['truncated']} truncated to {job.training.max_length} tokens", flush=True)

    run = TrainingRun(final, job.raw, stage="reward", overwrite=job.args.overwrite, source=source,
                      is_main=state.is_main_process)
    partial = run.partial
    resume = run.prepare()
    state.wait_for_everyone()
    with run.building():
        model = load_reward_model(job.args, new_head=True, pad_token_id=tokenizer.pad_token_id, seed=job.training.seed)
        trainer = RewardTrainer(model=model, args=job.training, train_dataset=train_data, eval_dataset=eval_data,
                                processing_class=tokenizer, callbacks=callbacks,
                                peft_config=reward_lora_config(job.lora, model) if job.lora else None)
    if resume and state.is_main_process:
        print(f"Resuming from {resume}", flush=True)

    batch = job.args.eval_batch_size
    before = heldout_accuracy(trainer.model, tokenizer, eval_records, job.training.max_length, batch)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    after = heldout_accuracy(trainer.model, tokenizer, eval_records, job.training.max_length, batch)

    lora = job.lora is not None
    if lora:
        if state.is_main_process:
            trainer.model.save_pretrained(partial / "adapter", safe_serialization=True)
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(partial, safe_serialization=True)
            tokenizer.save_pretrained(partial)
    else:
        trainer.save_model(str(partial))
    state.wait_for_everyone()
    if state.is_main_process:
        metrics = _summarise(trainer, result, stats, eval_stats, before, after, wall, state.num_processes, lora, resume)
        run.finish(metrics, keep_checkpoints=job.args.keep_checkpoints)
        _print_summary(final, metrics)
    state.wait_for_everyone()
    barrier()
    return final


def _summarise(trainer, result, stats, eval_stats, before, after, wall, processes, lora, resume) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    runtime = result.metrics.get("train_runtime", wall)
    return {
        "train_pairs": stats["pairs"],
        "eval_pairs": eval_stats["pairs"],
        "truncated": stats["truncated"] + eval_stats["truncated"],
        "tokens": stats["tokens"],
        "pairs_per_language": stats["pairs_per_language"],
        "processes": processes,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "train_loss": result.training_loss,
        "final_logged_loss": history[-1]["loss"] if history else None,
        "train_runtime_s": round(runtime, 2),
        "resumed_from": Path(resume).name if resume else None,
        "lora": lora,
        "eval": after,
        "eval_untrained": before,
    }


def _print_summary(final: Path, m: dict) -> None:
    def acc(block):
        return f"{block['accuracy']:.1%}" if block else "-"

    rows = [("training pairs", m["train_pairs"]), ("held-out pairs", m["eval_pairs"]), ("truncated", m["truncated"]),
            ("steps", m["steps"]), ("train loss", f"{m['train_loss']:.4f}"),
            ("held-out accuracy", f"{acc(m['eval'])} (untrained {acc(m['eval_untrained'])})")]
    if m["eval"]:
        rows.append(("per language", ", ".join(f"{lang} {v:.0%}" for lang, v in m["eval"]["per_language"].items())))
    rows.append(("output", str(final)))
    width = max(len(k) for k, _ in rows)
    print("\nReward model summary", flush=True)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", flush=True)
