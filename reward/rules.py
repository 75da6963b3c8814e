"""Rule-based ranking: prefer answers in the language the prompt asked for (align.evaluation.fidelity's two checks) that do not
restate the prompt (align.data.echo's rule), alone or as penalties on a reward model's, a likelihood ranker's or a judge's
scores, so that arbitrage and online DPO pick answers, in the prompt's language.

Each failed language check (line level, word level) costs `language_penalty`, an echo costs `echo_penalty`: an
answer scores 0 minus its costs alone (`LanguageRanker`), and its ranker's score minus them under `WithRulePenalties`.
The echo penalty is on by default (ECHO_PENALTY) for every ranker: the pointwise mutual information of a copy of the
question with the question is high (on the demo's 96 held-out prompts SmolLM2-135M scores the prompt itself above
the reference answer for 87, by up to 4.8 nats per token), and a reward model can be fooled the same way. The
language an answer should be in is the prompt record's `lang` when the caller passes `langs`, else the language
detected in the prompt's last user message; a prompt whose language cannot be detected costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from align.data.echo import is_echo
from align.data.languages import detect_language
from align.evaluation.fidelity import answer_fidelity
from reward.rank import Ranking, Text, as_messages, ranking_from_scores

ECHO_PENALTY = 10.0  # above the spread of the rankers' scores measured (PMI: 4.8 at most), so an echo ranks last


def prompt_language(prompt: Text) -> str | None:
    """The detected language of the prompt's last user message (of the whole prompt when it has none)."""
    messages = as_messages(prompt, "user")
    users = [m for m in messages if m.get("role") == "user"] or messages
    code, _ = detect_language(users[-1].get("content") or "") if users else (None, 0.0)
    return code


def answer_text(answer: Text) -> str:
    return answer if isinstance(answer, str) else "\n".join(m.get("content") or "" for m in answer)


def failed_checks(answer: Text, lang: str | None) -> int:
    """How many of the two fidelity checks the answer fails (0 when there is no language to check against)."""
    if lang is None:
        return 0
    line, word = answer_fidelity(answer_text(answer), lang)
    return (not line) + (not word)


def _languages(prompts: Sequence[Text], langs: Sequence[str | None] | None) -> list[str | None]:
    if langs is None:
        return [prompt_language(p) for p in prompts]
    if len(langs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(langs)} languages")
    return [lang or prompt_language(p) for p, lang in zip(prompts, langs)]


def penalties(
    prompts: Sequence[Text],
    candidates: Sequence[Sequence[Text]],
    language_penalty: float,
    langs: Sequence[str | None] | None = None,
    echo_penalty: float = 0.0,
) -> list[list[float]]:
    """−(language_penalty × failed checks + echo_penalty × echo) of every candidate of every prompt."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    languages = _languages(prompts, langs) if language_penalty else [None] * len(prompts)
    return [
        [-language_penalty * failed_checks(c, lang) - echo_penalty * is_echo(answer_text(c), prompt) for c in group]
        for prompt, group, lang in zip(prompts, candidates, languages)
    ]


def rank_in_languages(
    ranker, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], langs: Sequence[str | None]
) -> list[Ranking]:
    """`ranker.rank_many`, told each prompt's language when it checks languages (other rankers, a user's among them,
    keep the two-argument interface)."""
    if getattr(ranker, "language_aware", False):
        return ranker.rank_many(prompts, candidates, langs=langs)
    return ranker.rank_many(prompts, candidates)


def score_in_languages(
    ranker, prompts: Sequence[Text], completions: Sequence[Text], langs: Sequence[str | None]
) -> list[float]:
    if getattr(ranker, "language_aware", False):
        return ranker.score(prompts, completions, langs=langs)
    return ranker.score(prompts, completions)


def _check_penalties(*values: float) -> None:
    for value in values:
        if not value >= 0:
            raise ValueError(f"a penalty must be at least 0, got {value}")


@dataclass
class LanguageRanker:
    """Ranks candidates by the rules alone, language fidelity and echo: `{rule: language}` in a recipe."""

    penalty: float = 1.0
    echo_penalty: float = ECHO_PENALTY
    language_aware: ClassVar[bool] = True

    def __post_init__(self):
        _check_penalties(self.penalty, self.echo_penalty)

    def score(
        self, prompts: Sequence[Text], completions: Sequence[Text], langs: Sequence[str | None] | None = None
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [
            group[0] for group in penalties(prompts, [[c] for c in completions], self.penalty, langs, self.echo_penalty)
        ]

    def rank_many(
        self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], langs: Sequence[str | None] | None = None
    ) -> list[Ranking]:
        return [ranking_from_scores(s) for s in penalties(prompts, candidates, self.penalty, langs, self.echo_penalty)]

    def rank(self, prompt: Text, candidates: Sequence[Text], lang: str | None = None) -> Ranking:
        return self.rank_many([prompt], [candidates], None if lang is None else [lang])[0]


@dataclass
class WithRulePenalties:
    """A reward model's or likelihood ranker's scores (or a judge's round-robin points) minus `penalty` per failed
    fidelity check and `echo_penalty` per echo: `{reward_model: path, language_penalty: 1.0}` in a recipe.

    It has `score` only when the ranker it wraps has one (a judge only compares answers)."""

    base: Any
    penalty: float = 0.0
    echo_penalty: float = ECHO_PENALTY
    language_aware: ClassVar[bool] = True

    def __post_init__(self):
        _check_penalties(self.penalty, self.echo_penalty)

    @property
    def score(self):
        if not hasattr(self.base, "score"):
            raise AttributeError(f"{type(self.base).__name__} gives no absolute score, only rankings")
        return self._score

    def _score(
        self, prompts: Sequence[Text], completions: Sequence[Text], langs: Sequence[str | None] | None = None
    ) -> list[float]:
        scores = self.base.score(prompts, completions)
        costs = penalties(prompts, [[c] for c in completions], self.penalty, langs, self.echo_penalty)
        return [float(s) + cost[0] for s, cost in zip(scores, costs)]

    def rank_many(
        self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], langs: Sequence[str | None] | None = None
    ) -> list[Ranking]:
        costs = penalties(prompts, candidates, self.penalty, langs, self.echo_penalty)
        rankings = self.base.rank_many(prompts, candidates)
        return [ranking_from_scores([s + c for s, c in zip(r.scores, cost)]) for r, cost in zip(rankings, costs)]

    def rank(self, prompt: Text, candidates: Sequence[Text], lang: str | None = None) -> Ranking:
        return self.rank_many([prompt], [candidates], None if lang is None else [lang])[0]
