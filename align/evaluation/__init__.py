"""Evaluation metrics and their report: language fidelity, chrF++ with and without the prompt's own words,
lm-evaluation-harness benchmarks, the markdown report and its charts.

May import align.generation, align.data, align.models and align.core.
"""
