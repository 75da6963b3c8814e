"""Language tags and names, and offline language detection.

Every record carries a `lang` tag so every stage can report per language. Users may write an ISO 639-1/639-2/639-3
code, a BCP-47 tag ("pt-BR", "zh-Hant", "sr-Latn"), a FLORES-200/NLLB code ("fra_Latn", "zho_Hant") or an English
name ("French", "Traditional Chinese"); all become one canonical tag (see `normalize_lang`). The code tables and
names are langcodes' (IANA registry and CLDR); polyalign keeps only its language families and a few aliases.
"""

from __future__ import annotations

import functools
import logging
import re

import langcodes
from langcodes import Language

log = logging.getLogger(__name__)


class UnknownLanguage(ValueError):
    """A `lang` value that is neither a known code or tag nor a known language name."""


# Aliases langcodes lacks (lowercase keys), and language subtags polyalign folds further than the registry does:
# Norwegian is trained and detected as Bokmål, and FLORES writes Pashto as Southern Pashto ("pbt_Arab").
_ALIASES = {"jp": "ja", "bokmal": "nb"}
_FOLD = {"no": "nb", "pbt": "ps"}
# Registry entries that name no single natural language to train on: "und", "zxx", "mul", "mis" (special),
# "qaa".."qtz" (private use), "art", "sit", ... (collections), and the languages of fiction.
_REFUSED_SCOPES = frozenset({"special", "private-use", "collection"})
_FICTIONAL = frozenset({"tlh", "qya", "sjn"})
_PRIVATE_USE = re.compile(r"q[a-t][a-z]")
_LANGUAGE_SUBTAG = re.compile(r"[a-z]{2,3}")
_TAG = re.compile(r"[A-Za-z0-9]+([-_][A-Za-z0-9]+)*")
_QUALIFIED_NAME = re.compile(r"(.+?)\s*\(([^()]+)\)")


@functools.cache
def _refused_subtags() -> frozenset[str]:
    from language_data.registry_parser import parse_registry

    return frozenset(
        item["Subtag"]
        for item in parse_registry()
        if item.get("Type") == "language" and item.get("Scope") in _REFUSED_SCOPES
    )


def _from_tag(text: str) -> Language | None:
    """The tag `text` names, or None when it is no valid tag (a name, perhaps)."""
    if not _TAG.fullmatch(text):
        return None
    try:
        language = Language.get(text.replace("_", "-"))
    except (langcodes.LanguageTagError, ValueError):
        return None
    return language if language.language and language.is_valid() else None


def _from_name(text: str) -> Language | None:
    """The language an English (or native) name names; "Serbian (Latin)" and "English (US)" name a script or region."""
    key = re.sub(r"\s+", " ", text.strip()).lower()
    if key in _ALIASES:
        return Language.get(_ALIASES[key])
    qualified = _QUALIFIED_NAME.fullmatch(key)
    try:
        if qualified:
            base = Language.find(qualified[1], "en")
            for tagtype in ("script", "territory"):
                try:
                    found = Language.find_name(tagtype, qualified[2], "en")
                except LookupError:
                    continue
                return base.update_dict({tagtype: getattr(found, tagtype)})
        return Language.find(key)
    except LookupError:
        return None


def normalize_lang(value: str) -> str:
    """The canonical tag of a code, tag or name: what every record's `lang` holds, so equal languages compare equal.

    The language is its shortest code (ISO 639-1 where one exists, else 639-3), individual languages folded into
    their macrolanguage where the registry does (cmn → zh, arb → ar); the region is dropped; the script is kept only
    where it is not the language's usual one, because it then makes another target: "zh-Hant" and "zh-TW" →
    "zh-Hant", "zh-Hans" → "zh", "sr-Latn" → "sr-Latn", "pt-BR" → "pt", "fra_Latn" → "fr". Idempotent.
    """
    if not isinstance(value, str) or not value.strip():
        raise UnknownLanguage(f"expected a language code or name, got {value!r}")
    return _normalize(value.strip())


@functools.lru_cache(maxsize=4096)
def _normalize(text: str) -> str:
    language = _from_tag(text) or _from_name(text)
    if language is not None:
        language = Language.get(langcodes.standardize_tag(language, macro=True))
    code = _FOLD.get(language.language, language.language) if language and language.language else ""
    if (
        not _LANGUAGE_SUBTAG.fullmatch(code)
        or code in _FICTIONAL
        or _PRIVATE_USE.fullmatch(code)
        or code in _refused_subtags()
    ):
        raise UnknownLanguage(
            f"unknown language {text!r} (use an ISO 639-1/639-3 code, a BCP-47 tag or an English name)"
        )
    script = language.update_dict({"language": code}).maximize().script
    return code if script == Language.get(code).maximize().script else f"{code}-{script}"


def base_language(tag: str) -> str:
    """The language subtag of a tag ("zh-Hant" → "zh"): what a detector that cannot tell scripts apart reports."""
    return Language.get(normalize_lang(tag)).language


def language_name(code: str) -> str:
    """The English name of a language, as prompts and reports show it ("zh-Hant" → "Chinese (Traditional)");
    a value polyalign cannot name is shown as given."""
    try:
        return Language.get(normalize_lang(code)).display_name("en")
    except UnknownLanguage:
        return code


@functools.lru_cache(maxsize=1)
def _detector():
    # Lingua ships its n-gram models inside the wheel: detection works offline. Models load lazily per language.
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def detect_language(text: str) -> tuple[str | None, float]:
    """Return (canonical tag, confidence) for `text`, or (None, 0.0) when it has no letters to judge by.

    Lingua reports languages, not scripts: Chinese is "zh" whichever script it is in (compare with `base_language`).
    """
    if not text or not re.search(r"[^\W\d_]", text):
        return None, 0.0
    values = _detector().compute_language_confidence_values(text[:2000])
    if not values:
        return None, 0.0
    best = values[0]
    code = best.language.iso_code_639_1.name.lower()
    return normalize_lang(code), float(best.value)


# ------------------------------------------------------------------------------------------------ families

# Language family (genus level where it helps merging: Germanic, Romance and Slavic rather than Indo-European) of
# the languages polyalign has trained so far, the 23 Aya Expanse and the 29 Marco-LLM languages among them; keyed by
# language subtag, so a tag with a script has its language's family.
FAMILIES: dict[str, tuple[str, ...]] = {
    "Germanic": ("af", "da", "de", "en", "is", "nb", "nl", "nn", "sv", "yi"),
    "Romance": ("ca", "es", "fr", "gl", "it", "la", "pt", "ro"),
    "Slavic": ("be", "bg", "bs", "cs", "hr", "mk", "pl", "ru", "sk", "sl", "sr", "uk"),
    "Baltic": ("lt", "lv"),
    "Celtic": ("cy", "ga"),
    "Hellenic": ("el",),
    "Albanian": ("sq",),
    "Armenian": ("hy",),
    "Indo-Aryan": ("as", "bn", "gu", "hi", "mr", "ne", "or", "pa", "sd", "si", "ur"),
    "Iranian": ("fa", "ku", "ps", "tg"),
    "Semitic": ("am", "ar", "he", "mt"),
    "Cushitic": ("so",),
    "Chadic": ("ha",),
    "Turkic": ("az", "kk", "ky", "tr", "tt", "ug", "uz"),
    "Mongolic": ("mn",),
    "Uralic": ("et", "fi", "hu"),
    "Sino-Tibetan": ("my", "zh"),
    "Japonic": ("ja",),
    "Koreanic": ("ko",),
    "Austronesian": ("ceb", "fil", "id", "jv", "mg", "mi", "ms", "su"),
    "Kra-Dai": ("lo", "th"),
    "Austroasiatic": ("km", "vi"),
    "Dravidian": ("kn", "ml", "ta", "te"),
    "Niger-Congo": ("ig", "lg", "ny", "rw", "sn", "st", "sw", "tn", "ts", "wo", "xh", "yo", "zu"),
    "Kartvelian": ("ka",),
    "Basque": ("eu",),
    "Creole": ("ht",),
    "Constructed": ("eo",),
}
_FAMILY_OF = {code: family for family, codes in FAMILIES.items() for code in codes}
DEFAULT_SHARED = ("en", "es", "fr")  # Aya Expanse keeps these in every cluster so the cluster models merge well


def family(code: str) -> str | None:
    """The family of a language tag ("sr-Latn" → "Slavic"); None for a language polyalign has no family for."""
    return _FAMILY_OF.get(base_language(code))


def _family_key(name: str) -> str | None:
    wanted = re.sub(r"[\s_]+", " ", name.strip().lower())
    return next((f for f in FAMILIES if f.lower() == wanted), None)


def make_clusters(languages, spec="family", shared=DEFAULT_SHARED) -> tuple[dict[str, list[str]], list[str]]:
    """Group the languages of a dataset into clusters, each also holding the shared languages.

    spec "family": one cluster per family present (shared languages aside); a mapping {cluster: [languages or
    family names]}: those clusters. Returns (clusters, languages no cluster holds), both sorted. Codes and names are
    normalised; an unknown language raises UnknownLanguage. By family, a language polyalign knows no family for makes
    a cluster of its own, with a warning: it is merged with no related language.
    """
    present = sorted({normalize_lang(lang) for lang in languages})
    shared = sorted({normalize_lang(lang) for lang in shared})
    clusters: dict[str, set[str]] = {}
    if spec == "family":
        for lang in present:
            if lang not in shared:
                clusters.setdefault(family(lang) or lang, set()).add(lang)
        if alone := [lang for lang in present if lang not in shared and family(lang) is None]:
            log.warning("no language family known for %s: each makes a cluster of its own", ", ".join(alone))
    elif isinstance(spec, dict):
        for name, members in spec.items():
            chosen = set()
            for member in members:
                fam = _family_key(member) if isinstance(member, str) else None
                chosen |= {c for c in present if family(c) == fam} if fam else {normalize_lang(member)}
            clusters[str(name)] = chosen
    else:
        raise ValueError(f"clusters must be 'family' or a mapping of cluster name to languages, got {spec!r}")
    if not clusters and shared:
        clusters["shared"] = set()
    held = set().union(*clusters.values()) | set(shared)
    out = {name: sorted(members | set(shared)) for name, members in sorted(clusters.items())}
    return out, [lang for lang in present if lang not in held]
