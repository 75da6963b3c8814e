"""Language fidelity (the Language Confusion Benchmark's line and word levels) on hand-written answers whose line
languages are known, with lingua detecting offline."""

from __future__ import annotations

import pytest

from align.evaluation.fidelity import answer_fidelity, fidelity_flags, fidelity_rates, fidelity_table, line_words

FRENCH = "La capitale de la France est Paris.\nElle est connue pour la tour Eiffel et ses nombreux musées."
FRENCH_WITH_ENGLISH = "La capitale de la France est Paris.\nThe city is famous for its museums and the Eiffel tower."
FRENCH_ONE_WORD_LINE = "Merci !\nLa capitale de la France est Paris, une très grande ville."
HINDI = "भारत की राजधानी नई दिल्ली है और यह एक बहुत बड़ा शहर है।\nयहाँ बहुत सारे लोग रहते हैं।"
HINDI_WITH_LATIN = "नई दिल्ली एक modern city है और यहाँ बहुत traffic है।"
ENGLISH_FOR_HINDI = "The capital of India is New Delhi, a very large city."
JAPANESE = "日本の首都は東京です。東京は本州にあります。"
JAPANESE_ONE_WORD = "東京"


@pytest.mark.parametrize(
    "text, lang, expected",
    [
        (FRENCH, "fr", (True, True)),
        (FRENCH_WITH_ENGLISH, "fr", (False, True)),  # Latin-script language: no word level
        (FRENCH_ONE_WORD_LINE, "French", (True, True)),  # a one-word line is too short to judge
        (HINDI, "hi", (True, True)),
        (HINDI_WITH_LATIN, "hi", (True, False)),  # the line still reads as Hindi; its English words fail
        (ENGLISH_FOR_HINDI, "hin", (False, False)),
        (JAPANESE, "ja", (True, True)),
        (JAPANESE_ONE_WORD, "ja", (True, True)),
        ("Столица России — Москва.\nIt is a very large and beautiful city.", "ru", (False, False)),
        ("Hovedstaden i Norge er Oslo, som ligger ved Oslofjorden.", "nn", (True, True)),  # Bokmål passes for Nynorsk
    ],
)
def test_answer_fidelity_of_known_lines(text, lang, expected):
    assert answer_fidelity(text, lang) == expected


def test_names_acronyms_code_and_urls_are_no_word_errors():
    assert answer_fidelity("नई दिल्ली में Python और API का उपयोग होता है और यहाँ 5 km सड़क है।", "hi") == (True, True)
    code = "Voici le code :\n```python\nprint('hello world, this is the code')\n```\nCe code affiche un message."
    assert answer_fidelity(code, "fr") == (True, True)
    inline = "यह फ़ाइल `download_the_data` से बनती है, देखें https://example.com/english/words/here"
    assert answer_fidelity(inline, "hi") == (True, True)


def test_line_length_counts_two_characters_of_unspaced_scripts_as_a_word():
    assert line_words("Merci beaucoup !") == 2
    assert line_words("日本の首都は東京です。") == 5  # ten characters, the full stop included
    assert line_words("- **1.** Paris") == 2


def test_table_has_exact_rates_per_language_and_overall():
    answers = [
        FRENCH,
        FRENCH_WITH_ENGLISH,
        FRENCH_ONE_WORD_LINE,
        HINDI,
        HINDI_WITH_LATIN,
        ENGLISH_FOR_HINDI,
        JAPANESE,
        JAPANESE_ONE_WORD,
    ]
    langs = ["fr", "fr", "fr", "hi", "hi", "hi", "ja", "ja"]
    assert fidelity_flags(answers, langs) == [
        (True, True),
        (False, True),
        (True, True),
        (True, True),
        (True, False),
        (False, False),
        (True, True),
        (True, True),
    ]
    table = fidelity_table(answers, langs)
    assert list(table) == ["fr", "hi", "ja", "all"]
    # fr: 2 of 3 pass the line level, both of those the word level: harmonic mean of 2/3 and 1 is 0.8.
    assert table["fr"] == {"answers": 3, "line_pass_rate": 0.6667, "word_pass_rate": 1.0, "pass_rate": 0.8}
    # hi: 2 of 3 lines, 1 of those 2 words: 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7.
    assert table["hi"] == {"answers": 3, "line_pass_rate": 0.6667, "word_pass_rate": 0.5, "pass_rate": 0.5714}
    assert table["ja"] == {"answers": 2, "line_pass_rate": 1.0, "word_pass_rate": 1.0, "pass_rate": 1.0}
    # all: 6 of 8 lines, 5 of those 6 words: 2 * 0.75 * (5/6) / (0.75 + 5/6) = 15/19.
    assert table["all"] == {"answers": 8, "line_pass_rate": 0.75, "word_pass_rate": 0.8333, "pass_rate": 0.7895}


def test_rates_are_zero_when_no_answer_is_in_language():
    assert fidelity_rates([(False, False), (False, True)]) == (0.0, 1.0, 0.0)
    assert fidelity_rates([(True, False)]) == (1.0, 0.0, 0.0)
    assert fidelity_table([], []) == {}


def test_mismatched_lengths_and_unknown_languages_are_refused():
    from align.data.languages import UnknownLanguage

    with pytest.raises(ValueError, match="2 answers but 1 languages"):
        fidelity_flags(["a", "b"], ["fr"])
    with pytest.raises(UnknownLanguage):
        answer_fidelity("Bonjour.", "Klingon")
