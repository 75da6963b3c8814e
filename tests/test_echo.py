"""Echo-proof evaluation and ranking: the prompt repeated as an answer never scores above a real answer on the
echo-free metric, is flagged by the echo rule, and is never picked by a ranker or the pair rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from align.data.echo import echo_flags, is_echo, prompt_overlap, prompt_text
from align.data.pairs import choose_pair, echo_choice, pair_statistics
from align.evaluation.chrf import chrf_score, chrf_statistics

HELDOUT = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "data" / "prompts.jsonl"


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines()]


def test_plain_statistics_are_sacrebleus(heldout):
    from sacrebleu.metrics import CHRF

    answers, refs = [prompt_text(r["prompt"]) for r in heldout], [r["reference"] for r in heldout]
    assert chrf_score(chrf_statistics(answers, refs)) == pytest.approx(
        CHRF(word_order=2).corpus_score(answers, [refs]).score
    )


def test_the_prompt_as_answer_scores_zero_echo_free_and_below_every_real_answer(heldout):
    prompts, refs = [r["prompt"] for r in heldout], [r["reference"] for r in heldout]
    echo = [prompt_text(p) for p in prompts]
    plain_echo = chrf_score(chrf_statistics(echo, refs))
    assert plain_echo > 20  # what plain chrF++ credits a copy of the question with: the reason for the metric
    assert chrf_score(chrf_statistics(echo, refs, prompts)) == 0.0
    for k, row in enumerate(heldout):  # per prompt: the reference itself, as an answer, beats the echo
        real = chrf_score(chrf_statistics([row["reference"]], [row["reference"]], [row["prompt"]]))
        copy = chrf_score(chrf_statistics([echo[k]], [row["reference"]], [row["prompt"]]))
        assert copy == 0.0 < real, row["id"]
    # The question restated before the answer earns nothing over the answer alone; a repeated question scores zero.
    alone = chrf_score(chrf_statistics(refs, refs, prompts))
    both = chrf_score(chrf_statistics([f"{e} {r}" for e, r in zip(echo, refs)], refs, prompts))
    assert 0 < both <= alone and chrf_score(chrf_statistics([f"{e} {e}" for e in echo], refs, prompts)) == 0.0


def test_echo_rule_flags_copies_and_passes_every_reference_answer(heldout):
    prompts = [r["prompt"] for r in heldout]
    assert not any(echo_flags([r["reference"] for r in heldout], prompts))  # short answers reuse words, still answer
    copies = [prompt_text(p) for p in prompts]
    assert all(echo_flags(copies, prompts))
    assert all(echo_flags([c.upper().rstrip("?？") + " " + c for c in copies], prompts))  # shouted and repeated
    assert all(echo_flags([" ".join(c.split()[: max(1, len(c.split()) * 2 // 3)]) for c in copies], prompts))
    cut = [c[: len(c) * 2 // 3] for c in copies]  # the token limit cuts a copy mid-word
    assert all(echo_flags(cut, prompts)) and all(echo_flags([f"{c} {x}" for c, x in zip(copies, cut)], prompts))
    assert prompt_overlap("", prompts[0]) == 0.0 and not is_echo("", prompts[0])
    assert is_echo("Wie viele Kontinente gibt es auf der Erde?", "Wie viele Kontinente gibt es auf der Erde?")
    assert not is_echo("Auf der Erde gibt es sieben Kontinente.", "Wie viele Kontinente gibt es auf der Erde?")


def test_the_pair_rule_never_prefers_an_echo():
    prompt = {"prompt": [{"role": "user", "content": "Wie viele Kontinente gibt es auf der Erde?"}], "lang": "de"}
    echo, real, english = (
        "Wie viele Kontinente gibt es auf der Erde?",
        "Es gibt sieben Kontinente.",
        "There are seven continents.",
    )
    # the ranker's scores favour the echo (as PMI does): the rule still picks the answer, and rejects the echo
    choice = echo_choice(prompt, [echo, english, real], [5.0, 0.5, 1.0], min_margin=0.1)
    assert (choice.best, choice.worst, choice.dropped) == (2, 0, None) and choice.margin == -4.0
    # without echoes the scores alone decide; all echoes: no pick at all
    assert choose_pair([english, real], [0.5, 1.0], 0.1, [False, False]).best == 1
    assert echo_choice(prompt, [echo, echo + " " + echo], [1.0, 0.0]).dropped == "all_echo"
    stats = pair_statistics(
        [
            {
                "prompt": prompt["prompt"],
                "chosen": [{"role": "assistant", "content": real}],
                "rejected": [{"role": "assistant", "content": echo}],
                "lang": "de",
                "chosen_score": 1.0,
                "rejected_score": 5.0,
            }
        ]
    )
    assert (stats["chosen_echo_share"], stats["rejected_echo_share"], stats["mean_margin"]) == (0.0, 1.0, -4.0)


def test_the_rule_ranker_ranks_answers_above_wrong_language_above_echoes():
    from reward.rules import LanguageRanker

    prompt = "Welches Organ pumpt das Blut durch den Körper?"
    candidates = [
        prompt,
        "The heart pumps blood through the whole body.",
        "Das Herz pumpt das Blut durch den ganzen Körper.",
    ]
    ranking = LanguageRanker().rank(prompt, candidates, lang="de")
    assert ranking.best == 2 and ranking.worst == 0
    assert ranking.scores[2] > ranking.scores[1] > ranking.scores[0]


def test_evaluation_scores_the_echo_control_and_flags_a_copying_model(tmp_path, heldout):
    """Answers files only (no model): a model that copies the question is flagged, one that answers is not."""
    from align.stages.evaluate import run_evaluate

    rows = heldout[:16]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    files = {
        "copier": [prompt_text(r["prompt"]) for r in rows],
        "answerer": [r["reference"].replace(".", "!") for r in rows],
    }
    models = {
        n: str(write_jsonl(tmp_path / f"{n}.jsonl", [{"id": r["id"], "completion": a} for r, a in zip(rows, t)]))
        for n, t in files.items()
    }
    out = run_evaluate(
        {"models": models, "prompts": str(prompts), "output_dir": str(tmp_path / "eval"), "resamples": 200}
    )
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["models"]
    assert m["echo"]["control"] and m["echo"]["echo_rate"]["all"]["mean"] == 1.0
    assert m["echo"]["echo_free_chrf++"]["all"]["score"] == 0.0
    assert m["copier"]["chrf++"]["all"]["score"] == m["echo"]["chrf++"]["all"]["score"]  # fools plain chrF++
    assert m["copier"]["beats_echo"] is False and m["copier"]["echo_rate"]["all"]["mean"] == 1.0
    assert m["answerer"]["beats_echo"] is True and m["answerer"]["echo_rate"]["all"]["mean"] == 0.0
    assert m["answerer"]["vs_echo_difference"]["echo_free_chrf++"]["interval"][0] > 0
    assert metrics["echo_rule"].startswith("an answer is an echo")
    report = (out / "report.md").read_text()
    assert "| echo (control: the prompt as answer) |" in report and "Not above the echo control" in report
    assert "copier" in report.split("Not above the echo control")[1].splitlines()[0]
    written = [json.loads(line) for line in (out / "answers" / "echo.jsonl").read_text().splitlines()]
    assert [w["completion"] for w in written] == files["copier"] and all(w["echo"] for w in written)


def test_a_model_named_echo_is_refused(tmp_path):
    from align.core.errors import ConfigError
    from align.stages.evaluate import parse_evaluate_config

    with pytest.raises(ConfigError, match="'models.echo'.*control row"):
        parse_evaluate_config({"models": {"base": "a", "echo": "b"}, "prompts": "p", "output_dir": "o"}, "e.yaml")
