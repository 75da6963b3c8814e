"""LLM-as-judge: verdict parsing, both orders with ties on disagreement, per-language tallies, the ranker interface,
and one real tiny LM through the whole path."""

from __future__ import annotations

import re

import pytest

from align.data.pairs import tally
from reward.judge import Judgement, PairwiseJudge, combine, parse_verdict


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("[[A]]", "A"),
        ("[[b]]", "B"),
        ("Final verdict: [[C]]", "tie"),
        ("**[[B]]**", "B"),
        ("[[ tie ]]", "tie"),
        ('The format is "[[A]]", "[[B]]" or "[[C]]". My verdict: [[B]]', "B"),  # the last bracketed verdict counts
        ("Assistant A", "A"),
        ("A", "A"),
        ("b.", "B"),
        ("B!", "B"),
        ("  a  ", "A"),
        ("(A)", "A"),
        ("a) the first", "A"),
        ('Verdict: "A"', "A"),
        ("Final answer: b", "B"),
        ("My verdict is B because it is in French.", "B"),
        ("Assistant B is better.", "B"),
        ("Assistant A's answer is better than Assistant B's.", "A"),
        ("I prefer assistant A.", "A"),
        ("Assistent B ist besser.", "B"),
        ("Asistente B.", "B"),
        ("tie", "tie"),
        ("It's a tie.", "tie"),
        ("Both are equally good.", "tie"),
        ("I cannot decide.", None),
        ("A good answer would mention Paris.", None),
        ("", None),
        ("The answer is a good one, but hard to judge", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_combine_declares_a_winner_only_when_both_orders_agree():
    # order 1 shows (a, b) as (A, B); order 2 shows (b, a) as (A, B)
    assert combine("A", "B") == "a" and combine("B", "A") == "b"
    assert combine("A", "A") == "tie" and combine("B", "B") == "tie"  # position bias
    assert combine("A", "tie") == "tie" and combine(None, "B") == "tie" and combine("tie", "tie") == "tie"


def answers_in(chat: list[dict]) -> tuple[str, str]:
    user = chat[-1]["content"]
    a = re.search(r"\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of Assistant A's Answer\]", user, re.S)
    b = re.search(r"\[The Start of Assistant B's Answer\]\n(.*)\n\[The End of Assistant B's Answer\]", user, re.S)
    return a.group(1), b.group(1)


class FakeJudge:
    """Deterministic judge backends: one that prefers a property of the answers, one that always says A."""

    def __init__(self, prefer):
        self.prefer, self.chats = prefer, []

    def __call__(self, chats):
        self.chats += chats
        out = []
        for chat in chats:
            a, b = answers_in(chat)
            pa, pb = self.prefer(a), self.prefer(b)
            out.append("Explanation... [[A]]" if pa > pb else "assistant b." if pb > pa else "It's a tie.")
        return out


def is_french(text: str) -> int:
    return int(any(w in text for w in (" est ", "Bonjour")))


def test_both_orders_are_asked_and_position_bias_gives_ties():
    prompts = ["Quelle est la capitale de la France ?", "Dis bonjour.", "What is 2+2?", "Capitale de l'Italie ?"]
    ours = ["Paris est la capitale.", "Hello!", "Four.", "Rome est la capitale."]
    base = ["The capital is Paris.", "Bonjour !", "Four.", "Rome."]
    langs = ["fr", "fr", "en", "fr"]
    backend = FakeJudge(is_french)
    verdicts = PairwiseJudge(backend=backend).compare(prompts, ours, base)
    assert len(backend.chats) == 8  # every comparison in both orders
    assert [answers_in(c) for c in backend.chats[:4]] == list(zip(ours, base))
    assert [answers_in(c) for c in backend.chats[4:]] == list(zip(base, ours))
    assert [v.winner for v in verdicts] == ["a", "b", "tie", "a"]
    assert (verdicts[0].first, verdicts[0].second) == ("A", "B")
    assert tally(verdicts, langs) == {
        "all": {"win": 2, "loss": 1, "tie": 1},
        "en": {"win": 0, "loss": 0, "tie": 1},
        "fr": {"win": 2, "loss": 1, "tie": 0},
    }

    biased = PairwiseJudge(backend=lambda chats: ["[[A]]"] * len(chats)).compare(prompts, ours, base)
    assert [v.winner for v in biased] == ["tie"] * 4  # always the first shown: the orders disagree
    assert tally(biased, langs)["fr"] == {"win": 0, "loss": 0, "tie": 3}


def test_judge_prompt_is_english_and_asks_about_the_users_language():
    chat = PairwiseJudge(backend=lambda c: []).messages("¿Cuál es la capital de España?", "Madrid.", "Madrid is.")
    system = chat[0]["content"]
    assert chat[0]["role"] == "system" and "user's language" in system and "[[A]]" in system and "[[C]]" in system
    assert "¿Cuál es la capital de España?" in chat[1]["content"]
    assert "Do not explain" in PairwiseJudge(backend=len, explain=False).messages("q", "a", "b")[0]["content"]


def test_judge_ranks_candidates_round_robin():
    backend = FakeJudge(len)  # prefers the longer answer
    judge = PairwiseJudge(backend=backend)
    candidates = ["medium answer", "a much much longer answer", "short"]
    ranking = judge.rank("Say something.", candidates)
    assert (ranking.best, ranking.worst) == (1, 2)
    assert ranking.scores == [1.0, 2.0, 0.0] and ranking.margin == 2.0
    assert len(backend.chats) == 3 * 2  # 3 pairs, both orders
    rankings = judge.rank_many(["p", "q"], [["x", "xx"], ["yyy", "y", "yy"]])
    assert [(r.best, r.worst) for r in rankings] == [(1, 0), (0, 1)]


def test_a_real_tiny_lm_goes_through_the_judge_path(tiny_model_dir):
    judge = PairwiseJudge(str(tiny_model_dir), max_new_tokens=4, explain=False, batch_size=4)
    prompts = ["Quelle est la capitale de la France ?", "What is 2+2?"]
    verdicts = judge.compare(prompts, ["Paris.", "Four."], ["Berlin.", "Five."])
    assert all(isinstance(v, Judgement) and v.winner in ("a", "b", "tie") for v in verdicts)
    assert all(len(v.raw) == 2 and all(isinstance(r, str) for r in v.raw) for v in verdicts)
    assert [v.winner for v in verdicts] == [combine(v.first, v.second) for v in verdicts]
    assert judge.compare(prompts, ["Paris.", "Four."], ["Berlin.", "Five."]) == verdicts  # greedy: deterministic
    counts = tally(verdicts, ["fr", "en"])["all"]
    assert sum(counts.values()) == 2
    ranking = judge.rank(prompts[0], ["Paris.", "Berlin.", "Lyon."])
    assert sum(ranking.scores) == 3.0  # 3 games, one point each however they end


def test_load_ranker_passes_the_judge_backend_on():
    from align.core.errors import ConfigError
    from reward import load_ranker

    judge = load_ranker({"judge": "smollm2-135m", "backend": "transformers", "max_new_tokens": 8}).base  # echo rule
    assert isinstance(judge, PairwiseJudge) and judge.backend_name == "transformers" and judge.max_new_tokens == 8
    assert load_ranker({"judge": "smollm2-135m"}).base.backend_name == "auto"  # nothing is loaded before the first use
    with pytest.raises(ConfigError, match="backend"):
        load_ranker({"judge": "smollm2-135m", "backend": "tgi"})
