"""Offline DPO on trl's DPOTrainer: preference data in any ingested format (arbitrage pairs.jsonl included).

What polyalign adds: the reference model is chosen so that memory is spent once. With LoRA the reference is the
policy with its adapters disabled (no second copy); training an adapter that already exists (a LoRA directory as
`model`) gets trl's frozen copy of it as reference. With full fine-tuning and `precompute_ref_log_probs`, the
reference log-probs are computed once by the starting policy before training, so no reference stays in memory;
without it a frozen copy is loaded. `ref_model` names another reference explicitly. The run resumes after a kill and
its output appears only when complete (align.core.lifecycle). With `padding_free` (on where the attention backend allows it)
the chosen and rejected sequences of a batch's pairs reach the model as one packed row (align.training.packed_pairs).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from align.core.errors import InputError
from align.data import language_mix
from align.models.loading import load_model, load_tokenizer, lora_config, match_embeddings
from align.training.keys import TrainingArgs, TrainingJob, build_trl_config, parse_training_keys
from align.training.packed_pairs import PaddingFreeArgs, choose, layout_rows
from align.training.stage import TrainingStage

log = logging.getLogger(__name__)


@dataclass
class DPOArgs(PaddingFreeArgs, TrainingArgs):
    """polyalign's own DPO keys; every other recipe key is a trl DPOConfig field (beta, loss_type, ...)."""

    ref_model: str | None = None  # default: the starting policy (see the module docstring)


def parse_dpo_config(raw: dict, source: str | None = None) -> TrainingJob:
    from trl import DPOConfig

    args, trl_kwargs, lora = parse_training_keys(
        raw,
        source,
        DPOArgs,
        DPOConfig,
        dataset_help="preference data (prompt/chosen/rejected, HH transcripts, arbitrage pairs)",
    )
    return TrainingJob(args, build_trl_config(DPOConfig, trl_kwargs, args, source), lora, raw, source)


def preference_dataset(records: list[dict]):
    """The columns DPOTrainer reads (tool definitions as JSON, which trl renders through the chat template); language
    and scores stay in the records for reporting."""
    import datasets

    tools = any(r.get("tools") for r in records)
    return datasets.Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                **({"tools": json.dumps(r.get("tools"))} if tools else {}),
            }
            for r in records
        ]
    )


def _key_paths(value, prefix=()) -> frozenset:
    if not isinstance(value, dict):
        return frozenset()
    return frozenset({(*prefix, k) for k in value}).union(*(_key_paths(v, (*prefix, k)) for k, v in value.items()))


def _check_call_arguments(records: list[dict]) -> None:
    """Arrow gives a column one schema, so tool-call arguments with different keys would each gain the others' keys
    as null, and the template would render them: refuse that rather than train on calls nobody made."""
    first = None
    for record in records:
        for message in [*record["prompt"], *record["chosen"], *record["rejected"]]:
            for call in message.get("tool_calls") or []:
                keys = _key_paths(call["function"].get("arguments"))
                if first is None:
                    first = (record.get("id"), keys)
                elif keys != first[1]:
                    raise InputError(
                        str(record.get("source", "dataset")),
                        f"records {first[0]} and {record.get('id')}: preference training needs every tool call's "
                        f"arguments to have the same keys ({sorted(map('.'.join, first[1]))} vs "
                        f"{sorted(map('.'.join, keys))}); split the data by tool, or train these calls with SFT",
                        field="tool_calls",
                    )


def reference_kind(job: TrainingJob, policy) -> str:
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


def build_dpo_trainer(job: TrainingJob, records: list[dict]):
    """Load the policy (and a reference only where one is needed) and build the DPOTrainer; returns it, what the
    reference is, and how the batches are laid out."""
    tokenizer = load_tokenizer(job.args)
    policy = match_embeddings(load_model(job.args), tokenizer)
    if hasattr(policy, "peft_config"):  # an adapter directory as `model`: keep training that adapter
        for name, parameter in policy.named_parameters():
            parameter.requires_grad = "lora_" in name
    ref = None
    if job.args.ref_model:
        ref = load_model(dataclasses.replace(job.args, model=job.args.ref_model))
    elif not job.lora and not hasattr(policy, "peft_config") and not job.training.precompute_ref_log_probs:
        ref = match_embeddings(load_model(job.args), tokenizer)
    if ref is not None:
        ref.requires_grad_(False).eval()
    kind = reference_kind(job, policy)
    pack, layout = choose(job.args.padding_free, [policy] + ([ref] if ref is not None else []), source=job.source)
    from align.training.packed_trainers import PackedDPOTrainer

    trainer = PackedDPOTrainer(
        model=policy,
        ref_model=ref,
        args=job.training,
        train_dataset=preference_dataset(records),
        processing_class=tokenizer,
        peft_config=lora_config(job.lora, policy, source=job.source) if job.lora else None,
        pack=pack,
    )
    if job.training.precompute_ref_log_probs and trainer.ref_model is not None:
        trainer.ref_model = None  # its log-probs are in the dataset now: free it
        del ref
        gc.collect()
    return trainer, kind, layout


class DPOStage(TrainingStage):
    stage, label, kind, noun = "dpo", "DPO", "preference", "pairs"

    def starting(self, resume: str | None) -> str:
        return f"Reference: {self.reference}; batches {self.layout}" + (f"; resuming from {resume}" if resume else "")

    def load(self) -> str:
        line = super().load()
        _check_call_arguments(self.records)  # before any model loads
        return line

    def build(self):
        trainer, self.reference, self.layout = build_dpo_trainer(self.job, self.records)  # both go in the summary
        return trainer

    def metrics(self, trainer, result, common: dict) -> dict:
        last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
        return {
            "pairs": len(self.records),
            "pairs_per_language": language_mix(self.records),
            **common,
            "final_reward_accuracy": last.get("rewards/accuracies"),
            "final_reward_margin": last.get("rewards/margins"),
            "beta": trainer.args.beta,
            "loss_type": trainer.args.loss_type,
            "reference": self.reference,
            "steps_per_second": round(common["timed_steps"] / self.wall, 3) if self.wall else None,
        }

    def rows(self, m: dict) -> list[tuple[str, object]]:
        return [
            ("pairs", m["pairs"]),
            *super().rows(m),
            ("reward accuracy (last log)", m["final_reward_accuracy"]),
            ("reward margin (last log)", m["final_reward_margin"]),
            ("beta", m["beta"]),
            ("reference", m["reference"]),
            *layout_rows(m),
        ]


def run_dpo(raw: dict, source: str | None = None, *, records: list[dict] | None = None) -> Path:
    """The `dpo` stage: returns the output directory. `records` skips reading `dataset` (the online loop)."""
    return DPOStage(parse_dpo_config(raw, source), records).run()
