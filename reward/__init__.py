"""Reward models for polyalign: Bradley-Terry training, ranking and LLM-as-judge (issue #4)."""
