"""Language codes, names and offline detection, directly and through ingestion.

The first detection of Latin-script text loads lingua's models for every Latin-script language (the slowest step
of this file); all such detection is kept to two tests so that the cost is paid once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from align.core.errors import InputError
from align.data import DataSource, detect_language, language_mix, load_records, normalize_lang
from align.data.languages import UnknownLanguage, language_name


def U(content: str) -> dict:
    return {"role": "user", "content": content}


def A(content: str) -> dict:
    return {"role": "assistant", "content": content}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


GERMAN = "Der Hund läuft jeden Morgen mit seinem Besitzer durch den großen Park und spielt dort mit anderen Hunden."
SPANISH = "El perro corre todas las mañanas con su dueño por el parque grande y juega allí con otros perros."
HINDI = "भारत की राजधानी नई दिल्ली है और यह देश का एक बहुत बड़ा और पुराना शहर है।"
JAPANESE = "日本の首都は東京です。東京はとても大きな都市で、たくさんの人が住んでいます。"

# ------------------------------------------------------------------------------------------------ normalize_lang


@pytest.mark.parametrize(
    "value, code",
    [
        ("fr", "fr"),
        ("French", "fr"),
        ("french", "fr"),
        ("FRENCH", "fr"),
        ("  French ", "fr"),
        ("fra", "fr"),
        ("fre", "fr"),
        ("Français", "fr"),
        ("Hindi", "hi"),
        ("hin", "hi"),
        ("hi", "hi"),
        ("pt-BR", "pt"),
        ("pt_BR", "pt"),
        ("pt", "pt"),
        ("Portuguese", "pt"),
        ("por", "pt"),
        ("en-US", "en"),
        ("eng", "en"),
        ("English", "en"),
        ("zh_Hans_CN", "zh"),
        ("cmn", "zh"),
        ("Chinese (Simplified)", "zh"),
        ("Mandarin", "zh"),
        ("es-419", "es"),
        ("Spanish", "es"),
        ("Español", "es"),
        ("German", "de"),
        ("Deutsch", "de"),
        ("deu", "de"),
        ("de-AT", "de"),
        ("Japanese", "ja"),
        ("jpn", "ja"),
        ("Norwegian", "nb"),
        ("no", "nb"),
        ("nor", "nb"),
        ("Norwegian Nynorsk", "nn"),
        ("Haitian Creole", "ht"),
        ("Bahasa Indonesia", "id"),
        ("swh", "sw"),
        ("Kiswahili", "sw"),
        ("fil", "fil"),
        ("ceb", "ceb"),
        ("Cebuano", "ceb"),
        ("English (US)", "en"),
    ],
)
def test_normalize_lang(value, code):
    assert normalize_lang(value) == code


# BCP-47 with script and region, FLORES-200/NLLB codes, macrolanguage members, ISO 639-3 codes and English names.
@pytest.mark.parametrize(
    "value, tag",
    [
        ("zh-Hans", "zh"),
        ("zh-Hant", "zh-Hant"),
        ("zho_Hant", "zh-Hant"),
        ("zho_Hans", "zh"),
        ("zh-TW", "zh-Hant"),
        ("zh-Hant-HK", "zh-Hant"),
        ("sr-Cyrl", "sr"),
        ("sr-Latn", "sr-Latn"),
        ("srp_Cyrl", "sr"),
        ("sh", "sr-Latn"),
        ("pt-BR", "pt"),
        ("por_Latn", "pt"),
        ("fra_Latn", "fr"),
        ("en-US", "en"),
        ("eng_Latn", "en"),
        ("arb", "ar"),
        ("arb_Arab", "ar"),
        ("cmn", "zh"),
        ("swh", "sw"),
        ("swh_Latn", "sw"),
        ("zsm", "ms"),
        ("zsm_Latn", "ms"),
        ("pes", "fa"),
        ("pes_Arab", "fa"),
        ("pbt_Arab", "ps"),
        ("npi_Deva", "ne"),
        ("uz-Cyrl", "uz-Cyrl"),
        ("pa-Arab", "pa-Arab"),
        ("pnb_Arab", "lah"),
        ("yue_Hant", "yue"),
        ("kas_Deva", "ks-Deva"),
        ("quy", "quy"),
        ("quy_Latn", "quy"),
        ("fuv", "fuv"),
        ("ace", "ace"),
        ("ace_Arab", "ace-Arab"),
        ("French", "fr"),
        ("Hindi", "hi"),
        ("Bangla", "bn"),
        ("Farsi", "fa"),
        ("Traditional Chinese", "zh-Hant"),
        ("Simplified Chinese", "zh"),
        ("Chinese (Traditional)", "zh-Hant"),
        ("Serbian (Latin)", "sr-Latn"),
        ("Bokmal", "nb"),
        ("jp", "ja"),
    ],
)
def test_tags_normalise_to_one_canonical_tag_and_round_trip(value, tag):
    assert normalize_lang(value) == tag
    assert normalize_lang(tag) == tag
    assert normalize_lang(language_name(tag)) == tag


@pytest.mark.parametrize(
    "code, name",
    [
        ("quy", "Ayacucho Quechua"),
        ("fuv", "Nigerian Fulfulde"),
        ("ace", "Acehnese"),
        ("zh-Hant", "Chinese (Traditional)"),
        ("zh", "Chinese"),
        ("sr-Latn", "Serbian (Latin)"),
    ],
)
def test_small_and_scripted_languages_have_names(code, name):
    assert language_name(code) == name
    assert normalize_lang(name) == code


@pytest.mark.parametrize(
    "value",
    [
        "Klingon",
        "xx",
        "qq-BR",
        "",
        "   ",
        None,
        12,
        "fr-",
        "und",
        "zxx",
        "mul",
        "mis",
        "qaa",
        "qtz-Latn",
        "x-foo",
        "art",
        "Elvish",
        "zh-Hantx",
        "fra_Latn_",
    ],
)
def test_normalize_lang_rejects_unknown(value):
    with pytest.raises(UnknownLanguage) as info:
        normalize_lang(value)
    assert isinstance(info.value, ValueError)
    assert repr(value) in str(info.value)


def test_unknown_language_message():
    with pytest.raises(UnknownLanguage) as info:
        normalize_lang("Klingon")
    assert str(info.value) == (
        "unknown language 'Klingon' (use an ISO 639-1/639-3 code, a BCP-47 tag or an English name)"
    )


def test_language_name():
    assert language_name("hi") == "Hindi"
    assert language_name(normalize_lang("pt-BR")) == "Portuguese"
    assert language_name("tlh") == "tlh"


def test_base_language():
    from align.data.languages import base_language

    assert [base_language(t) for t in ("zh-Hant", "zh", "sr-Latn", "fra_Latn", "Traditional Chinese")] == [
        "zh",
        "zh",
        "sr",
        "fr",
        "zh",
    ]


# ------------------------------------------------------------------------------------------------ detect_language


@pytest.mark.parametrize("text", ["", "12345 67890", "3.14 + 2.72 = 5.86 !!!", "___ --- ***"])
def test_detect_language_without_letters(text):
    assert detect_language(text) == (None, 0.0)


def test_detect_language_non_latin_scripts():
    for text, code in ((HINDI, "hi"), (JAPANESE, "ja")):
        detected, confidence = detect_language(text)
        assert detected == code, text
        assert 0.5 < confidence <= 1.0


def test_detect_language_latin_scripts():
    for text, code in ((GERMAN, "de"), (SPANISH, "es")):
        detected, confidence = detect_language(text)
        assert detected == code, text
        assert 0.5 < confidence <= 1.0


# ------------------------------------------------------------------------------------------------ through ingestion


def test_lang_fields_as_codes_and_names(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [U("q"), A("a")], "lang": "French"},
            {"messages": [U("q"), A("a")], "lang": "Hindi"},
            {"messages": [U("q"), A("a")], "lang": "hin"},
            {"messages": [U("q"), A("a")], "lang": "pt-BR"},
            {"messages": [U("q"), A("a")], "language": "Japanese"},
            {"messages": [U("q"), A("a")], "language": "de"},
            {"messages": [U("q"), A("a")], "lang": "", "language": "sw"},
        ],
    )
    records = load_records(str(path), "sft")
    assert [r["lang"] for r in records] == ["fr", "hi", "hi", "pt", "ja", "de", "sw"]
    assert not any("lang_confidence" in r for r in records)  # given, not detected


def test_source_level_lang(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [U("1 + 1"), A("2")]},
            {"messages": [U(GERMAN), A(GERMAN)]},
            {"messages": [U("q"), A("a")], "lang": "French"},  # a row's own language wins over the source's
        ],
    )
    records = load_records([{"path": str(path), "lang": "Hindi"}], "sft")
    assert [r["lang"] for r in records] == ["hi", "hi", "fr"]
    assert not any("lang_confidence" in r for r in records)
    assert DataSource.parse({"path": "x.jsonl", "lang": "pt-BR"}).lang == "pt"


def test_language_detected_when_absent(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": [U(GERMAN), A("Ja, das stimmt, der Hund ist sehr glücklich im Park.")]},
            {"messages": [U(HINDI), A("हाँ, दिल्ली भारत की राजधानी है।")]},
            {"messages": [U(JAPANESE), A("はい、東京は日本の首都です。")]},
            {"prompt": SPANISH, "completion": "Sí, el perro es muy feliz en el parque."},
        ],
    )
    records = load_records(str(path), "sft")
    assert [r["lang"] for r in records] == ["de", "hi", "ja", "es"]
    for record in records:
        assert isinstance(record["lang_confidence"], float) and 0.5 < record["lang_confidence"] <= 1.0
    assert language_mix(records) == {"de": 1, "hi": 1, "ja": 1, "es": 1}


def test_no_letters_and_no_lang_is_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "digits.jsonl",
        [
            {"messages": [U("2+2"), A("4")], "lang": "en"},
            {"messages": [U("12 * 12"), A("144")]},
        ],
    )
    with pytest.raises(InputError) as info:
        load_records(str(path), "sft")
    assert str(info.value) == (
        f"{path}:2: field 'lang': no language given and none can be detected (no letters); add a 'lang' field"
    )


def test_zh_hant_and_zh_hans_stay_apart_through_ingestion_and_reporting(tmp_path):
    from align.evaluation.fidelity import fidelity_table

    traditional = "這是一個關於語言模型的問題，請用繁體中文回答。"
    simplified = "这是一个关于语言模型的问题，请用简体中文回答。"
    path = write_jsonl(
        tmp_path / "zh.jsonl",
        [
            {"messages": [U(traditional), A(traditional)], "lang": "zh-Hant"},
            {"messages": [U(traditional), A(traditional)], "lang": "zho_Hant"},
            {"messages": [U(simplified), A(simplified)], "lang": "zh-Hans"},
        ],
    )
    records = load_records(str(path), "sft")
    assert [r["lang"] for r in records] == ["zh-Hant", "zh-Hant", "zh"]
    assert language_mix(records) == {"zh-Hant": 2, "zh": 1}
    # lingua reports Chinese without a script: it is the right language for both targets, each reported apart
    table = fidelity_table([r["messages"][1]["content"] for r in records], [r["lang"] for r in records])
    assert list(table) == ["zh", "zh-Hant", "all"]
    assert table["zh-Hant"]["answers"] == 2 and table["zh"]["answers"] == 1
    assert all(row["pass_rate"] == 1.0 for row in table.values())


def test_language_mix_largest_first():
    records = [{"lang": "fr"}, {"lang": "hi"}, {"lang": "hi"}, {"lang": "en"}, {"lang": "hi"}, {"lang": "en"}]
    assert list(language_mix(records).items()) == [("hi", 3), ("en", 2), ("fr", 1)]


# ------------------------------------------------------------------------------------------------ families, clusters

AYA_EXPANSE = [
    "ar",
    "zh",
    "cs",
    "nl",
    "en",
    "fr",
    "de",
    "el",
    "he",
    "hi",
    "id",
    "it",
    "ja",
    "ko",
    "fa",
    "pl",
    "pt",
    "ro",
    "ru",
    "es",
    "tr",
    "uk",
    "vi",
]
MARCO_LLM = [
    "en",
    "zh",
    "ar",
    "de",
    "es",
    "fr",
    "ko",
    "ja",
    "ru",
    "tr",
    "it",
    "pt",
    "nl",
    "pl",
    "vi",
    "th",
    "id",
    "ms",
    "he",
    "bn",
    "ur",
    "ne",
    "kk",
    "uk",
    "cs",
    "ro",
    "hu",
    "el",
    "az",
]


def test_every_language_has_a_family_including_the_aya_and_marco_sets():
    from align.data.languages import FAMILIES, family

    assert len(AYA_EXPANSE) == 23 and len(MARCO_LLM) == 29
    assert [c for c in AYA_EXPANSE + MARCO_LLM if family(c) is None] == []
    assert [c for codes in FAMILIES.values() for c in codes if normalize_lang(c) != c] == []
    assert {family(c) for c in ("de", "nl", "en")} == {"Germanic"} and family("hi") == family("bn") == "Indo-Aryan"
    assert (
        family("fr"),
        family("ru"),
        family("ar"),
        family("tr"),
        family("zh"),
        family("ja"),
        family("ko"),
        family("fi"),
        family("id"),
        family("th"),
        family("vi"),
        family("el"),
        family("fa"),
    ) == (
        "Romance",
        "Slavic",
        "Semitic",
        "Turkic",
        "Sino-Tibetan",
        "Japonic",
        "Koreanic",
        "Uralic",
        "Austronesian",
        "Kra-Dai",
        "Austroasiatic",
        "Hellenic",
        "Iranian",
    )
    assert (family("zh-Hant"), family("sr-Latn"), family("zho_Hant"), family("Traditional Chinese")) == (
        "Sino-Tibetan",
        "Slavic",
        "Sino-Tibetan",
        "Sino-Tibetan",
    )
    assert family("quy") is None


def test_clusters_by_family_hold_the_shared_languages():
    from align.data.languages import make_clusters

    clusters, unassigned = make_clusters(["French", "de", "hi", "ja", "es", "en", "bn", "ru", "nl"])
    assert clusters == {
        "Germanic": ["de", "en", "es", "fr", "nl"],
        "Indo-Aryan": ["bn", "en", "es", "fr", "hi"],
        "Japonic": ["en", "es", "fr", "ja"],
        "Slavic": ["en", "es", "fr", "ru"],
    }
    assert unassigned == []


def test_explicit_clusters_accept_family_names_and_report_the_unassigned():
    from align.data.languages import make_clusters

    clusters, unassigned = make_clusters(
        ["fr", "de", "hi", "ja", "bn", "ru", "sw"], {"indic": ["Indo-Aryan"], "europe": ["German", "ru"]}, shared=["en"]
    )
    assert clusters == {"europe": ["de", "en", "ru"], "indic": ["bn", "en", "hi"]}
    assert unassigned == ["fr", "ja", "sw"]


def test_zh_hant_and_zh_hans_stay_apart_through_clustering(caplog):
    from align.data.languages import make_clusters

    with caplog.at_level(logging.WARNING, logger="align.data.languages"):
        clusters, unassigned = make_clusters(["zh-Hant", "zh-Hans", "zho_Hant", "ja", "en"])
    assert clusters == {"Japonic": ["en", "es", "fr", "ja"], "Sino-Tibetan": ["en", "es", "fr", "zh", "zh-Hant"]}
    assert unassigned == []
    assert caplog.records == []
    clusters, unassigned = make_clusters(["zh-Hant", "zh", "ja"], {"chinese": ["Sino-Tibetan"]}, shared=["en"])
    assert clusters == {"chinese": ["en", "zh", "zh-Hant"]} and unassigned == ["ja"]


def test_a_language_without_a_family_is_reported_not_refused(caplog):
    from align.data.languages import make_clusters

    with caplog.at_level(logging.WARNING, logger="align.data.languages"):
        clusters, unassigned = make_clusters(["quy", "es", "fuv_Latn", "fr", "Hindi"], shared=["en"])
    assert clusters == {
        "Indo-Aryan": ["en", "hi"],
        "Romance": ["en", "es", "fr"],
        "fuv": ["en", "fuv"],
        "quy": ["en", "quy"],
    }
    assert unassigned == []
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "no language family known for fuv, quy: each makes a cluster of its own")
    ]


def test_clusters_refuse_an_unknown_language():
    from align.data.languages import make_clusters

    with pytest.raises(UnknownLanguage, match="Klingon"):
        make_clusters(["fr", "Klingon"])
