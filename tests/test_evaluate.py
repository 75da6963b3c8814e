"""Evaluation on tiny models: answers resume only for the settings that produced them, and the tally adds up."""

from __future__ import annotations

import json

import pytest
from conftest import scaled_teacher, tiny_reward_model, write_jsonl

from align.stages.evaluate import run_evaluate

PROMPTS = [
    ("Quelle est la capitale de la France ?", "fr"),
    ("Was ist zwei plus drei?", "de"),
    ("Explain why the sky is blue.", "en"),
    ("¿Cuánto es siete por ocho?", "es"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("eval-models")
    return {
        "base": scaled_teacher(root / "base", tokenizer, seed=1),
        "tuned": scaled_teacher(root / "tuned", tokenizer, seed=2),
        "judge": tiny_reward_model(root / "judge", tokenizer),
    }


def config(tmp_path, models, **overrides) -> dict:
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": p, "lang": lang, "id": f"p{i}", "reference": p} for i, (p, lang) in enumerate(PROMPTS)],
    )
    return {
        "models": {"base": str(models["base"]), "tuned": str(models["tuned"])},
        "prompts": str(prompts),
        "output_dir": str(tmp_path / "eval"),
        "judge": {"reward_model": str(models["judge"])},
        "dtype": "fp32",
        "batch_size": 2,
        "max_new_tokens": 2,
        **overrides,
    }


def answers(out) -> list[str]:
    return [json.loads(line)["completion"] for line in (out / "answers" / "tuned.jsonl").read_text().splitlines()]


def test_rerun_after_a_changed_max_new_tokens_regenerates_the_answers(tmp_path, models, monkeypatch):
    import align.stages.evaluate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # A run killed after answering, before judging: its answers (2 new tokens) are in the partial directory.
    with monkeypatch.context() as patch:
        patch.setattr(align.stages.evaluate, "measure", killed)
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
    assert sorted(p.name for p in out.iterdir()) == [
        "answers",
        "fidelity_by_language.png",
        "metrics.json",
        "polyalign_recipe.json",
        "report.md",
        "scores_by_stage.png",
        "winrate_by_language.png",
        "winrate_by_stage.png",
    ]


def test_answers_files_as_a_model_and_as_the_baseline(tmp_path, models):
    """Competitor answers are judged without generating; an answers file can be the baseline too."""
    base = config(tmp_path, models)
    rows = [
        {"id": f"p{i}", "completion": text}
        for i, text in enumerate(
            ["La capitale est Paris.", "Zwei plus drei ist fünf.", "Rayleigh scattering.", "Cincuenta y seis."]
        )
    ]
    answers = write_jsonl(tmp_path / "competitor.jsonl", list(reversed(rows)))  # matched by id, not by order
    out = run_evaluate(
        {
            **base,
            "models": {"competitor": str(answers), "tuned": str(models["tuned"]), "again": {"answers": str(answers)}},
        }
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] == "competitor"
    written = [
        json.loads(line)["completion"] for line in (out / "answers" / "competitor.jsonl").read_text().splitlines()
    ]
    assert written == [r["completion"] for r in rows]
    # The same answers as the baseline: every comparison a tie, and the win-rate within noise.
    again = metrics["models"]["again"]["vs_baseline"]["all"]
    assert (again["win"], again["loss"], again["tie"]) == (0, 0, len(PROMPTS)) and again["within_noise"]
    assert metrics["models"]["again"]["vs_previous"]["model"] == "tuned"  # each stage against the one before
    assert metrics["language_fidelity"]["competitor"]["fr"]["line_pass_rate"] == 1.0
    chrf = metrics["models"]["competitor"]["chrf++"]
    assert chrf["all"]["n"] == len(PROMPTS) and chrf["all"]["interval"] is None  # under 5 prompts: no interval
    json.dumps(metrics)  # plain JSON types throughout


def test_without_a_judge_the_report_shows_the_measured_columns_and_differences_only(tmp_path, models):
    """No judge: no empty win-rate columns or charts; each stage's chrF++ and fidelity against the base and the stage
    before it."""
    base = config(tmp_path, models)
    del base["judge"]
    texts = {
        "a": ["Paris.", "Cinco.", "Scattering.", "Cincuenta y seis."],
        "b": ["La capitale est Paris.", "Zwei plus drei ist fünf.", "Rayleigh scattering.", "Cincuenta y seis."],
    }
    files = {
        name: str(
            write_jsonl(tmp_path / f"{name}.jsonl", [{"id": f"p{i}", "completion": t} for i, t in enumerate(rows)])
        )
        for name, rows in texts.items()
    }
    out = run_evaluate({**base, "models": {"base": files["a"], "better": files["b"], "same": files["a"]}})
    metrics = json.loads((out / "metrics.json").read_text())
    assert "vs_baseline" not in metrics["models"]["better"]
    assert metrics["models"]["better"]["vs_baseline_difference"]["chrf++"]["difference"] > 0
    assert metrics["models"]["same"]["vs_previous_difference"]["model"] == "better"
    assert metrics["models"]["same"]["vs_previous_difference"]["chrf++"]["difference"] < 0
    report = (out / "report.md").read_text()
    assert "win-rate" not in report and "| same | +0% (n<5) | +0.00 (n<5) | +0.00 (n<5) | better |" in report
    assert sorted(p.name for p in out.iterdir()) == [
        "answers",
        "fidelity_by_language.png",
        "metrics.json",
        "polyalign_recipe.json",
        "report.md",
        "scores_by_stage.png",
    ]


def test_an_answers_file_missing_a_prompt_is_one_line(tmp_path, models, capsys):
    import yaml

    from align.cli import main

    answers = write_jsonl(tmp_path / "partial.jsonl", [{"id": "p0", "completion": "Paris."}])
    path = tmp_path / "eval.yaml"
    path.write_text(
        yaml.safe_dump({**config(tmp_path, models), "models": {"a": str(answers), "b": str(models["base"])}})
    )
    assert main(["evaluate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "partial.jsonl: field 'id': no answer for prompt id 'p1'" in err
    assert not (tmp_path / "eval").exists() and not (tmp_path / ".eval.partial").exists()


@pytest.mark.parametrize(
    "reply, scale, rating",
    [
        ("[[7]]", 10, 7.0),
        ("The answer is fine. Rating: [[8]]", 10, 8.0),
        ("Rating: 4", 5, 4.0),
        ("Score: 8/10", 10, 8.0),
        ('Format "[[rating]]", e.g. "Rating: [[5]]". My rating: [[2]]', 10, 2.0),
        ("[[6]]", 5, None),
        ("I cannot rate this.", 10, None),
        ("", 10, None),
        ("[[3.5]]", 5, 3.5),
    ],
)
def test_single_answer_ratings_are_parsed(reply, scale, rating):
    from reward.grading import parse_rating

    assert parse_rating(reply, scale) == rating


def test_grades_count_unparsable_replies_and_use_references():
    from reward.grading import Grader

    seen = []

    def judge(chats):
        seen.extend(chats)
        return ["Rating: [[9]]", "no idea", "[[2]]"]

    grades = Grader(ask=judge, scale=10).grade(["q1", "q2", "q3"], ["a1", "a2", "a3"], ["ref", None, None])
    assert [g.rating for g in grades] == [9.0, None, 2.0]
    assert "Reference Answer]\nref" in seen[0][1]["content"] and "Reference" not in seen[1][1]["content"]
    assert "scale of 1 to 10" in seen[0][0]["content"]


def test_second_turns_are_answered_with_the_first_answer_in_context(tmp_path, models):
    rows = [
        {"turns": ["Quelle est la capitale de la France ?", "Et celle de l'Allemagne ?"], "lang": "fr", "id": "m0"},
        {"turns": ["Was ist zwei plus drei?", "Und mal zwei?"], "lang": "de", "id": "m1"},
        {"turns": ["Explain why the sky is blue."], "lang": "en", "id": "m2"},
    ]
    prompts = write_jsonl(tmp_path / "mt.jsonl", rows)
    out = run_evaluate({**config(tmp_path, models), "prompts": str(prompts)})
    metrics = json.loads((out / "metrics.json").read_text())
    second = metrics["second_turns"]
    assert second["tuned"]["prompts"] == 2
    counts = second["tuned"]["vs_baseline"]["all"]
    assert counts["win"] + counts["loss"] + counts["tie"] == 2
    talk = [json.loads(line) for line in (out / "answers" / "tuned.turn2.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (out / "answers" / "tuned.jsonl").read_text().splitlines()]
    assert [t["completions"][0] for t in talk] == [f["completion"] for f in first[:2]]

    # The second answer is generated with the model's own first answer in context: recompute it.
    from align.generation.generate import GenerationArgs, generate
    from align.models.loading import ModelArgs, load_model, load_tokenizer

    args = ModelArgs(model=str(models["tuned"]), dtype="fp32")
    chat = [
        {"role": "user", "content": rows[0]["turns"][0]},
        {"role": "assistant", "content": talk[0]["completions"][0]},
        {"role": "user", "content": rows[0]["turns"][1]},
    ]
    expected = generate(
        load_model(args), load_tokenizer(args), [chat], GenerationArgs(max_new_tokens=2), progress=False
    )
    assert talk[0]["completions"][1] == expected[0]
    assert "Second turns" in (out / "report.md").read_text()


def test_benchmarks_run_on_every_checkpoint_through_lm_eval(tmp_path, models):
    from test_benchmarks import write_task

    rows = [
        {"question": q, "choices": ["Paris", "Berlin", "Roma"], "label": i % 3}
        for i, q in enumerate(["La capitale est", "Die Hauptstadt ist", "The capital is", "La capital es"])
    ]
    task = write_task(tmp_path, "local_capitals", rows)
    answers = write_jsonl(tmp_path / "competitor.jsonl", [{"id": f"p{i}", "completion": "Paris."} for i in range(4)])
    out = run_evaluate(
        {
            **config(tmp_path, models),
            "benchmarks": [str(task)],
            "models": {"base": str(models["base"]), "competitor": str(answers)},
        }
    )
    scores = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert set(scores) == {"base"}  # an answers file has no model to run
    assert 0.0 <= scores["base"]["local_capitals"]["acc"] <= 1.0 and "acc_stderr" in scores["base"]["local_capitals"]
    assert "local_capitals acc" in (out / "report.md").read_text()


def test_a_benchmark_that_cannot_load_fails_before_any_answer(tmp_path, models, capsys):
    import yaml

    from align.cli import main

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({**config(tmp_path, models), "benchmarks": ["no_such_task_anywhere"]}))
    assert main(["evaluate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_task_anywhere" in err and "'benchmarks'" in err
    assert not (tmp_path / ".eval.partial").exists()


def test_chrf_has_an_interval_from_five_prompts(tmp_path):
    from align.stages.evaluate import chrf

    prompts = [{"lang": "fr", "reference": f"La réponse numéro {i} est ici.", "prompt": []} for i in range(6)]
    answers = ["La réponse numéro 0 est ici.", "Rien.", "La réponse 2 est là.", "Hallo Welt", "numéro 4", "ici."]
    scores = chrf(prompts, answers)
    low, high = scores["all"]["interval"]
    assert isinstance(low, float) and low < scores["all"]["score"] < high and high - low > 5


def test_differences_from_the_baseline_and_the_previous_stage_are_paired_and_say_when_they_are_noise():
    from align.stages.evaluate import Entry, EvaluateArgs, differences

    prompts = [
        {"lang": "fr", "id": str(i), "prompt": [], "reference": "Les plantes ont besoin de lumière et d'eau."}
        for i in range(40)
    ]
    french = "Les plantes ont besoin de lumière, d'eau et de terre pour bien pousser."
    english = "Plants need light, water and soil to grow well in the garden."
    args = EvaluateArgs(baseline="base", resamples=500)
    entries = [Entry("base", model="b"), Entry("better", model="x"), Entry("same", model="y")]
    answers = {"base": [english] * 30 + [french] * 10, "better": [french] * 40, "same": [english] * 30 + [french] * 10}
    out = differences(args, entries, prompts, answers)
    better = out["better"]["vs_baseline"]["language_fidelity"]
    assert better["difference"] > 0.5 and better["interval"][0] > 0 and not better["within_noise"]
    assert out["better"]["vs_baseline"]["chrf++"]["difference"] > 0
    assert not out["better"]["vs_baseline"]["chrf++"]["within_noise"] and "vs_previous" not in out["better"]
    same = out["same"]["vs_baseline"]["language_fidelity"]
    assert same["difference"] == 0 and same["within_noise"] and out["same"]["vs_baseline"]["chrf++"]["within_noise"]
    worse = out["same"]["vs_previous"]  # the stage before "same" is "better": the loss shows, beyond noise
    assert worse["model"] == "better" and worse["language_fidelity"]["difference"] < -0.5
    assert worse["language_fidelity"]["interval"][1] < 0 and not worse["chrf++"]["within_noise"]


def test_two_processes_share_the_answering_and_give_the_results_of_one(tmp_path, models):
    """Under accelerate launch each process answers its share of the batches; the main process measures: answers
    byte-identical, every measure equal."""
    import subprocess
    import sys

    from conftest import subprocess_env

    cfg = config(tmp_path, models, max_new_tokens=8, batch_size=1)  # 4 batches: 2 per process
    one = run_evaluate({**cfg, "output_dir": str(tmp_path / "one")})
    recipe = tmp_path / "eval.json"
    recipe.write_text(json.dumps({**cfg, "output_dir": str(tmp_path / "two")}))
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "align.cli",
        "evaluate",
        "--config",
        str(recipe),
    ]
    result = subprocess.run(launch, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    for name in ("base.jsonl", "tuned.jsonl"):
        assert (two / "answers" / name).read_bytes() == (one / "answers" / name).read_bytes()
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    for timing in ("seconds", "throughput"):  # wall clock, and each process's own share of the answering
        first.pop(timing), second.pop(timing)
    assert first == second
    assert not list(two.glob("generations*")) and not (tmp_path / ".two.partial").exists()
