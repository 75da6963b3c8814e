"""Single-answer grading by an LLM judge: MT-Bench's 1-10 scale, or a 1-5 scale (the shape of Chen et al.'s
open-ended grading), reference-guided where the prompt carries a reference answer.

Pairwise judging says which of two answers is better; a grade says how good one answer is on its own, so every stage
gets a number that does not depend on a baseline. A reply whose rating cannot be read is counted, not guessed: a
judge that does not follow the format shows up as a high unparsable count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reward.rank import Messages, Text, as_messages, conversation_text

GRADE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
    "user question displayed below. The user may write in any language. Your evaluation should consider "
    "helpfulness, relevance, accuracy, depth and level of detail, and whether the response is written in the user's "
    "language (unless the user asked for another language, a response in a different language is worse, however "
    "good its content).{reference_rule} {explain}You must rate the response on a scale of 1 to {scale} by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[{example}]]".'
)
REFERENCE_RULE = " You will be given a reference answer: compare the assistant's answer with it and identify mistakes."
EXPLAIN = "Begin your evaluation by providing a short explanation. Be as objective as possible. After that, "
TERSE = "Do not explain: give only the rating. "
GRADE_USER = (
    "[Question]\n{question}\n\n{reference}[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
REFERENCE_BLOCK = "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
SCALES = (10, 5)

_BRACKETED = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*\]\]")
_LABELLED = re.compile(
    r"(?i:rating|score|grade|note|bewertung|puntuaci[oó]n)\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)"
    r"(?:\s*(?:/|out of)\s*\d+)?"
)


def parse_rating(text: str, scale: int) -> float | None:
    """The rating in a judge's reply ("[[7]]", "Rating: 4", "Score: 8/10"), or None when none is found within 1..scale.
    The last bracketed rating wins (a reply may first restate the format)."""
    if not text:
        return None
    found = _BRACKETED.findall(text) or _LABELLED.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= scale else None


@dataclass
class Grader:
    """Grade answers one at a time with a judge: `ask` maps chat prompts to replies (a loaded judge model's greedy
    generation, an API endpoint, or a test's function).

        grader = Grader(ask=judge.ask, scale=10)
        grades = grader.grade(prompts, answers, references)    # → [Grade(rating=7.0, raw=...), ...]
    """

    ask: Callable[[list[Messages]], list[str]]
    scale: int = 10
    explain: bool = True
    _example: int = field(init=False, default=5)

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        self._example = 5 if self.scale == 10 else 3

    def messages(self, prompt: Text, answer: str, reference: str | None = None) -> Messages:
        system = GRADE_SYSTEM.format(
            reference_rule=REFERENCE_RULE if reference else "",
            scale=self.scale,
            explain=EXPLAIN if self.explain else TERSE,
            example=self._example,
        )
        user = GRADE_USER.format(
            question=conversation_text(as_messages(prompt, "user")),
            answer=answer,
            reference=REFERENCE_BLOCK.format(reference=reference) if reference else "",
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def grade(
        self, prompts: Sequence[Text], answers: Sequence[str], references: Sequence[str | None] | None = None
    ) -> list[Grade]:
        references = list(references) if references is not None else [None] * len(prompts)
        if not len(prompts) == len(answers) == len(references):
            raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers, {len(references)} references")
        replies = self.ask([self.messages(p, a, r) for p, a, r in zip(prompts, answers, references)])
        return [Grade(parse_rating(reply, self.scale), reply) for reply in replies]


@dataclass(frozen=True)
class Grade:
    rating: float | None  # None: the reply held no rating on the scale
    raw: str
