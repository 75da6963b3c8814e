"""Models and chat: loading (dtype, attention per family, LoRA targets, reward heads for any causal LM), the LoRA
config adapters are saved with (adapters: naming their base where it will be once published), the embedded default,
chat templates and assistant masks, and the per-example attention that keeps packed examples apart.

May import align.core only.
"""
