"""Every private or version-sensitive use of a library, in one place.

polyalign reaches into trl, transformers, peft and sacrebleu where their public API stops short: sacrebleu's
per-sentence chrF++ statistics (the paired bootstrap needs them), transformers' generic sequence classifier and its
auto-class tables (reward models for families without one), a family's own eager attention (Gemma 2's soft-capping),
the attention-switch check, the cache layer that the preallocated KV cache extends, peft's default LoRA targets, and
trl's loss hook that the packed preference trainers wrap. An upgrade that moves one of them breaks here, and
tests/test_compat.py says which and where, instead of a stage failing deep inside a run.

Libraries are imported inside each function: this module sits in align.core and must stay light to import.
"""

from __future__ import annotations

import sys

# trl's trainer methods that polyalign's subclasses override (align.training.packed_trainers): name → parameters.
TRL_OVERRIDDEN = {"DPOTrainer._compute_loss": ("self", "model", "inputs", "return_outputs")}


# --------------------------------------------------------------------------------------------------------- sacrebleu


def chrf_remove_punctuation(metric, text: str) -> str:
    """sacrebleu's chrF++ word tokenisation of one segment (CHRF._remove_punctuation)."""
    return metric._remove_punctuation(text)


def chrf_match_statistics(metric, hypothesis_ngrams, reference_ngrams) -> list[int]:
    """sacrebleu's hypothesis, reference and matched counts of one n-gram order (CHRF._get_match_statistics)."""
    return metric._get_match_statistics(hypothesis_ngrams, reference_ngrams)


def chrf_score_from_statistics(metric, statistics: list[int]) -> float:
    """The chrF++ of summed statistics (CHRF._compute_score_from_stats)."""
    return float(metric._compute_score_from_stats(statistics).score)


# ------------------------------------------------------------------------------------------------------ transformers


def generic_sequence_classifier():
    """transformers' GenericForSequenceClassification: a backbone and a score head read at the last non-pad token."""
    from transformers.modeling_layers import GenericForSequenceClassification

    return GenericForSequenceClassification


def registered_model_class(auto_class, config):
    """The class `auto_class` maps this config's type to, or None (the auto class's private `_model_mapping`)."""
    mapping = auto_class._model_mapping
    return mapping[type(config)] if type(config) in mapping else None


def family_eager_attention(module):
    """The `eager_attention_forward` of the modeling file that defines `module`, or None."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def can_set_attention(model) -> bool:
    """Whether transformers lets this model switch its attention implementation."""
    return bool(model._can_set_attn_implementation())


def dynamic_cache_layer():
    """transformers' DynamicLayer: one layer of a DynamicCache, which align.generation.kv_cache extends."""
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


# -------------------------------------------------------------------------------------------------------------- peft


def peft_default_lora_targets() -> dict[str, list[str]]:
    """peft's default LoRA target modules per model type."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    return TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
