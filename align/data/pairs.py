"""The pair rule and the tally: which of a prompt's scored completions make a preference pair, and how comparisons
between two models add up to win/loss/tie per language. Arbitrage, online DPO, contrast and evaluation all use these.

A pair is the best against the worst completion by score (ties broken as `ranking_from_scores` breaks
them: the first with the top score, the last with the bottom one). It is kept only when the margin is above zero and
at least `min_margin`, and the two texts differ: DPO learns nothing from a pair whose sides are equal, and a pair of
the same text with two labels only adds noise.

Given which completions restate their prompt (align.data.echo), the rule never prefers an echo to an answer, whatever the
scores: the best is the top-scoring completion that is not an echo, the worst the lowest-scoring echo when there is
one (such a pair is kept at any margin: the rule, not the ranker, decides it), and a prompt whose completions are all
echoes gives neither a pick nor a pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

OUTCOMES = ("win", "loss", "tie")
TIE_EPSILON = 1e-6  # reward-model scores closer than this are a tie


@dataclass
class Ranking:
    """Candidates of one prompt, ranked. `best`/`worst` index the candidates as given; `margin` = best − worst.

    Ties: `best` is the first candidate with the top score, `worst` the last with the bottom one, so two or more
    candidates never give best == worst (a margin of 0 tells the caller they are tied).
    """

    best: int
    worst: int
    margin: float
    scores: list[float]


def ranking_from_scores(scores: Sequence[float]) -> Ranking:
    if not scores:
        raise ValueError("cannot rank zero candidates")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], -i))
    return Ranking(best, worst, float(scores[best] - scores[worst]), [float(s) for s in scores])


@dataclass(frozen=True)
class PairChoice:
    """`best` and `worst` index the completions; `dropped` says why no pair is made (None: keep it)."""

    best: int
    worst: int
    margin: float
    dropped: str | None  # single | all_echo | tie | below_margin | identical


def choose_pair(
    texts: Sequence[str], scores: Sequence[float], min_margin: float = 0.0, echoes: Sequence[bool] | None = None
) -> PairChoice:
    if len(texts) != len(scores) or (echoes is not None and len(echoes) != len(texts)):
        raise ValueError(
            f"{len(texts)} completions but {len(scores)} scores"
            + (f" and {len(echoes)} echo flags" if echoes is not None else "")
        )
    ranking = ranking_from_scores(scores)
    best, worst, margin = ranking.best, ranking.worst, ranking.margin
    decided_by_rule = False
    if echoes is not None and any(echoes) and not all(echoes):
        answers = [i for i in range(len(texts)) if not echoes[i]]
        copies = [i for i in range(len(texts)) if echoes[i]]
        best = max(answers, key=lambda i: (scores[i], -i))
        worst = min(copies, key=lambda i: (scores[i], -i))
        margin, decided_by_rule = float(scores[best] - scores[worst]), True
    if len(texts) < 2:
        reason = "single"
    elif echoes is not None and all(echoes):
        reason = "all_echo"
    elif margin <= 0 and not decided_by_rule:
        reason = "tie"
    elif margin < min_margin and not decided_by_rule:
        reason = "below_margin"
    elif same_text(texts[best], texts[worst]):
        reason = "identical"
    else:
        reason = None
    return PairChoice(best, worst, margin, reason)


def same_text(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def echo_choice(prompt: dict, texts: Sequence[str], scores: Sequence[float], min_margin: float = 0.0) -> PairChoice:
    """The pair rule for one prompt record's completions, told which of them restate the prompt."""
    from align.data.echo import is_echo

    return choose_pair(texts, scores, min_margin, [is_echo(t, prompt["prompt"]) for t in texts])


def pair_statistics(pairs: Sequence[dict]) -> dict:
    """What a set of preference pairs teaches, at a glance: how many per language, the ranker's mean scores of each
    side and their margin, the lengths in words and the share of echoes (align.data.echo) on each side."""
    import statistics

    from align.data.echo import is_echo

    def text(side) -> str:
        return side if isinstance(side, str) else side[-1]["content"]

    if not pairs:
        return {"pairs": 0}
    chosen = [text(p["chosen"]) for p in pairs]
    rejected = [text(p["rejected"]) for p in pairs]
    scored = [
        (p["chosen_score"], p["rejected_score"])
        for p in pairs
        if p.get("chosen_score") is not None and p.get("rejected_score") is not None
    ]
    margins = [c - r for c, r in scored]
    return {
        "pairs": len(pairs),
        "per_language": dict(sorted(Counter(p.get("lang") or "?" for p in pairs).items())),
        "mean_margin": round(statistics.fmean(margins), 4) if margins else None,
        "chosen_mean_score": round(statistics.fmean(c for c, _ in scored), 4) if scored else None,
        "rejected_mean_score": round(statistics.fmean(r for _, r in scored), 4) if scored else None,
        "chosen_mean_words": round(statistics.fmean(len(t.split()) for t in chosen), 2),
        "rejected_mean_words": round(statistics.fmean(len(t.split()) for t in rejected), 2),
        "chosen_echo_share": round(sum(is_echo(t, p["prompt"]) for t, p in zip(chosen, pairs)) / len(pairs), 4),
        "rejected_echo_share": round(sum(is_echo(t, p["prompt"]) for t, p in zip(rejected, pairs)) / len(pairs), 4),
    }


def echo_pair(prompt: dict, texts: Sequence[str], choice: PairChoice, **extra) -> dict | None:
    """The pair (the prompt's pick, the prompt itself as the answer): what a student that repeats the question has to
    unlearn. A small student fine-tuned on answers that restate the question's words learns to restate the whole
    question where it knows no answer (the demo's SFT: a third of its held-out answers); DPO on these pairs unlearns
    it. None where there is no pick (every completion an echo) or the prompt's own pair already rejects that text."""
    from align.data.echo import prompt_text

    echo = prompt_text(prompt["prompt"])
    if choice.dropped == "all_echo" or (choice.dropped is None and same_text(texts[choice.worst], echo)):
        return None
    return preference_record(prompt, texts[choice.best], echo, rejected_by="echo", **extra)


def preference_record(prompt: dict, chosen: str, rejected: str, **extra) -> dict:
    """The canonical preference record (ARCHITECTURE.md) of a prompt record and two completion texts."""
    return {
        "prompt": prompt["prompt"],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "lang": prompt["lang"],
        "id": prompt["id"],
        **extra,
    }


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
