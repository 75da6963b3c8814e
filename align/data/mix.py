"""Language mixing for SFT: per-language or per-tier multipliers (EMMA-500) and temperature sampling (XLM-R, mT5).

    multipliers:  n'_l = n_l × m_l, m_l from the language's own multiplier, else its tier's, else 1
    temperature:  p_l ∝ (n'_l)^(1/T) over the languages, then N × p_l records of language l

T = 1 keeps the (multiplied) proportions, larger T flattens them towards uniform (T → ∞), so low-resource languages
are up-sampled and high-resource ones down-sampled. N (`total`) defaults to the number of records after the
multipliers. A language's target count is met with whole copies of its records plus a seeded sample without
replacement for the rest; targets are rounded by largest remainder so that they add up to N exactly. Everything is
a function of the records' order and the seed.

    from align.data.mix import mix_records
    mixed, plan = mix_records(records, multipliers={"sw": 3}, temperature=3.0, seed=0)
    print(format_plan(plan))
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from align.core.errors import ConfigError
from align.data.languages import UnknownLanguage, normalize_lang


@dataclass
class MixArgs:
    """The `mix` step of `curate`, and the keyword arguments of `mix_records`."""

    multipliers: dict[str, float] = field(default_factory=dict)  # language → multiplier
    tiers: dict[str, Any] = field(default_factory=dict)  # tier → {languages: [...], multiplier: x}
    temperature: float | None = None  # None: no temperature sampling
    total: int | None = None  # records in the mix (default: the count after multipliers)
    seed: int = 0


@dataclass
class LanguagePlan:
    lang: str
    available: int  # records of the language before mixing
    multiplier: float
    weighted: float  # available × multiplier
    share: float  # its share of the mix
    target: int  # records of the language in the mix


def language_multipliers(
    args: MixArgs, langs: list[str], source: str | None = None, where: str = ""
) -> dict[str, float]:
    """Each language's multiplier: its own, else its tier's, else 1. Bad values are ConfigErrors naming the key
    (`where` prefixes it: "steps[7].mix.")."""
    if not isinstance(args.multipliers or {}, dict):
        raise ConfigError(source, f"{where}multipliers", "expected a mapping of language to multiplier")
    if not isinstance(args.tiers or {}, dict):
        raise ConfigError(source, f"{where}tiers", "expected a mapping of tier to {languages, multiplier}")
    own: dict[str, float] = {}
    for key, value in (args.multipliers or {}).items():
        own[_lang(key, f"{where}multipliers.{key}", source)] = _multiplier(value, f"{where}multipliers.{key}", source)
    tiered: dict[str, float] = {}
    for tier, spec in (args.tiers or {}).items():
        where_tier = f"{where}tiers.{tier}"
        if not isinstance(spec, dict) or "languages" not in spec or "multiplier" not in spec:
            raise ConfigError(source, where_tier, "expected {languages: [...], multiplier: x}")
        unknown = set(spec) - {"languages", "multiplier"}
        if unknown:
            raise ConfigError(
                source, f"{where_tier}.{sorted(unknown)[0]}", "unknown key (expected languages, multiplier)"
            )
        multiplier = _multiplier(spec["multiplier"], f"{where_tier}.multiplier", source)
        languages = spec["languages"] if isinstance(spec["languages"], list) else [spec["languages"]]
        for lang in languages:
            code = _lang(lang, f"{where_tier}.languages", source)
            if code in tiered:
                raise ConfigError(source, f"{where_tier}.languages", f"{code!r} is in two tiers")
            tiered[code] = multiplier
    return {lang: own.get(lang, tiered.get(lang, 1.0)) for lang in langs}


def _lang(value: Any, key: str, source: str | None) -> str:
    try:
        return normalize_lang(str(value))
    except UnknownLanguage as e:
        raise ConfigError(source, key, str(e)) from None


def _multiplier(value: Any, key: str, source: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(source, key, f"must be a number >= 0, got {value!r}")
    return float(value)


def largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Integers proportional to `weights` that add up to `total` (ties broken by key, so deterministic)."""
    mass = sum(weights.values())
    if mass <= 0 or total <= 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / mass for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    short = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:short]:
        out[k] += 1
    return out


def plan_mix(counts: dict[str, int], args: MixArgs, source: str | None = None, where: str = "") -> list[LanguagePlan]:
    """How many records of each language the mix takes, from the per-language counts."""
    if args.temperature is not None and (not math.isfinite(args.temperature) or args.temperature <= 0):
        raise ConfigError(source, f"{where}temperature", f"must be a number > 0, got {args.temperature!r}")
    if args.total is not None and (isinstance(args.total, bool) or args.total < 1):
        raise ConfigError(source, f"{where}total", f"must be at least 1, got {args.total!r}")
    langs = sorted(counts, key=lambda l: (-counts[l], l))
    multipliers = language_multipliers(args, langs, source, where)
    weighted = {l: counts[l] * multipliers[l] for l in langs}
    total = args.total if args.total is not None else round(sum(weighted.values()))
    if args.temperature is None:
        weights = weighted
    else:
        weights = {l: w ** (1.0 / args.temperature) if w > 0 else 0.0 for l, w in weighted.items()}
    targets = largest_remainder(weights, total)
    mass = sum(weights.values()) or 1.0
    return [LanguagePlan(l, counts[l], multipliers[l], weighted[l], weights[l] / mass, targets[l]) for l in langs]


def sample_to(records: list[dict], target: int, rng: random.Random) -> list[int]:
    """Indices into `records`: whole copies, then a sample without replacement for the rest, in input order."""
    if not records or target <= 0:
        return []
    whole, rest = divmod(target, len(records))
    picked = [i for i in range(len(records)) for _ in range(whole)]
    picked += rng.sample(range(len(records)), rest)
    return sorted(picked)


def mix_records(
    records: list[dict],
    *,
    multipliers: dict | None = None,
    tiers: dict | None = None,
    temperature: float | None = None,
    total: int | None = None,
    seed: int = 0,
    source: str | None = None,
    where: str = "",
) -> tuple[list[dict], list[LanguagePlan]]:
    """The mixed records (input order, repeats adjacent) and the per-language plan."""
    args = MixArgs(multipliers=multipliers or {}, tiers=tiers or {}, temperature=temperature, total=total, seed=seed)
    by_lang: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_lang.setdefault(record["lang"], []).append(i)
    plan = plan_mix({l: len(idx) for l, idx in by_lang.items()}, args, source, where)
    chosen: list[int] = []
    for entry in plan:
        # One generator per language, seeded by the language: a language's sample does not depend on the others.
        rng = random.Random(f"{seed}:{entry.lang}")
        members = by_lang[entry.lang]
        chosen += [members[k] for k in sample_to(members, entry.target, rng)]
    chosen.sort()
    return [records[i] for i in chosen], plan


def format_plan(plan: list[LanguagePlan]) -> str:
    """The mix as a table, printed before training and written into the curation report."""
    rows = [("lang", "records", "multiplier", "share", "in mix", "ratio")]
    for p in plan:
        rows.append(
            (
                p.lang,
                str(p.available),
                f"{p.multiplier:g}",
                f"{p.share:.1%}",
                str(p.target),
                f"{p.target / p.available:.2f}x" if p.available else "-",
            )
        )
    total_in, total_out = sum(p.available for p in plan), sum(p.target for p in plan)
    rows.append(
        ("all", str(total_in), "", "100.0%", str(total_out), f"{total_out / total_in:.2f}x" if total_in else "-")
    )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
