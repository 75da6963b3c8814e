"""How much each model counts in the soups the pipeline and the online loop make: one rule per recipe key.

`merge.weights` (pipeline): `equal`, `languages` (a cluster counts as many times as it has languages), or a mapping
{cluster: weight}. `merge_with_previous` (online loop): the new policy's weight in a soup with the previous one.
"""

from __future__ import annotations

import math
from typing import Any

from align.core.errors import ConfigError

POLICIES = "expected equal, languages (cluster size), or a mapping of cluster to weight"


def cluster_weights(
    policy: Any, clusters: dict[str, list[str]], *, source: str | None = None, key: str = "merge.weights"
) -> dict[str, float]:
    """{cluster: weight} for every cluster, in the clusters' order. A mapping may leave clusters out (they get 0)
    but may not name one that does not exist, and must give some cluster a positive weight."""
    if policy == "equal":
        return {name: 1.0 for name in clusters}
    if policy == "languages":
        return {name: float(len(languages)) for name, languages in clusters.items()}
    if not isinstance(policy, dict):
        raise ConfigError(source, key, POLICIES)
    unknown = [str(name) for name in policy if name not in clusters]
    if unknown:
        raise ConfigError(
            source, f"{key}.{unknown[0]}", f"no cluster '{unknown[0]}' (clusters: {', '.join(clusters) or 'none'})"
        )
    weights = {name: _weight(policy.get(name, 0), f"{key}.{name}", source) for name in clusters}
    if not any(weights.values()):
        raise ConfigError(source, key, "every cluster's weight is 0: give at least one cluster a positive weight")
    return weights


def with_previous(
    previous: str, new: str, weight: Any, *, source: str | None = None, key: str = "merge_with_previous"
) -> list[tuple[str, float]]:
    """The soup of the previous policy and the new one, `weight` being the new one's share."""
    if not _is_number(weight) or not 0 < weight <= 1:
        raise ConfigError(source, key, f"the new policy's weight must be in (0, 1], got {weight!r}")
    return [(previous, 1 - float(weight)), (new, float(weight))]


def _weight(value: Any, key: str, source: str | None) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(source, key, f"expected a number, got {value!r}")
    if value < 0:
        raise ConfigError(source, key, f"weights must be >= 0, got {value}")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
