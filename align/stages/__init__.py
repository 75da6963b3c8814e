"""What a user runs, one module per stage (sft, dpo, online, arbitrage, contrast, curate, evaluate) and the
pipeline that chains them (with `launch`, a stage as its own accelerate job). align/cli.py maps commands to them.

May import every layer below: reward, merge, align.training, align.evaluation, align.generation, align.data,
align.models, align.core.
"""
