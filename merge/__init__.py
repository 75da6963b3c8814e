"""Checkpoint soups for polyalign: a streamed weighted average of safetensors checkpoints, and mergekit's methods
(SLERP, TIES, DARE, task arithmetic, ...) from the same mergekit-format config, with polyalign's checks and
atomic output. `soup()` is the Python entry point; `polyalign merge CONFIG.yaml OUTPUT_DIR` the command line;
`cluster_weights()` and `with_previous()` the weighting policies of the pipeline's and the online loop's soups."""

from merge.api import run, soup
from merge.config import MergeError, MergeSpec, load_config, parse_config
from merge.weighting import cluster_weights, with_previous

__all__ = ["soup", "run", "MergeError", "MergeSpec", "load_config", "parse_config", "cluster_weights", "with_previous"]
