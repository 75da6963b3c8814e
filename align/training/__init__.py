"""The trainers' machinery: the training-stage lifecycle (keys, resume, whole-run metrics, preemption callbacks),
packing layouts, padding-free preference batches and trl's trainers fitted to them.

May import align.data, align.models and align.core.
"""
