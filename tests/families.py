"""Tiny random checkpoints of the model families users bring, each built from its own transformers config (no
download): the family matrix of test_families.py and bench/family_matrix.py.

Sizes are cut to seconds on a CPU, but each family keeps what makes it different: Gemma 2's soft-capped logits and
eager-only attention, Gemma 3's and Cohere2's alternating sliding-window and global layers, Mistral's window on every
layer, Qwen3-MoE's experts and router, Phi-3's fused qkv_proj and gate_up_proj, Cohere's parallel block and logit
scale. Windows are 4 tokens (8 for Mistral), so the test sequences are longer than their windows."""

from __future__ import annotations

from pathlib import Path

WINDOW = 4
ALTERNATING = ["sliding_attention", "full_attention"]

# model_type → the config keys that differ from COMMON.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1},
    "gemma2": {"sliding_window": WINDOW},
    "gemma3_text": {"sliding_window": WINDOW, "layer_types": ALTERNATING},
    "cohere": {},
    "cohere2": {"sliding_window": WINDOW, "layer_types": ALTERNATING},
    "phi3": {},
    # Twice the window: on every layer, 4 tokens would leave the answer seeing only the chat template's last tokens.
    "mistral": {"sliding_window": 2 * WINDOW},
}


def family_config(family: str, tokenizer):
    from transformers import AutoConfig

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return AutoConfig.for_model(family, **common, **FAMILIES[family])


def build_family(family: str, directory: Path, tokenizer, *, seed: int = 0, scale: float = 4.0) -> Path:
    """A random causal LM of `family` with the embedded tokenizer, its weights scaled so that its greedy answers
    depend on the prompt (at the default initialisation a random model says the same token to everything)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, tokenizer))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name and "layernorm" not in name:
                parameter.mul_(scale)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


# test_families.py's test per stage → its column in README's "Model families" table (bench/family_matrix.py).
STAGES = {
    "test_packed_sft_equals_each_example_alone": "packed SFT (exact)",
    "test_lora_targets_the_family_default": "LoRA defaults",
    "test_padding_free_dpo_equals_trls_padded_path": "padding-free DPO (exact)",
    "test_reward_model_trains_and_ranks": "reward model",
    "test_batched_greedy_generation_equals_one_prompt_at_a_time": "batched generation",
    "test_linear_soup_of_sft_and_base_loads_in_transformers": "SFT + soup",
    "test_one_online_iteration": "online iteration",
}
README_START, README_END = "<!-- family-matrix:start -->", "<!-- family-matrix:end -->"
