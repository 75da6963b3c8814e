"""chrF++ against references, plain and echo-free (align.data.echo says why): echo-free drops from each answer every
n-gram its prompt holds, so only what the answer adds beyond the prompt can match the reference.

`chrf_statistics` returns sacrebleu's per-sentence statistics (with or without prompts), so corpus scores and their
paired bootstrap resample sentences the way sacrebleu's own bootstrap does.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

import numpy as np

from align.core import compat
from align.data.echo import prompt_text


@functools.lru_cache(maxsize=1)
def _metric():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def _ngrams(text: str) -> list[Counter]:
    """sacrebleu's chrF++ n-gram counters of one segment: character orders 1-6, then word orders 1-2."""
    from sacrebleu.metrics.helpers import extract_all_char_ngrams, extract_word_ngrams

    metric = _metric()
    grams = extract_all_char_ngrams(text, metric.char_order, metric.whitespace)
    words = compat.chrf_remove_punctuation(metric, text)
    return grams + [extract_word_ngrams(words, n) for n in range(1, metric.word_order + 1)]


def chrf_statistics(answers: Sequence[str], references: Sequence[str], prompts: Sequence | None = None) -> np.ndarray:
    """[answers, 3 x orders] chrF++ statistics (hypothesis, reference and matched counts per order), as sacrebleu
    computes them for one reference each; with `prompts`, each answer without the n-grams its prompt holds
    (echo-free)."""
    if len(answers) != len(references) or (prompts is not None and len(prompts) != len(answers)):
        raise ValueError("answers, references and prompts must be as many")
    metric, rows = _metric(), []
    for k, (answer, reference) in enumerate(zip(answers, references)):
        ours = _ngrams(answer)
        if prompts is not None:
            ours = [
                Counter({g: n for g, n in a.items() if g not in p})
                for a, p in zip(ours, _ngrams(prompt_text(prompts[k])))
            ]
        row: list[int] = []
        for a, r in zip(ours, _ngrams(reference)):
            row += compat.chrf_match_statistics(metric, a, r)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def chrf_score(statistics: np.ndarray) -> float:
    """The corpus chrF++ of summed sentence statistics."""
    return compat.chrf_score_from_statistics(_metric(), statistics.sum(0).tolist())
