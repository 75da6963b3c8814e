"""Each private or version-sensitive use of a library (align.core.compat) still works on the installed versions. An
upgrade that moves one fails here, naming what moved and what in polyalign depends on it."""

from __future__ import annotations

import inspect

import pytest

from align.core import compat


def check(condition: bool, what: str, used_by: str) -> None:
    if not condition:
        pytest.fail(f"{what} changed in this version; align/core/compat.py must follow it (used by {used_by})")


def test_sacrebleu_chrf_statistics_match_sacrebleu_itself():
    from sacrebleu.metrics import CHRF

    from align.evaluation.chrf import chrf_score, chrf_statistics

    hypotheses = ["Es gibt sieben Kontinente.", "Paris ist die Hauptstadt."]
    references = ["Auf der Erde gibt es sieben Kontinente.", "Die Hauptstadt Frankreichs ist Paris."]
    ours = chrf_score(chrf_statistics(hypotheses, references))
    theirs = CHRF(word_order=2).corpus_score(hypotheses, [references]).score
    check(abs(ours - theirs) < 1e-9, "sacrebleu's CHRF private statistics methods", "align.evaluation.chrf")


def test_transformers_generic_classifier_and_auto_tables():
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, CohereConfig, LlamaConfig

    generic = compat.generic_sequence_classifier()
    check(
        inspect.isclass(generic) and hasattr(generic, "forward"),
        "transformers.modeling_layers.GenericForSequenceClassification",
        "align.models.loading, reward training",
    )
    llama = LlamaConfig()
    check(
        compat.registered_model_class(AutoModelForSequenceClassification, llama) is not None
        and compat.registered_model_class(AutoModelForSequenceClassification, CohereConfig()) is None
        and compat.registered_model_class(AutoModelForCausalLM, CohereConfig()) is not None,
        "the auto classes' _model_mapping",
        "align.models.loading.sequence_classifier_class",
    )


def test_transformers_family_eager_attention_and_attention_switch(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    attention = model.model.layers[0].self_attn
    check(
        callable(compat.family_eager_attention(attention)),
        "a modeling file's eager_attention_forward",
        "align.models.attention (Gemma 2's soft-capped attention)",
    )
    check(
        compat.can_set_attention(model) is True,
        "PreTrainedModel._can_set_attn_implementation",
        "align.models.attention.can_use",
    )


def test_transformers_cache_layer_is_extended_by_the_preallocated_cache():
    from align.generation.kv_cache import PreallocatedLayer

    layer = compat.dynamic_cache_layer()
    check(
        issubclass(PreallocatedLayer, layer) and hasattr(layer, "update") and hasattr(layer, "lazy_initialization"),
        "transformers.cache_utils.DynamicLayer (update, lazy_initialization)",
        "align.generation.kv_cache",
    )


def test_peft_default_lora_targets():
    targets = compat.peft_default_lora_targets()
    check(
        isinstance(targets, dict) and "llama" in targets and "q_proj" in targets["llama"],
        "peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
        "align.models.loading.lora_targets",
    )


@pytest.mark.parametrize("method", sorted(compat.TRL_OVERRIDDEN))
def test_trl_methods_the_packed_trainers_override(method):
    import trl

    owner, name = method.split(".")
    function = getattr(getattr(trl, owner), name, None)
    check(
        function is not None and tuple(inspect.signature(function).parameters) == compat.TRL_OVERRIDDEN[method],
        f"trl.{method}{compat.TRL_OVERRIDDEN[method]}",
        "align.training.packed_trainers",
    )
