"""Echo: answers that restate their prompt instead of answering it, and a reference metric that gives them no credit.

A small model asked "Wie viele Kontinente gibt es auf der Erde?" often answers with the question itself. Against a
reference ("Es gibt sieben Kontinente.") the copy shares many character n-grams, so chrF++ rewards it, and a ranker
that measures how much the prompt explains the answer (pointwise mutual information) rewards it even more. Two
measures keep an evaluation and a ranker honest:

- **the echo rule**: an answer is an echo when at least ECHO_THRESHOLD of its words (casefolded, punctuation
  dropped; in scripts without spaces, pairs of adjacent characters) occur in the prompt's last user message: it adds
  almost nothing of its own. A short real answer reuses most of the question's words ("The Pacific Ocean is the
  largest in the world." to "What is the largest ocean in the world?": 8 of 9; the demo's 96 reference answers reach
  at most 91%), but it adds the answer; a copy, a truncated copy or a repeated copy adds nothing.
- **echo-free chrF++**: chrF++ (sacrebleu's, character 6-grams and word bigrams) computed after every n-gram the
  prompt holds is dropped from the answer, so only what the answer adds beyond the prompt can match the reference.
  The prompt itself as an answer scores 0, repeated or not; the question restated before an answer adds nothing.

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

ECHO_THRESHOLD = 0.95  # share of the answer's words found in the prompt that makes it an echo
RULE = (f"an answer is an echo when at least {ECHO_THRESHOLD:.0%} of its words (in Japanese, Chinese and Thai, "
        "character pairs) occur in its prompt")
_NOT_WORD = regex.compile(r"[^\p{L}\p{M}\p{N}]+")
_DENSE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")


def prompt_text(prompt) -> str:
    """The text a prompt asks: its last user message (a string prompt is that text)."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
    return (users[-1].get("content") or "") if users else ""


def _units(text: str) -> list[str]:
    """Words, casefolded; in scripts written without spaces (Han, kana, Thai, ...) each pair of adjacent characters
    of a run, about a word's length there."""
    units = []
    for word in _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split():
        if _DENSE.search(word) and len(word) > 2:
            units += [word[i: i + 2] for i in range(len(word) - 1)]
        else:
            units.append(word)
    return units


def prompt_overlap(answer: str, prompt) -> float:
    """The share of the answer's words (each occurrence counted) that occur in the prompt; 0 for an answer with no
    word. A copy repeated twice is still all the prompt's, and so is a last word cut off by the token limit (a
    prefix of one of the prompt's words)."""
    ours, theirs = _units(answer), set(_units(prompt_text(prompt)))
    if not ours:
        return 0.0
    found = [u in theirs for u in ours]
    found[-1] = found[-1] or any(word.startswith(ours[-1]) for word in theirs)
    return sum(found) / len(ours)


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
    computes them for one reference each; with `prompts`, each answer without the n-grams its prompt holds
    (echo-free)."""
    if len(answers) != len(references) or (prompts is not None and len(prompts) != len(answers)):
        raise ValueError("answers, references and prompts must be as many")
    metric, rows = _metric(), []
    for k, (answer, reference) in enumerate(zip(answers, references)):
        ours = _ngrams(answer)
        if prompts is not None:
            ours = [Counter({g: n for g, n in a.items() if g not in p}) for a, p in
                    zip(ours, _ngrams(prompt_text(prompts[k])))]
        row: list[int] = []
        for a, r in zip(ours, _ngrams(reference)):
            row += metric._get_match_statistics(a, r)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def chrf_score(statistics: np.ndarray) -> float:
    """The corpus chrF++ of summed sentence statistics."""
    return float(_metric()._compute_score_from_stats(statistics.sum(0).tolist()).score)
