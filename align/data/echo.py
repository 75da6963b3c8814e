"""Echo: answers that restate their prompt instead of answering it (the rule; align.evaluation.chrf gives them no
credit as a reference metric).

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
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import regex

ECHO_THRESHOLD = 0.95  # share of the answer's words found in the prompt that makes it an echo
RULE = (
    f"an answer is an echo when at least {ECHO_THRESHOLD:.0%} of its words (in Japanese, Chinese and Thai, "
    "character pairs) occur in its prompt"
)
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
            units += [word[i : i + 2] for i in range(len(word) - 1)]
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
