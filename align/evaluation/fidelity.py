"""Language fidelity of answers: the Language Confusion Benchmark's checks (Marchisio et al. 2024), offline.

An answer is judged on two levels against the language its prompt asked for:

- line level: every line long enough to judge is detected (lingua, offline) as that language. Lines of fewer than
  MIN_WORDS words are too short to detect reliably and pass, as in the benchmark (which skips lines of fewer than
  5 tokens). Words are whitespace tokens; in scripts written without spaces (Han, kana, Thai, Lao, Khmer,
  Myanmar) every two characters count as one word, about the length of a Chinese or Japanese word.
- word level: an answer in a language written in a non-Latin script fails when it holds an English-looking word:
  a lowercase Latin-script word of at least 4 letters (the benchmark looks up lowercase English dictionary words
  of more than 3 letters; capitalised names and acronyms never match it, so "Python", "API" and "km" pass here
  too). Answers in Latin-script languages always pass this level: the benchmark reports no word level for them.

Code (fenced blocks, `inline` spans), URLs and e-mail addresses are removed before both checks: they are in no
language. A language the detector does not know (Amharic, Khmer, ...) cannot fail the line level.

Rates follow the benchmark: the line pass rate is the share of answers whose lines all pass; the word pass rate is
the share of the answers passing the line level that also pass the word level (a wrong-language answer is counted
once, by the line rate); the pass rate is their harmonic mean. Unlike the benchmark, which leaves out answers
without a single line long enough to judge, such answers are kept and pass.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import regex

from align.data.languages import base_language, detect_language, normalize_lang

MIN_WORDS = 5
MIN_LATIN_WORD = 4

# Languages written in a non-Latin script (Serbian is written in both and is left out).
NON_LATIN = frozenset(
    "am ar as be bg bn el fa gu he hi hy ja ka kk km kn ko ky lo mk ml mn mr my ne or pa ps ru sd si ta te tg th "
    "tt ug uk ur yi zh".split()
)

# Standard varieties the detector tells apart only by chance: one passes for another.
_SAME = [frozenset(group) for group in (("nb", "nn"), ("bs", "hr", "sr"), ("fil", "tl"))]

_CODE_BLOCK = regex.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", regex.M | regex.S)
_UNCLOSED_BLOCK = regex.compile(r"^[ \t]*(```|~~~).*", regex.M | regex.S)
_NOT_LANGUAGE = regex.compile(r"`[^`\n]*`|(?:https?://|www\.)\S+|\S+@\S+\.\w+")
_DENSE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_WORD = regex.compile(r"[\p{L}\p{N}]")
_LATIN_WORD = regex.compile(r"\p{Latin}+")


def language_text(text: str) -> str:
    """The answer without code, URLs and e-mail addresses (an unclosed code fence runs to the end)."""
    text = _UNCLOSED_BLOCK.sub("", _CODE_BLOCK.sub("", text))
    return _NOT_LANGUAGE.sub(" ", text)


def line_words(line: str) -> float:
    """The length of a line in words, two characters of a script without spaces counting as one."""
    words = 0.0
    for token in line.split():
        dense = len(_DENSE.findall(token))
        words += dense / 2 if dense else float(bool(_WORD.search(token)))
    return words


@functools.lru_cache(maxsize=1)
def _detectable() -> frozenset[str]:
    from lingua import Language

    return frozenset(normalize_lang(lang.iso_code_639_1.name.lower()) for lang in Language.all())


def detectable(lang: str) -> bool:
    """Whether the detector knows `lang`'s language (or a variety that passes for it); it tells no scripts apart."""
    lang = base_language(lang)
    return lang in _detectable() or any(lang in group and group & _detectable() for group in _SAME)


def same_language(detected: str, lang: str) -> bool:
    """Whether a detected language passes for `lang`: "zh" for "zh-Hant" too, as the detector reports no script."""
    detected, lang = base_language(detected), base_language(lang)
    return detected == lang or any(detected in group and lang in group for group in _SAME)


def line_passes(line: str, lang: str) -> bool:
    """A line too short to judge, without letters, or in a language the detector does not know passes."""
    if line_words(line) < MIN_WORDS or not detectable(lang):
        return True
    detected, _ = detect_language(line)
    return detected is None or same_language(detected, lang)


def words_pass(text: str, lang: str) -> bool:
    """No English-looking Latin word inside an answer in a non-Latin-script language; Latin-script languages pass."""
    if base_language(lang) not in NON_LATIN:
        return True
    return not any(len(w) >= MIN_LATIN_WORD and w.islower() for w in _LATIN_WORD.findall(text))


def answer_fidelity(text: str, lang: str) -> tuple[bool, bool]:
    """(line level passes, word level passes) of one answer meant to be in `lang` (a code or a name)."""
    lang = normalize_lang(lang)
    text = language_text(text or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return all(line_passes(line, lang) for line in lines), words_pass(text, lang)


def fidelity_flags(answers: Sequence[str], langs: Sequence[str]) -> list[tuple[bool, bool]]:
    """(line pass, word pass) of every answer, in order: what a bootstrap resamples (see fidelity_rates)."""
    if len(answers) != len(langs):
        raise ValueError(f"{len(answers)} answers but {len(langs)} languages")
    return [answer_fidelity(text, lang) for text, lang in zip(answers, langs)]


def fidelity_rates(flags: Sequence[tuple[bool, bool]]) -> tuple[float, float, float]:
    """(line pass rate, word pass rate, pass rate) of a set of answers' flags, unrounded.

    The word rate counts only the answers that pass the line level (1.0 when none does, as the benchmark); the
    pass rate is the harmonic mean of the two, 0 when either is 0."""
    if not flags:
        raise ValueError("no answers to rate")
    in_language = [word for line, word in flags if line]
    line_rate = len(in_language) / len(flags)
    word_rate = sum(in_language) / len(in_language) if in_language else 1.0
    both = line_rate + word_rate
    return line_rate, word_rate, (2 * line_rate * word_rate / both if line_rate and word_rate else 0.0)


def fidelity_table(answers: Sequence[str], langs: Sequence[str]) -> dict[str, dict]:
    """Per language (sorted) and "all": {answers, line_pass_rate, word_pass_rate, pass_rate}, rates to 4 decimals."""
    return rates_table(fidelity_flags(answers, langs), langs)


def rates_table(flags: Sequence[tuple[bool, bool]], langs: Sequence[str]) -> dict[str, dict]:
    """`fidelity_table` of answers already checked (their flags): detection, the costly part, runs once."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for flag, lang in zip(flags, langs):
        groups[normalize_lang(lang)].append(flag)
    groups = {**dict(sorted(groups.items())), "all": flags} if flags else {}
    table = {}
    for lang, group in groups.items():
        line, word, both = fidelity_rates(group)
        table[lang] = {
            "answers": len(group),
            "line_pass_rate": round(line, 4),
            "word_pass_rate": round(word, 4),
            "pass_rate": round(both, 4),
        }
    return table
