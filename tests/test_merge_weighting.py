"""The weighting policies of the pipeline's cluster soups (`merge.weights`) and the online loop's soup with the previous
policy (`merge_with_previous`): the weights each gives, and the one-line errors naming the recipe and the key."""

from __future__ import annotations

import pytest

from align.core.errors import ConfigError
from merge import cluster_weights, with_previous

CLUSTERS = {"romance": ["en", "es", "fr", "it", "pt"], "slavic": ["en", "es", "fr", "ru"], "cjk": ["en", "zh"]}


def test_equal_gives_every_cluster_one():
    assert cluster_weights("equal", CLUSTERS) == {"romance": 1.0, "slavic": 1.0, "cjk": 1.0}


def test_languages_weighs_a_cluster_by_its_size():
    weights = cluster_weights("languages", CLUSTERS)
    assert weights == {"romance": 5.0, "slavic": 4.0, "cjk": 2.0}
    assert list(weights) == list(CLUSTERS)  # the clusters' order, which is the order the soup lists the models


def test_a_mapping_leaves_unnamed_clusters_at_zero():
    weights = cluster_weights({"cjk": 2, "romance": 0.5}, CLUSTERS)
    assert weights == {"romance": 0.5, "slavic": 0.0, "cjk": 2.0}
    assert list(weights) == list(CLUSTERS) and all(isinstance(w, float) for w in weights.values())


@pytest.mark.parametrize(
    "policy, key, expected",
    [
        (
            {"germanic": 1.0, "cjk": 1.0},
            "merge.weights.germanic",
            "no cluster 'germanic' (clusters: romance, slavic, cjk)",
        ),
        ({"cjk": -1.0}, "merge.weights.cjk", "weights must be >= 0, got -1.0"),
        ({"cjk": 0, "slavic": 0.0}, "merge.weights", "every cluster's weight is 0"),
        ({}, "merge.weights", "every cluster's weight is 0"),
        ({"cjk": "heavy"}, "merge.weights.cjk", "expected a number, got 'heavy'"),
        ({"cjk": True}, "merge.weights.cjk", "expected a number, got True"),
        ({"cjk": float("nan")}, "merge.weights.cjk", "expected a number, got nan"),
    ],
    ids=["unknown-cluster", "negative", "all-zero", "empty", "not-a-number", "bool", "nan"],
)
def test_bad_mappings_name_the_recipe_and_the_key(policy, key, expected):
    with pytest.raises(ConfigError) as caught:
        cluster_weights(policy, CLUSTERS, source="pipeline.yaml")
    assert caught.value.source == "pipeline.yaml" and caught.value.key == key
    assert expected in str(caught.value) and str(caught.value).startswith(f"pipeline.yaml: '{key}': ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("policy", ["size", "Equal", None, 3, ["romance"]])
def test_any_other_policy_lists_the_valid_ones(policy):
    with pytest.raises(ConfigError) as caught:
        cluster_weights(policy, CLUSTERS, source="pipeline.yaml", key="merge.weights")
    assert str(caught.value) == (
        "pipeline.yaml: 'merge.weights': expected equal, languages (cluster size), or a mapping of cluster to weight"
    )


def test_with_previous_gives_the_new_policy_its_weight():
    assert with_previous("iter_0/model", "iter_1/model", 0.25) == [("iter_0/model", 0.75), ("iter_1/model", 0.25)]
    assert with_previous("old", "new", 1) == [("old", 0.0), ("new", 1.0)]  # 1: the new policy alone
    pairs = with_previous("old", "new", 0.3)
    assert sum(w for _, w in pairs) == pytest.approx(1.0)


@pytest.mark.parametrize("weight", [0, 0.0, -0.5, 1.01, 2, "0.5", True, None, float("nan")])
def test_with_previous_refuses_a_weight_outside_zero_one(weight):
    with pytest.raises(ConfigError) as caught:
        with_previous("old", "new", weight, source="online.yaml")
    assert caught.value.key == "merge_with_previous" and caught.value.source == "online.yaml"
    assert "must be in (0, 1]" in str(caught.value) and repr(weight) in str(caught.value)
