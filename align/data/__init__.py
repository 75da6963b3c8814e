"""Data ingestion shared by every stage: read, detect the format, normalise, tag the language."""

from .formats import detect_format
from .languages import detect_language, normalize_lang
from .loader import DataSource, hold_out_by_id, iter_records, language_mix, load_records, parse_sources

__all__ = ["DataSource", "detect_format", "detect_language", "hold_out_by_id", "iter_records", "language_mix", "load_records",
           "normalize_lang", "parse_sources"]
