"""Generation, one primitive for every stage that writes answers: transformers batches (length-sorted, packed
prefill), vLLM, OpenAI-compatible endpoints, append logs that resume, the KV cache.

May import align.data, align.models and align.core.
"""
