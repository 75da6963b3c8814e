"""Saving from sharded engines (FSDP, DeepSpeed ZeRO-3): gather the full weights on save, load them unpartitioned,
and write a LoRA run merged into its base."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def gather_on_save(trainer) -> None:
    """A stage's output is one loadable model on every engine: under FSDP the final save gathers a full state dict (a
    sharded one, right for resuming checkpoints, leaves no weights in the output). ZeRO-3 gathers when the accelerate
    config sets zero3_save_16bit_model, as recipes/accelerate/deepspeed_zero3.yaml does."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


def is_sharded(trainer) -> bool:
    """Whether no one process holds the whole model (FSDP, DeepSpeed ZeRO)."""
    return trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled


@contextlib.contextmanager
def unpartitioned_loading(trainer):
    """Under ZeRO-3 transformers partitions every model it loads across the processes, a collective call: the main
    process loading a model alone must step outside it, or it waits forever for the others."""
    if not trainer.is_deepspeed_enabled:
        yield
        return
    from transformers.integrations import deepspeed

    held = deepspeed._hf_deepspeed_config_weak_ref  # transformers' one switch for zero.Init; no public getter
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = held


def save_merged(trainer, directory: Path, *, adapter: Path | None = None, load=None) -> None:
    """The trained adapter merged into its base, with the tokenizer: a model that loads without peft. A sharded
    model, whose parameters no one process holds, is merged on the CPU: the adapter saved in `adapter`, on the base
    that `load(path)` reads from where it is now (the adapter's config names where it will be once published)."""
    if is_sharded(trainer):
        from peft import PeftModel

        base = trainer.model.get_base_model().name_or_path
        with unpartitioned_loading(trainer):
            merged = PeftModel.from_pretrained(load(base), str(adapter)).merge_and_unload()
    else:
        merged = trainer.model.merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)
    trainer.processing_class.save_pretrained(directory)


def training_engine(trainer) -> str:
    """What trained the model, as accelerate ran it: `single`, `DDP`, `FSDP2`, `DeepSpeed ZeRO-3`, ...; the proof that a
    launch config took effect."""
    accelerator = trainer.accelerator
    if trainer.is_deepspeed_enabled:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return f"DeepSpeed ZeRO-{stage}"
    if trainer.is_fsdp_enabled:
        return f"FSDP{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    return "DDP" if accelerator.num_processes > 1 else "single"


def warn_unsupported_engine(state) -> None:
    """accelerate applies an FSDP config only on accelerators; on CPUs it quietly trains with DDP over gloo."""
    from accelerate.utils import DistributedType

    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and state.distributed_type == DistributedType.MULTI_CPU
    ):
        log.warning(
            "FSDP was asked for, but accelerate runs FSDP only on GPUs: this run trains with DDP over gloo "
            "on the CPU (DeepSpeed ZeRO-3 does run on CPUs)"
        )
