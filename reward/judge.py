"""LLM-as-judge: pairwise comparison with any causal LM, asked in both orders.

Judges prefer whichever answer they read first (or second) more often than chance, so every comparison is asked
twice, with the answers swapped; a winner is declared only when both orders name the same answer, otherwise the
comparison is a tie. The prompt is in English (judges follow English instructions best) and tells the judge that
the user may write in any language and that an answer not in the user's language is worse (the usual failure of
multilingual models). Verdicts are parsed robustly: "[[A]]", "Assistant A", "A" alone, lowercase, trailing
punctuation, "Assistent B" and other spellings.

`PairwiseJudge` has the ranker interface of reward.rank (`rank`, `rank_many`), so it can stand in for a reward
model (Marco-LLM uses a judge this way): candidates are compared round-robin, each win is worth 1 and each tie 1/2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from align.core.errors import ConfigError
from align.data.pairs import outcome_of_winner
from reward.rank import Messages, Ranking, Text, as_messages, conversation_text, ranking_from_scores

# A backend takes chat prompts and returns one completion per prompt (deterministic: greedy decoding).
JudgeBackend = Callable[[list[Messages]], list[str]]

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. The user may write in any language. Choose the assistant that follows the "
    "user's instructions and answers the user's question better: consider helpfulness, correctness, relevance, "
    "depth and level of detail, and whether the answer is written in the user's language (unless the user asked "
    "for another language, an answer in a different language from the user's is worse, however good its content). "
    "Avoid any position bias: the order in which the responses were presented must not influence your decision. "
    "Do not let the length of the responses or the names of the assistants influence you. Be as objective as "
    'possible. {explain}Output your final verdict by strictly following this format: "[[A]]" if assistant A is '
    'better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
EXPLAIN = "Begin with a short explanation comparing the two responses, then give your verdict. "
TERSE = "Do not explain: give only the verdict. "
JUDGE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)


# ---------------------------------------------------------------------------------------------------- parsing

_BRACKETED = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]", re.IGNORECASE)
# "Assistant A", and the spellings judges use when they drift into the user's language.
_ASSISTANT = r"(?:assistant|assistent|asistente|assistente|asystent|ассистент|помощник|アシスタント|助手)"
_NAMED = re.compile(_ASSISTANT + r"\s*[\"'«“]?\s*\(?([ab])\b", re.IGNORECASE)
# The letter must be a capital, or a lowercase one that ends the sentence: "the answer is a good one" is no verdict.
_VERDICT_PHRASE = re.compile(
    r"(?i:verdict|winner|decision|answer|choice|prefer(?:ence)?|better(?:\s+(?:one|answer|response))?)\s*"
    r"(?i:is|:|=|-)?\s*(?i:assistant\s*)?[\"'«“*(\[]*\s*"
    r"(?:([ABC])\b(?![\w'’])|([abc])(?=[\s\"'»”*)\]]*(?:[.!,;]|$)))"
)
_BETTER = re.compile(
    _ASSISTANT + r"\s*([ab])(?:'s|’s)?(?:\s+(?:answer|response))?\s+(?:is|was|wins|provides)\s+"
    r"(?:clearly\s+|slightly\s+|much\s+)?(?:the\s+)?(?:better|superior|preferable|winner|stronger)",
    re.IGNORECASE,
)
_LONE = re.compile(r"^[\s\"'«“*(\[]*(?:assistant\s*)?([abc]|tie)[\s\"'»”*)\].:!,;]*$", re.IGNORECASE)
_LEADING = re.compile(r"^[\s\"'«“*(\[]*([ab])\s*(?:[.):\]!]|$|\s+(?:is\s+better|wins))", re.IGNORECASE)
_TIE = re.compile(r"\b(?:tie|draw|equally\s+(?:good|bad|helpful)|both\s+(?:are\s+)?equal)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply; None when it names no verdict (the comparison then counts as a tie).

    Checked from most to least explicit: the last [[A]]/[[B]]/[[C]] (a reply may first restate the format), a reply
    that is only a letter, a verdict phrase ("Final verdict: B", "Assistant B is better"), a leading "A." or "b)",
    a single assistant named, and finally words for a tie.
    """
    if not text or not text.strip():
        return None
    found = _BRACKETED.findall(text)
    if found:
        return _letter(found[-1])
    lone = _LONE.match(text.strip())
    if lone:
        return _letter(lone.group(1))
    better = _BETTER.findall(text)
    if better and len({b.upper() for b in better}) == 1:
        return better[0].upper()
    phrase = _VERDICT_PHRASE.findall(text)
    if phrase:
        return _letter("".join(phrase[-1]))
    leading = _LEADING.match(text)
    if leading:
        return leading.group(1).upper()
    named = {n.upper() for n in _NAMED.findall(text)}
    if len(named) == 1:
        return named.pop()
    if _TIE.search(text):
        return "tie"
    return None


def _letter(value: str) -> str:
    value = value.upper()
    return "tie" if value in ("C", "TIE") else value


# ---------------------------------------------------------------------------------------------------- judge


@dataclass
class Judgement:
    """One comparison of answer a against answer b. `winner` is 'a', 'b' or 'tie'; `first` and `second` are the
    parsed verdicts of the two orders (a shown as A, then b shown as A), `raw` the judge's two replies."""

    winner: str
    first: str | None
    second: str | None
    raw: tuple[str, str]

    @property
    def orders_disagree(self) -> bool:
        """The two orders name different outcomes: the judge's position bias (or its noise) decided, not the answers."""
        return {"A": "a", "B": "b"}.get(self.first or "", "tie") != {"A": "b", "B": "a"}.get(self.second or "", "tie")


def combine(first: str | None, second: str | None) -> str:
    """Order 1 shows (a, b) as (A, B); order 2 shows (b, a). A winner only when both orders name the same answer."""
    one = {"A": "a", "B": "b"}.get(first or "", "tie")
    two = {"A": "b", "B": "a"}.get(second or "", "tie")
    return one if one == two else "tie"


# Round-robin points of (answer a, answer b) for each outcome of a.
POINTS = {"win": (1.0, 0.0), "loss": (0.0, 1.0), "tie": (0.5, 0.5)}


@dataclass
class PairwiseJudge:
    """Compare answers pairwise with a causal LM judge, in both orders.

        judge = PairwiseJudge("smollm2-135m")                   # or PairwiseJudge(backend=my_fn)
        judgements = judge.compare(prompts, ours, baseline)     # → [Judgement(winner='a', ...), ...]
        align.data.pairs.tally(judgements, langs)                    # → {'fr': {'win': 3, 'loss': 1, 'tie': 2}, ...}
        judge.rank(prompt, candidates)                          # → Ranking(best, worst, margin, scores)

    `model` is an alias, path or hub id loaded like every generating model, by align.generation.generate.load_backend
    (`backend_name`: auto picks vLLM when it is installed with CUDA, else transformers, on the GPU when there is
    one); `backend` replaces the model with any function from chat prompts to replies (an API client, a test fake).
    """

    model: str | None = None
    backend: JudgeBackend | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    explain: bool = True
    model_args: object = None  # align.models.loading.ModelArgs for dtype, attention, trust_remote_code, revision
    backend_name: str = "auto"  # align.generation.generate.BACKENDS: auto, transformers or vllm
    _loaded: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if (self.model is None) == (self.backend is None):
            raise ValueError("give exactly one of model (a judge LM) and backend (a function)")
        from align.generation.generate import BACKENDS

        if self.backend_name not in BACKENDS:
            raise ConfigError(
                None, "backend", f"unknown judge backend {self.backend_name!r} (expected {', '.join(BACKENDS)})"
            )

    def messages(self, prompt: Text, a: Text, b: Text) -> Messages:
        """The judge's chat: instructions as the system turn, the question and both answers as the user turn."""
        system = JUDGE_SYSTEM.format(explain=EXPLAIN if self.explain else TERSE)
        user = JUDGE_USER.format(
            question=conversation_text(as_messages(prompt, "user")), a=_answer_text(a), b=_answer_text(b)
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def ask(self, chats: list[Messages]) -> list[str]:
        replies = self.backend(chats) if self.backend is not None else self._generate(chats)
        if len(replies) != len(chats):
            raise RuntimeError(f"judge backend returned {len(replies)} replies for {len(chats)} prompts")
        return list(replies)

    def _generate(self, chats: list[Messages]) -> list[str]:
        """One greedy reply per chat from the judge model."""
        from align.generation.generate import GenerationArgs, complete

        backend, tokenizer = self.load()
        if not _renders_system(tokenizer):  # Gemma-style templates refuse a system turn: fold it into the user's
            chats = [[{"role": "user", "content": f"{c[0]['content']}\n\n{c[1]['content']}"}] for c in chats]
        args = GenerationArgs(max_new_tokens=self.max_new_tokens, temperature=0.0, batch_size=self.batch_size)
        return [replies[0] for replies in complete(backend, tokenizer, chats, args, progress=False)]

    def load(self):
        """(generation backend, tokenizer) of the judge model, loaded on first use."""
        if not self._loaded:
            import dataclasses

            from align.generation.generate import choose_backend, load_backend
            from align.models.loading import ModelArgs

            args = (
                dataclasses.replace(self.model_args, model=self.model)
                if self.model_args is not None
                else ModelArgs(model=self.model)
            )
            self._loaded = load_backend(args, choose_backend(self.backend_name))
        return self._loaded

    def compare(self, prompts: Sequence[Text], answers_a: Sequence[Text], answers_b: Sequence[Text]) -> list[Judgement]:
        """Judge a against b for each prompt, in both orders (all 2N judge calls in one batched pass)."""
        if not len(prompts) == len(answers_a) == len(answers_b):
            raise ValueError(f"{len(prompts)} prompts, {len(answers_a)} answers a, {len(answers_b)} answers b")
        chats = [self.messages(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b)]
        chats += [self.messages(p, b, a) for p, a, b in zip(prompts, answers_a, answers_b)]
        replies = self.ask(chats)
        n = len(prompts)
        judgements = []
        for one, two in zip(replies[:n], replies[n:]):
            first, second = parse_verdict(one), parse_verdict(two)
            judgements.append(Judgement(combine(first, second), first, second, (one, two)))
        return judgements

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]]) -> list[Ranking]:
        """Round-robin per prompt: every pair of candidates compared in both orders; 1 point a win, 1/2 a tie."""
        if len(prompts) != len(candidates):
            raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
        games = [(g, i, j) for g, group in enumerate(candidates) for i, j in combinations(range(len(group)), 2)]
        judgements = self.compare(
            [prompts[g] for g, _, _ in games],
            [candidates[g][i] for g, i, _ in games],
            [candidates[g][j] for g, _, j in games],
        )
        points = [[0.0] * len(group) for group in candidates]
        for (g, i, j), judgement in zip(games, judgements):
            to_i, to_j = POINTS[outcome_of_winner(judgement.winner)]
            points[g][i] += to_i
            points[g][j] += to_j
        return [ranking_from_scores(p) for p in points]

    def rank(self, prompt: Text, candidates: Sequence[Text]) -> Ranking:
        return self.rank_many([prompt], [candidates])[0]


def _renders_system(tokenizer) -> bool:
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return True
    except Exception:  # jinja raises its own exception types from inside templates
        return False


def _answer_text(answer: Text) -> str:
    if isinstance(answer, str):
        return answer
    return "\n\n".join(m["content"] for m in answer)
