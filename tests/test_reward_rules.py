"""The rule-based ranker (language fidelity alone or as a penalty on a reward model or a judge) and its recipe
keys."""

from __future__ import annotations

import pytest
from conftest import tiny_reward_model

from align.core.errors import ConfigError
from reward import load_ranker
from reward.judge import PairwiseJudge
from reward.rules import ECHO_PENALTY, LanguageRanker, WithRulePenalties, prompt_language
from reward.spec import parse_ranker

FRENCH_PROMPT = "Quelle est la capitale de la France ? Réponds en une phrase, s'il te plaît."
IN_ENGLISH = "The capital of France is Paris, a very large city."
IN_FRENCH = "La capitale de la France est Paris, une très grande ville."
HINDI_PROMPT = "भारत की राजधानी क्या है? कृपया एक वाक्य में उत्तर दीजिए।"
HINDI = "भारत की राजधानी नई दिल्ली है और यह एक बहुत बड़ा शहर है।"
HINGLISH = "नई दिल्ली एक modern city है और यहाँ बहुत traffic है।"


def test_language_ranker_prefers_the_in_language_candidate():
    ranker = LanguageRanker()
    ranking = ranker.rank(FRENCH_PROMPT, [IN_ENGLISH, IN_FRENCH])
    assert (ranking.best, ranking.worst, ranking.scores) == (1, 0, [-1.0, 0.0])
    # Each failed check costs the penalty: the English answer fails both levels of a Hindi prompt.
    hindi = LanguageRanker(penalty=2.0).rank_many([HINDI_PROMPT], [[HINGLISH, IN_ENGLISH, HINDI]])[0]
    assert (hindi.best, hindi.worst, hindi.scores) == (2, 1, [-2.0, -4.0, 0.0])


def test_language_comes_from_langs_else_the_last_user_message():
    ranker = LanguageRanker()
    assert ranker.rank(FRENCH_PROMPT, [IN_ENGLISH, IN_FRENCH], lang="en").best == 0
    chat = [
        {"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": FRENCH_PROMPT},
    ]
    assert prompt_language(chat) == "fr"
    assert ranker.score([chat, chat], [IN_ENGLISH, IN_FRENCH]) == [-1.0, 0.0]
    assert ranker.score([chat, chat], [IN_ENGLISH, IN_FRENCH], langs=["en", "en"]) == [0.0, -1.0]
    assert ranker.score(["12 + 30 = ?"], [IN_ENGLISH]) == [0.0]  # no language to hold the answer to
    with pytest.raises(ValueError, match="1 prompts but 2 languages"):
        ranker.rank_many([FRENCH_PROMPT], [[IN_FRENCH]], langs=["fr", "en"])


@pytest.fixture(scope="module")
def reward_ranker(tmp_path_factory, tokenizer):
    from align.models.loading import ModelArgs
    from reward.rank import RewardRanker

    return RewardRanker(
        str(tiny_reward_model(tmp_path_factory.mktemp("rm"), tokenizer)), model_args=ModelArgs(dtype="fp32")
    )


def test_penalty_on_a_reward_model_flips_its_ranking_only_when_large(reward_ranker):
    prompt, candidates = "Name the capital of France.", [IN_ENGLISH, IN_FRENCH]
    base = reward_ranker.rank(prompt, candidates)
    assert base.margin > 0
    # Ask for the language of the candidate the reward model ranks last: only a penalty can lift it.
    lang = ["fr", "en"][base.best]
    unchanged = WithRulePenalties(reward_ranker, 0.0).rank(prompt, candidates, lang=lang)
    assert (unchanged.best, unchanged.scores) == (base.best, base.scores)
    flipped = WithRulePenalties(reward_ranker, 1000.0).rank(prompt, candidates, lang=lang)
    assert flipped.best == base.worst
    assert flipped.scores[base.best] == pytest.approx(base.scores[base.best] - 1000.0)
    assert flipped.scores[base.worst] == pytest.approx(base.scores[base.worst])
    scores = WithRulePenalties(reward_ranker, 1000.0).score([prompt] * 2, candidates, langs=[lang] * 2)
    assert scores == pytest.approx([s - 1000.0 * (i == base.best) for i, s in enumerate(base.scores)])


def test_penalty_on_a_judge_breaks_its_ties_and_gives_no_score():
    judge = PairwiseJudge(backend=lambda chats: ["[[A]]"] * len(chats))  # position-biased: every game a tie
    assert judge.rank(FRENCH_PROMPT, [IN_ENGLISH, IN_FRENCH]).margin == 0
    penalised = WithRulePenalties(judge, 1.0)
    ranking = penalised.rank(FRENCH_PROMPT, [IN_ENGLISH, IN_FRENCH])
    assert (ranking.best, ranking.scores) == (1, [-0.5, 0.5])
    assert not hasattr(penalised, "score")


def test_load_ranker_builds_the_rule_and_the_wrapper(tmp_path, tokenizer):
    from align.models.loading import ModelArgs

    rule = load_ranker(parse_ranker({"rule": "language", "language_penalty": 3}, "r.yaml").as_dict())
    assert isinstance(rule, LanguageRanker) and rule.penalty == 3.0
    assert load_ranker(parse_ranker({"rule": "language"}, "r.yaml").as_dict()).penalty == 1.0
    path = str(tiny_reward_model(tmp_path / "rm", tokenizer))
    wrapped = load_ranker(
        parse_ranker({"reward_model": path, "language_penalty": 2}, "r.yaml").as_dict(), ModelArgs(dtype="fp32")
    )
    assert isinstance(wrapped, WithRulePenalties) and wrapped.penalty == 2.0 and hasattr(wrapped, "score")
    default = load_ranker(parse_ranker({"reward_model": path}, "r.yaml").as_dict(), ModelArgs(dtype="fp32"))
    assert isinstance(default, WithRulePenalties) and (default.penalty, default.echo_penalty) == (0.0, ECHO_PENALTY)
    plain = load_ranker(
        parse_ranker({"reward_model": path, "echo_penalty": 0}, "r.yaml").as_dict(), ModelArgs(dtype="fp32")
    )
    assert not isinstance(plain, WithRulePenalties)


@pytest.mark.parametrize(
    "value, message",
    [
        ({}, "r.yaml: 'ranker': give exactly one of ranker.reward_model"),
        ({"rule": "language", "reward_model": "rm"}, "'ranker': give exactly one of ranker.reward_model"),
        ({"judge": "m", "rule": "language"}, "ranker.rule (language: a rule)"),
        ({"rule": "length"}, "r.yaml: 'ranker.rule': unknown rule 'length' (expected language)"),
        ({"reward_model": "rm", "language_penalty": -1}, "r.yaml: 'ranker.language_penalty': must be at least 0"),
        ({"reward_model": "rm", "language_penalty": "high"}, "r.yaml: 'ranker.language_penalty': expected float"),
    ],
)
def test_bad_ranker_keys_are_one_line_errors_naming_the_key(value, message):
    with pytest.raises(ConfigError) as error:
        parse_ranker(value, "r.yaml")
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1


def test_new_keys_are_accepted():
    assert parse_ranker({"rule": "language"}, "r.yaml").as_dict()["rule"] == "language"
    spec = parse_ranker({"judge": "m", "language_penalty": 0.5}, "r.yaml", backend="transformers")
    assert (spec.judge, spec.language_penalty, spec.backend) == ("m", 0.5, "transformers")
    assert "language_penalty" not in parse_ranker({"reward_model": "rm"}, "r.yaml").as_dict()
