"""Data shared by every stage: read any format, normalise, tag the language, curation steps, and the rules on
records (a preference pair, an answer that echoes its prompt).

May import align.models (curation steps that score with a model) and align.core."""

from align.data.formats import detect_format
from align.data.languages import detect_language, normalize_lang
from align.data.loader import DataSource, hold_out_by_id, iter_records, language_mix, load_records, parse_sources

__all__ = [
    "DataSource",
    "detect_format",
    "detect_language",
    "hold_out_by_id",
    "iter_records",
    "language_mix",
    "load_records",
    "normalize_lang",
    "parse_sources",
]
