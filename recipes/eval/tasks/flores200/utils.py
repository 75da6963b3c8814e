"""FLORES+ keeps one config per language; a translation task needs each sentence beside its English original."""

from __future__ import annotations

import functools

import datasets

DATASET = "openlanguagedata/flores_plus"


@functools.lru_cache(maxsize=1)
def _english() -> datasets.DatasetDict:
    return datasets.load_dataset(DATASET, "eng_Latn")


def pair_with_english(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` (one split of one language) with an `eng` column: the English sentence of the same row.

    lm-eval passes a split without its name; FLORES's splits differ in size (dev 997, devtest 1012 sentences), so the
    size names it. Rows of one split are parallel across languages, in the same order."""
    english = [split for split in _english().values() if len(split) == len(dataset)]
    if len(english) != 1:
        raise ValueError(f"{DATASET}: no English split of {len(dataset)} sentences to pair with")
    return dataset.add_column("eng", english[0]["text"])
