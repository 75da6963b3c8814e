"""Models and chat: loading (dtype, attention per family, LoRA targets, reward heads for any causal LM), the
embedded default, chat templates and assistant masks, and the per-example attention that keeps packed examples
apart.

May import align.core only.
"""
