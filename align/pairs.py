"""The pair rule and the tally: which of a prompt's scored completions make a preference pair, and how comparisons
between two models add up to win/loss/tie per language. Arbitrage, online DPO, contrast and evaluation all use these.

A pair is the best against the worst completion by score (ties broken as `reward.rank.ranking_from_scores` breaks
them: the first with the top score, the last with the bottom one). It is kept only when the margin is above zero and
at least `min_margin`, and the two texts differ: DPO learns nothing from a pair whose sides are equal, and a pair of
the same text with two labels only adds noise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

OUTCOMES = ("win", "loss", "tie")
TIE_EPSILON = 1e-6  # reward-model scores closer than this are a tie


@dataclass(frozen=True)
class PairChoice:
    """`best` and `worst` index the completions; `dropped` says why no pair is made (None: keep it)."""

    best: int
    worst: int
    margin: float
    dropped: str | None  # single | tie | below_margin | identical


def choose_pair(texts: Sequence[str], scores: Sequence[float], min_margin: float = 0.0) -> PairChoice:
    from reward.rank import ranking_from_scores

    if len(texts) != len(scores):
        raise ValueError(f"{len(texts)} completions but {len(scores)} scores")
    ranking = ranking_from_scores(scores)
    best, worst, margin = ranking.best, ranking.worst, ranking.margin
    if len(texts) < 2:
        reason = "single"
    elif margin <= 0:
        reason = "tie"
    elif margin < min_margin:
        reason = "below_margin"
    elif texts[best].strip() == texts[worst].strip():
        reason = "identical"
    else:
        reason = None
    return PairChoice(best, worst, margin, reason)


def preference_record(prompt: dict, chosen: str, rejected: str, **extra) -> dict:
    """The canonical preference record (ARCHITECTURE.md) of a prompt record and two completion texts."""
    return {"prompt": prompt["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "lang": prompt["lang"], "id": prompt["id"],
            **extra}


# ------------------------------------------------------------------------------------------------ comparisons


def outcome_of_scores(ours: float, theirs: float) -> str:
    return "tie" if abs(ours - theirs) <= TIE_EPSILON else "win" if ours > theirs else "loss"


def outcome_of_winner(winner: str) -> str:
    """A pairwise verdict's winner ('a' = ours, 'b' = theirs, anything else a tie) as an outcome."""
    return {"a": "win", "b": "loss"}.get(winner, "tie")


def tally(outcomes: Sequence, langs: Sequence[str | None]) -> dict[str, dict[str, int]]:
    """Win/loss/tie counts per language, plus 'all'. An outcome is 'win'/'loss'/'tie' or a judge's verdict (its
    `winner` is 'a' for the system under test)."""
    counts: dict[str, Counter] = {}
    for outcome, lang in zip(outcomes, langs):
        if not isinstance(outcome, str):
            outcome = outcome_of_winner(outcome.winner)
        for key in (lang or "?", "all"):
            counts.setdefault(key, Counter())[outcome] += 1
    return {lang: {k: c[k] for k in OUTCOMES} for lang, c in sorted(counts.items())}


def win_rate(counts: dict[str, int]) -> float:
    """Wins plus half the ties, over all comparisons."""
    n = sum(counts[k] for k in OUTCOMES)
    return round((counts["win"] + counts["tie"] / 2) / n, 4) if n else 0.0


def tally_with_rates(outcomes: Sequence, langs: Sequence[str | None]) -> dict[str, dict]:
    return {lang: {**c, "win_rate": win_rate(c)} for lang, c in tally(outcomes, langs).items()}
