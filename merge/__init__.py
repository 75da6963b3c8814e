"""Checkpoint soups for polyalign: weighted averaging and mergekit methods (issue #3)."""
