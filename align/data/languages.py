"""Language codes and names, and offline language detection.

Every record carries a `lang` code so every stage can report per language. Codes are ISO 639-1 where one
exists (ISO 639-3 otherwise); users may write either, or the English name ("French", "Hindi").
"""

from __future__ import annotations

import functools
import re

# code (639-1 or 639-3), ISO 639-3 code(s), English name, other accepted names; `|`-separated fields.
_TABLE = """
af|afr|Afrikaans|
am|amh|Amharic|
ar|ara arb|Arabic|
as|asm|Assamese|
az|aze azj|Azerbaijani|
be|bel|Belarusian|
bg|bul|Bulgarian|
bn|ben|Bengali|Bangla
bs|bos|Bosnian|
ca|cat|Catalan|
ceb|ceb|Cebuano|
cs|ces cze|Czech|
cy|cym wel|Welsh|
da|dan|Danish|
de|deu ger|German|Deutsch
el|ell gre|Greek|Modern Greek
en|eng|English|
eo|epo|Esperanto|
es|spa|Spanish|Castilian;Español
et|est ekk|Estonian|
eu|eus baq|Basque|
fa|fas per pes|Persian|Farsi
fi|fin|Finnish|
fil|fil|Filipino|
fr|fra fre|French|Français
ga|gle|Irish|
gl|glg|Galician|
gu|guj|Gujarati|
ha|hau|Hausa|
he|heb|Hebrew|
hi|hin|Hindi|
hr|hrv|Croatian|
ht|hat|Haitian Creole|Haitian
hu|hun|Hungarian|
hy|hye arm|Armenian|
id|ind|Indonesian|Bahasa Indonesia
ig|ibo|Igbo|
is|isl ice|Icelandic|
it|ita|Italian|
ja|jpn|Japanese|jp
jv|jav|Javanese|
ka|kat geo|Georgian|
kk|kaz|Kazakh|
km|khm|Khmer|
kn|kan|Kannada|
ko|kor|Korean|
ku|kur|Kurdish|
ky|kir|Kyrgyz|Kirghiz
la|lat|Latin|
lg|lug|Ganda|Luganda
lo|lao|Lao|
lt|lit|Lithuanian|
lv|lav lvs|Latvian|
mg|mlg|Malagasy|
mi|mri mao|Maori|
mk|mkd mac|Macedonian|
ml|mal|Malayalam|
mn|mon khk|Mongolian|
mr|mar|Marathi|
ms|msa may zsm|Malay|
mt|mlt|Maltese|
my|mya bur|Burmese|Myanmar
nb|nob|Norwegian Bokmal|Bokmal;Bokmål;Norwegian;no;nor
ne|nep npi|Nepali|
nl|nld dut|Dutch|Flemish
nn|nno|Norwegian Nynorsk|Nynorsk
ny|nya|Chichewa|Nyanja
or|ori ory|Odia|Oriya
pa|pan|Punjabi|Panjabi
pl|pol|Polish|
ps|pus pbt|Pashto|
pt|por|Portuguese|
ro|ron rum|Romanian|Moldavian
ru|rus|Russian|
rw|kin|Kinyarwanda|
sd|snd|Sindhi|
si|sin|Sinhala|Sinhalese
sk|slk slo|Slovak|
sl|slv|Slovenian|Slovene
sn|sna|Shona|
so|som|Somali|
sq|sqi alb|Albanian|
sr|srp|Serbian|
st|sot|Sotho|Sesotho;Southern Sotho
su|sun|Sundanese|
sv|swe|Swedish|
sw|swa swh|Swahili|Kiswahili
ta|tam|Tamil|
te|tel|Telugu|
tg|tgk|Tajik|
th|tha|Thai|
tl|tgl|Tagalog|
tn|tsn|Tswana|Setswana
tr|tur|Turkish|
ts|tso|Tsonga|
tt|tat|Tatar|
ug|uig|Uyghur|Uighur
uk|ukr|Ukrainian|
ur|urd|Urdu|
uz|uzb uzn|Uzbek|
vi|vie|Vietnamese|
wo|wol|Wolof|
xh|xho|Xhosa|
yi|yid|Yiddish|
yo|yor|Yoruba|
zh|zho chi cmn|Chinese|Mandarin;Chinese (Simplified);Chinese (Traditional);Simplified Chinese;Traditional Chinese
zu|zul|Zulu|
"""

NAMES: dict[str, str] = {}
_ALIASES: dict[str, str] = {}


def _key(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text.strip().lower())


for _row in _TABLE.strip().splitlines():
    _code, _iso3, _name, _others = _row.split("|")
    NAMES[_code] = _name
    for _alias in [_code, *_iso3.split(), _name, *filter(None, _others.split(";"))]:
        _ALIASES[_key(_alias)] = _code


class UnknownLanguage(ValueError):
    """A `lang` value that is neither a known code nor a known English name."""


def normalize_lang(value: str) -> str:
    """Map a code or an English name to the canonical code: "French" → "fr", "hin" → "hi", "pt-BR" → "pt"."""
    if not isinstance(value, str) or not value.strip():
        raise UnknownLanguage(f"expected a language code or name, got {value!r}")
    key = _key(value)
    if key in _ALIASES:
        return _ALIASES[key]
    # Locale tags: "pt-BR", "zh_Hant", "en-US" → their language part.
    base = re.split(r"[-_ ]", key, maxsplit=1)[0]
    if base in _ALIASES and re.fullmatch(r"[a-z]{2,3}([-_ ][a-z0-9]{2,8})+", key):
        return _ALIASES[base]
    raise UnknownLanguage(f"unknown language {value!r} (use an ISO 639-1/639-3 code or an English name)")


def language_name(code: str) -> str:
    return NAMES.get(code, code)


@functools.lru_cache(maxsize=1)
def _detector():
    # Lingua ships its n-gram models inside the wheel: detection works offline. Models load lazily per language.
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def detect_language(text: str) -> tuple[str | None, float]:
    """Return (code, confidence) for `text`, or (None, 0.0) when it has no letters to judge by."""
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
# every code above: the 23 Aya Expanse languages and the 29 Marco-LLM languages among them.
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
    "Austronesian": ("ceb", "fil", "id", "jv", "mg", "mi", "ms", "su", "tl"),
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
    """The family of a language code (None for a code polyalign has no family for)."""
    return _FAMILY_OF.get(code)


def _family_key(name: str) -> str | None:
    wanted = _key(name)
    return next((f for f in FAMILIES if _key(f) == wanted), None)


def make_clusters(languages, spec="family", shared=DEFAULT_SHARED) -> tuple[dict[str, list[str]], list[str]]:
    """Group the languages of a dataset into clusters, each also holding the shared languages.

    spec "family": one cluster per family present (shared languages aside); a mapping {cluster: [languages or
    family names]}: those clusters. Returns (clusters, languages no cluster holds), both sorted. Codes and names are
    normalised; an unknown language raises UnknownLanguage.
    """
    present = sorted({normalize_lang(lang) for lang in languages})
    shared = sorted({normalize_lang(lang) for lang in shared})
    clusters: dict[str, set[str]] = {}
    if spec == "family":
        for lang in present:
            if lang not in shared:
                clusters.setdefault(family(lang) or lang, set()).add(lang)
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
