"""Echo: answers that restate their prompt instead of answering it, and a reference metric that gives them no credit.

A small model asked "Wie viele Kontinente gibt es auf der Erde?" often answers with the question itself. Against a
reference ("Es gibt sieben Kontinente.") the copy shares many character n-grams, so chrF++ rewards it, and a ranker
that measures how much the prompt explains the answer (pointwise mutual information) rewards it even more. Two
measures keep an evaluation and a ranker honest:

- **the echo rule**: an answer is an echo when at least ECHO_THRESHOLD of its character trigrams (lowercased, words
  joined by single spaces, punctuation dropped; the same in every script) also occur in the prompt's last user
  message: it adds less than a tenth of its own. A short real answer reuses most of the question's words ("The
  opposite of hot is cold." to "What is the opposite of hot?": 80% of its trigrams; the demo's 32 reference answers
  reach at most 83%), but it adds the answer; a copy, a truncated copy or a repeated copy adds nothing.
- **echo-free chrF++**: chrF++ (sacrebleu's, character 6-grams and word bigrams) computed after the answer's n-gram
  counts lose those of the prompt (multiset difference), so only what the answer adds beyond the prompt can match
  the reference. The prompt itself, as an answer, scores 0.

`chrf_statistics` returns sacrebleu's per-sentence statistics (with or without prompts), so corpus scores and their
paired bootstrap resample sentences the way sacrebleu's own bootstrap does.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from typing import Sequence

import numpy as np
import regex

ECHO_THRESHOLD = 0.9  # share of the answer's trigrams found in the prompt that makes it an echo
RULE = f"an answer is an echo when at least {ECHO_THRESHOLD:.0%} of its character trigrams occur in the prompt"
_NOT_WORD = regex.compile(r"[^\p{L}\p{M}\p{N}]+")


def prompt_text(prompt) -> str:
    """The text a prompt asks: its last user message (a string prompt is that text)."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
    return (users[-1].get("content") or "") if users else ""


def _trigrams(text: str) -> Counter:
    words = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return Counter(words[i: i + 3] for i in range(len(words) - 2))


def prompt_overlap(answer: str, prompt) -> float:
    """The share of the answer's character trigrams (a multiset) that the prompt holds; 0 for an answer too short to
    have one."""
    ours = _trigrams(answer)
    total = sum(ours.values())
    return sum((ours & _trigrams(prompt_text(prompt))).values()) / total if total else 0.0


def is_echo(answer: str, prompt) -> bool:
    return prompt_overlap(answer, prompt) >= ECHO_THRESHOLD


def echo_flags(answers: Sequence[str], prompts: Sequence) -> list[bool]:
    if len(answers) != len(prompts):
        raise ValueError(f"{len(answers)} answers but {len(prompts)} prompts")
    return [is_echo(a, p) for a, p in zip(answers, prompts)]


# ------------------------------------------------------------------------------------------------ chrF++


@functools.lru_cache(maxsize=1)
def _metric():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def _ngrams(text: str) -> list[Counter]:
    """sacrebleu's chrF++ n-gram counters of one segment: character orders 1-6, then word orders 1-2."""
    from sacrebleu.metrics.helpers import extract_all_char_ngrams, extract_word_ngrams

    metric = _metric()
    grams = extract_all_char_ngrams(text, metric.char_order, metric.whitespace)
    words = metric._remove_punctuation(text)
    return grams + [extract_word_ngrams(words, n) for n in range(1, metric.word_order + 1)]


def chrf_statistics(answers: Sequence[str], references: Sequence[str],
                    prompts: Sequence | None = None) -> np.ndarray:
    """[answers, 3 x orders] chrF++ statistics (hypothesis, reference and matched counts per order), as sacrebleu
    computes them for one reference each; with `prompts`, each answer's n-grams minus its prompt's (echo-free)."""
    if len(answers) != len(references) or (prompts is not None and len(prompts) != len(answers)):
        raise ValueError("answers, references and prompts must be as many")
    metric, rows = _metric(), []
    for k, (answer, reference) in enumerate(zip(answers, references)):
        ours = _ngrams(answer)
        if prompts is not None:
            ours = [a - p for a, p in zip(ours, _ngrams(prompt_text(prompts[k])))]
        row: list[int] = []
        for a, r in zip(ours, _ngrams(reference)):
            row += metric._get_match_statistics(a, r)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def chrf_score(statistics: np.ndarray) -> float:
    """The corpus chrF++ of summed sentence statistics."""
    return float(_metric()._compute_score_from_stats(statistics.sum(0).tolist()).score)
