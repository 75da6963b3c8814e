"""The likelihood ranker: its score is the PMI it claims (checked against a plain unpadded forward), batching does
not change it, its spec parses like the other rankers', and on the embedded model it prefers the answer to the
question over an answer to another question and over the right answer in another language."""

from __future__ import annotations

import pytest
import torch

from align.core.config import ConfigError
from reward import load_ranker
from reward.likelihood import EMPTY_TURN, LikelihoodRanker
from reward.spec import describe_ranker, parse_ranker

PAIRS = [
    ("Quelle est la capitale de la France ?", "La capitale de la France est Paris."),
    ("What is two plus two?", "Two plus two is four, because adding two to two gives four."),
    ("日本の首都はどこですか？", "日本の首都は東京です。"),
    ("Hi", "Hello! How can I help you today?"),
    ("Назови три цвета.", "Красный, зелёный и синий."),
]


@pytest.fixture(scope="module")
def tiny_ranker(tiny_model_dir) -> LikelihoodRanker:
    from align.models.loading import ModelArgs

    return LikelihoodRanker(str(tiny_model_dir), batch_size=3, max_length=512, model_args=ModelArgs(dtype="fp32"))


def _mean_logprob(model, tokenizer, head: list[dict], prompt_and_answer: list[dict]) -> float:
    """Mean log-probability of the answer's tokens after the rendered `head`: one unpadded forward, no tricks."""
    head_text = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(head + prompt_and_answer[-1:], tokenize=False)
    assert full.startswith(head_text)
    head_ids = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(head_text) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(picked[len(head_ids) - 1 :].mean())


def test_score_is_conditioned_minus_unconditioned_mean_logprob(tiny_ranker):
    model, tokenizer = tiny_ranker.model, tiny_ranker.tokenizer
    scores = tiny_ranker.score([p for p, _ in PAIRS], [c for _, c in PAIRS])
    for (prompt, answer), score in zip(PAIRS, scores):
        user, reply = [{"role": "user", "content": prompt}], {"role": "assistant", "content": answer}
        expected = _mean_logprob(model, tokenizer, user, [reply]) - _mean_logprob(model, tokenizer, EMPTY_TURN, [reply])
        assert score == pytest.approx(expected, abs=1e-4)


def test_batching_and_order_do_not_change_scores(tiny_ranker):
    prompts, answers = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    batched = tiny_ranker.score(prompts, answers)
    one_by_one = LikelihoodRanker(tiny_ranker.model, tiny_ranker.tokenizer, batch_size=1)
    assert batched == pytest.approx([one_by_one.score([p], [a])[0] for p, a in zip(prompts, answers)], abs=1e-4)
    assert tiny_ranker.score(prompts[::-1], answers[::-1]) == pytest.approx(batched[::-1], abs=1e-4)


def test_rank_many_agrees_with_score(tiny_ranker):
    prompts = [PAIRS[0][0], PAIRS[1][0]]
    groups = [[PAIRS[0][1], PAIRS[1][1], PAIRS[2][1]], [PAIRS[3][1], PAIRS[1][1]]]
    rankings = tiny_ranker.rank_many(prompts, groups)
    for prompt, group, ranking in zip(prompts, groups, rankings):
        scores = tiny_ranker.score([prompt] * len(group), group)
        assert ranking.scores == pytest.approx(scores, abs=1e-4)
        assert ranking.best == max(range(len(group)), key=scores.__getitem__)
        assert ranking.worst == min(range(len(group)), key=scores.__getitem__)


def test_max_length_caps_the_scored_answer_tokens(tiny_ranker):
    capped = LikelihoodRanker(tiny_ranker.model, tiny_ranker.tokenizer, max_length=4)
    long_answer = "Two plus two is four, because adding two to two gives four."
    short = capped.tokenizer.decode(
        capped._completion_ids(
            [{"role": "user", "content": "q"}],
            [{"role": "assistant", "content": long_answer}],
            capped._head([{"role": "user", "content": "q"}]),
        )
    )
    assert long_answer.startswith(short.strip()) and len(short.strip()) < len(long_answer)


def test_refuses_a_tokenizer_without_a_chat_template(tiny_ranker):
    import copy

    plain = copy.deepcopy(tiny_ranker.tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        LikelihoodRanker(tiny_ranker.model, plain)
    with pytest.raises(ValueError, match="tokenizer"):
        LikelihoodRanker(tiny_ranker.model)


def test_spec_parses_builds_and_describes(tiny_model_dir):
    spec = parse_ranker({"likelihood": str(tiny_model_dir), "batch_size": 2, "max_length": 32}, "r.yaml")
    assert spec.loaded_model() == ("likelihood", str(tiny_model_dir))
    assert describe_ranker(spec.as_dict()) == f"likelihood ranker `{tiny_model_dir}`"
    ranker = load_ranker(spec.as_dict()).base  # wrapped in the echo rule
    assert isinstance(ranker, LikelihoodRanker) and (ranker.batch_size, ranker.max_length) == (2, 32)
    with pytest.raises(ConfigError, match="exactly one of ranker.reward_model.*ranker.likelihood"):
        parse_ranker({"likelihood": "a", "judge": "b"}, "r.yaml")


def test_embedded_model_prefers_the_answer_to_the_question_in_its_language():
    """Zero-shot on SmolLM2-135M-Instruct: the right answer beats an answer to another question and the same
    answer in another language (the two failures the demo's arbitrage must catch)."""
    ranker = LikelihoodRanker("smollm2-135m", batch_size=8, max_length=64)
    cases = [
        (
            "Wie viele Beine hat eine Spinne?",
            "Eine Spinne hat acht Beine.",
            ["Die Hauptstadt von Italien ist Rom.", "A spider has eight legs."],
        ),
        (
            "Name three things that plants need to grow.",
            "Plants need water, sunlight and nutrients from the soil.",
            ["The capital of Japan is Tokyo.", "Las plantas necesitan agua, luz solar y nutrientes del suelo."],
        ),
        (
            "¿Cuál es el océano más grande del mundo?",
            "El océano más grande del mundo es el Pacífico.",
            ["Me gusta mucho el chocolate.", "The largest ocean in the world is the Pacific."],
        ),
    ]
    rankings = ranker.rank_many([q for q, _, _ in cases], [[good, *bad] for _, good, bad in cases])
    assert [r.best for r in rankings] == [0, 0, 0], [r.scores for r in rankings]


def test_the_recipes_likelihood_ranker_puts_answers_above_wrong_language_above_echoes():
    """The bare PMI ranker prefers a copy of the question to the answer (the prompt explains its own words best); the
    ranker a recipe gets (load_ranker: the echo rule on by default) ranks the answer first and the echo last."""
    from reward.rules import rank_in_languages

    cases = [  # (prompt, lang, answer, the same answer in English)
        (
            "Wie viele Kontinente gibt es auf der Erde?",
            "de",
            "Auf der Erde gibt es sieben Kontinente.",
            "There are seven continents on Earth.",
        ),
        ("Что делают пчёлы?", "ru", "Пчёлы делают мёд и воск.", "Bees make honey and beeswax."),
        ("ミツバチは何を作りますか？", "ja", "ミツバチははちみつと蜜蝋を作ります。", "Bees make honey and beeswax."),
        (
            "¿Cuál es lo contrario de caliente?",
            "es",
            "Lo contrario de caliente es frío.",
            "The opposite of hot is cold.",
        ),
    ]
    prompts = [q for q, *_ in cases]
    candidates = [[answer, english, q] for q, _, answer, english in cases]
    ranker = load_ranker({"likelihood": "smollm2-135m", "max_length": 64})
    bare = ranker.base.rank_many(prompts, candidates)
    assert sum(r.best == 2 for r in bare) >= 3, [r.scores for r in bare]  # the control: PMI alone loves the echo
    for ranking in rank_in_languages(ranker, prompts, candidates, [lang for _, lang, *_ in cases]):
        assert ranking.best == 0 and ranking.worst == 2 and ranking.scores[0] > ranking.scores[1], ranking.scores
