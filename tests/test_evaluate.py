"""Evaluation on tiny models: answers resume only for the settings that produced them, and the tally adds up."""

from __future__ import annotations

import json

import pytest

from align.evaluate import run_evaluate
from conftest import scaled_teacher, tiny_reward_model, write_jsonl

PROMPTS = [("Quelle est la capitale de la France ?", "fr"), ("Was ist zwei plus drei?", "de"),
           ("Explain why the sky is blue.", "en"), ("¿Cuánto es siete por ocho?", "es")]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("eval-models")
    return {"base": scaled_teacher(root / "base", tokenizer, seed=1),
            "tuned": scaled_teacher(root / "tuned", tokenizer, seed=2),
            "judge": tiny_reward_model(root / "judge", tokenizer)}


def config(tmp_path, models, **overrides) -> dict:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "lang": lang, "id": f"p{i}"}
                                                       for i, (p, lang) in enumerate(PROMPTS)])
    return {"models": {"base": str(models["base"]), "tuned": str(models["tuned"])}, "prompts": str(prompts),
            "output_dir": str(tmp_path / "eval"), "judge": {"reward_model": str(models["judge"])}, "dtype": "fp32",
            "batch_size": 2, "max_new_tokens": 2, **overrides}


def answers(out) -> list[str]:
    return [json.loads(line)["completion"] for line in (out / "answers" / "tuned.jsonl").read_text().splitlines()]


def test_rerun_after_a_changed_max_new_tokens_regenerates_the_answers(tmp_path, models, monkeypatch):
    import align.evaluate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # A run killed after answering, before judging: its answers (2 new tokens) are in the partial directory.
    with monkeypatch.context() as patch:
        patch.setattr(align.evaluate, "score_models", killed)
        with pytest.raises(KeyboardInterrupt):
            run_evaluate(config(tmp_path, models))
    assert (tmp_path / ".eval.partial").is_dir() and not (tmp_path / "eval").exists()

    out = run_evaluate(config(tmp_path, models, max_new_tokens=12))
    fresh = run_evaluate(config(tmp_path / "fresh", models, max_new_tokens=12))
    assert answers(out) == answers(fresh)  # the stale 2-token answers were not reused
    short = run_evaluate(config(tmp_path / "short", models))
    assert answers(short) != answers(out)  # the control: 2 and 12 new tokens do give other answers

    metrics = json.loads((out / "metrics.json").read_text())
    counts = metrics["models"]["tuned"]["vs_baseline"]
    assert sum(counts["all"][k] for k in ("win", "loss", "tie")) == len(PROMPTS)
    assert sum(counts[lang]["win"] for lang in ("fr", "de", "en", "es")) == counts["all"]["win"]
    assert sorted(p.name for p in out.iterdir()) == ["answers", "metrics.json", "polyalign_recipe.json", "report.md",
                                                     "winrate_by_language.png", "winrate_by_stage.png"]
