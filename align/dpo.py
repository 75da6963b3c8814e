"""Offline DPO on trl's DPOTrainer: preference data in any ingested format (arbitrage pairs.jsonl included).

What polyalign adds: the reference model is chosen so that memory is spent once. With LoRA the reference is the
policy with its adapters disabled (no second copy); training an adapter that already exists (a LoRA directory as
`model`) gets trl's frozen copy of it as reference. With full fine-tuning and `precompute_ref_log_probs`, the
reference log-probs are computed once by the starting policy before training, so no reference stays in memory;
without it a frozen copy is loaded. `ref_model` names another reference explicitly. The run resumes after a kill and
its output appears only when complete (align.runs).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import language_mix, load_records
from .models import LoraArgs, ModelArgs, load_model, load_tokenizer, lora_config
from .runs import TrainingRun, barrier, build_trl_config, parse_training_keys

log = logging.getLogger(__name__)


@dataclass
class DPOArgs(ModelArgs):
    """polyalign's own DPO keys; every other recipe key is a trl DPOConfig field (beta, loss_type, ...)."""

    dataset: Any = None
    output_dir: str | None = None
    overwrite: bool = False
    lora: dict | bool | None = None
    save_merged: bool = False  # with LoRA: also write the adapter merged into its base under <output_dir>/merged
    keep_checkpoints: bool = False
    ref_model: str | None = None  # default: the starting policy (see the module docstring)


DPO_DEFAULTS = {"report_to": "none", "logging_steps": 10, "save_strategy": "steps", "save_steps": 200,
                "save_total_limit": 2}


@dataclass
class DPOJob:
    args: DPOArgs
    training: Any  # trl.DPOConfig
    lora: LoraArgs | None
    raw: dict = field(default_factory=dict)


def parse_dpo_config(raw: dict, source: str | None = None) -> DPOJob:
    from trl import DPOConfig

    args, trl_kwargs, lora = parse_training_keys(raw, source, DPOArgs, DPOConfig, dataset_help="preference data "
                                                 "(prompt/chosen/rejected, HH transcripts, arbitrage pairs)")
    training = build_trl_config(DPOConfig, {**DPO_DEFAULTS, **trl_kwargs}, args, source)
    return DPOJob(args, training, lora, raw)


def preference_dataset(records: list[dict]):
    """The columns DPOTrainer reads; language and scores stay in the records for reporting."""
    import datasets

    return datasets.Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                       for r in records])


def reference_kind(job: DPOJob, policy) -> str:
    if job.args.ref_model:
        kind = f"model {job.args.ref_model}"
    elif job.lora:
        kind = "policy with adapters disabled"
    elif hasattr(policy, "peft_config"):
        kind = "frozen copy of the starting adapter"
    elif job.training.precompute_ref_log_probs:
        return "starting policy, log-probs precomputed"
    else:
        kind = "frozen copy of the starting policy"
    return kind + (", log-probs precomputed" if job.training.precompute_ref_log_probs else "")


def build_dpo_trainer(job: DPOJob, records: list[dict]):
    """Load the policy (and a reference only where one is needed) and build the DPOTrainer."""
    from trl import DPOTrainer

    tokenizer = load_tokenizer(job.args)
    policy = load_model(job.args)
    if hasattr(policy, "peft_config"):  # an adapter directory as `model`: keep training that adapter
        for name, parameter in policy.named_parameters():
            parameter.requires_grad = "lora_" in name
    ref = None
    if job.args.ref_model:
        ref = load_model(dataclasses.replace(job.args, model=job.args.ref_model))
    elif not job.lora and not hasattr(policy, "peft_config") and not job.training.precompute_ref_log_probs:
        ref = load_model(job.args)
    if ref is not None:
        ref.requires_grad_(False).eval()
    kind = reference_kind(job, policy)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=job.training, train_dataset=preference_dataset(records),
                         processing_class=tokenizer, peft_config=lora_config(job.lora) if job.lora else None)
    if job.training.precompute_ref_log_probs and trainer.ref_model is not None:
        trainer.ref_model = None  # its log-probs are in the dataset now: free it
        del ref
        gc.collect()
    return trainer, kind


def run_dpo(raw: dict, source: str | None = None, *, records: list[dict] | None = None) -> Path:
    """The `dpo` stage: returns the output directory. `records` skips reading `dataset` (the online loop)."""
    from accelerate import PartialState

    job = parse_dpo_config(raw, source)
    state = PartialState(cpu=job.training.use_cpu)
    final = Path(job.args.output_dir)
    if records is None:
        records = load_records(job.args.dataset, "preference", seed=job.training.seed)
    if state.is_main_process:
        mix = language_mix(records)
        print(f"DPO data: {len(records)} pairs in {len(mix)} languages: "
              + ", ".join(f"{lang} {n}" for lang, n in mix.items()), flush=True)
    run = TrainingRun(final, job.raw, stage="dpo", overwrite=job.args.overwrite, source=source,
                      is_main=state.is_main_process)
    resume = run.prepare()
    state.wait_for_everyone()
    with run.building():
        trainer, reference = build_dpo_trainer(job, records)
    if state.is_main_process:
        print(f"Reference: {reference}" + (f"; resuming from {resume}" if resume else ""), flush=True)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(run.partial))
    state.wait_for_everyone()
    if state.is_main_process:
        tokenizer = trainer.processing_class
        tokenizer.save_pretrained(run.partial)
        lora = hasattr(trainer.model, "peft_config")
        if lora and job.args.save_merged:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(run.partial / "merged", safe_serialization=True)
            tokenizer.save_pretrained(run.partial / "merged")
        metrics = summarise(trainer, result, records, time.time() - start, state.num_processes, reference, lora)
        run.finish(metrics, keep_checkpoints=job.args.keep_checkpoints)
        print_summary(final, metrics)
    state.wait_for_everyone()
    barrier()
    return final


def summarise(trainer, result, records, wall: float, processes: int, reference: str, lora: bool) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    return {
        "pairs": len(records),
        "pairs_per_language": dict(Counter(r["lang"] for r in records).most_common()),
        "processes": processes,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "train_loss": result.training_loss,
        "final_logged_loss": last.get("loss"),
        "final_reward_accuracy": last.get("rewards/accuracies"),
        "final_reward_margin": last.get("rewards/margins"),
        "beta": trainer.args.beta,
        "loss_type": trainer.args.loss_type,
        "reference": reference,
        "lora": lora,
        "train_runtime_s": round(result.metrics.get("train_runtime", wall), 2),
        "steps_per_second": round(trainer.state.global_step / wall, 3) if wall else None,
    }


def print_summary(final: Path, m: dict) -> None:
    rows = [("pairs", m["pairs"]), ("steps", m["steps"]), ("train loss", f"{m['train_loss']:.4f}"),
            ("reward accuracy (last log)", m["final_reward_accuracy"]),
            ("reward margin (last log)", m["final_reward_margin"]), ("beta", m["beta"]),
            ("reference", m["reference"]), ("output", str(final))]
    width = max(len(k) for k, _ in rows)
    print("\nDPO summary", flush=True)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", flush=True)
