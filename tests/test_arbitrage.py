"""Multi-teacher arbitrage end to end on tiny models: routing by a real reward model, language-restricted teachers,
the pair margin, routing counts, kill-and-resume against an uninterrupted run, and bad configs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import scaled_teacher, subprocess_env, tiny_reward_model, write_jsonl

from align.cli import main

PROMPTS = [
    ("Quelle est la capitale de la France ?", "fr"),
    ("Was ist zwei plus drei?", "de"),
    ("Explain why the sky is blue.", "en"),
    ("¿Cuánto es siete por ocho?", "es"),
    ("日本の首都はどこですか？", "ja"),
    ("भारत की राजधानी क्या है?", "hi"),
    ("Combien de jours compte une année bissextile ?", "fr"),
    ("Wie heißt die Hauptstadt von Österreich?", "de"),
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("pool")
    return {
        "a": scaled_teacher(root / "teacher-a", tokenizer, seed=1),
        "b": scaled_teacher(root / "teacher-b", tokenizer, seed=2),
        "rm": tiny_reward_model(root / "rm", tokenizer),
    }


def recipe(tmp_path: Path, pool: dict, prompts: list[tuple[str, str]] = PROMPTS, **overrides) -> Path:
    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": p, "lang": lang, "id": f"p{i}"} for i, (p, lang) in enumerate(prompts)]
    )
    config = {
        "prompts": str(data),
        "output_dir": str(tmp_path / "arbitrage"),
        "seed": 0,
        "batch_size": 3,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "dtype": "fp32",
        "min_margin": 0.0,
        "teachers": [
            {"name": "a", "model": str(pool["a"]), "samples": 2},
            {"name": "b", "model": str(pool["b"]), "languages": ["French", "de"]},
        ],
        "ranker": {"reward_model": str(pool["rm"]), "batch_size": 4},
        **overrides,
    }
    path = tmp_path / "arbitrage.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_teacher_answers_its_languages_and_the_ranker_picks(tmp_path, pool, tokenizer):
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool))]) == 0
    out = tmp_path / "arbitrage"
    assert not (tmp_path / ".arbitrage.partial").exists()
    candidates = read(out / "candidates.jsonl")
    by_teacher = Counter(c["model"] for c in candidates)
    assert by_teacher == {"a": 2 * len(PROMPTS), "b": 4}  # b serves French and German only
    assert {c["lang"] for c in candidates if c["model"] == "b"} == {"fr", "de"}

    # Scores are the reward model's own, recomputed here independently.
    from align.models.loading import ModelArgs
    from reward.rank import RewardRanker

    ranker = RewardRanker(str(pool["rm"]), batch_size=1, model_args=ModelArgs(dtype="fp32"))
    expected = ranker.score([c["prompt"] for c in candidates], [c["completion"] for c in candidates])
    assert [c["score"] for c in candidates] == pytest.approx(expected, abs=1e-5)

    sft = read(out / "sft.jsonl")
    assert [r["id"] for r in sft] == [f"p{i}" for i in range(len(PROMPTS))]  # input order
    for record in sft:
        group = [c for c in candidates if c["id"] == record["id"]]
        best = max(group, key=lambda c: c["score"])
        assert record["messages"][-1] == {"role": "assistant", "content": best["completion"]}
        assert record["teacher"] == best["model"] and record["lang"] == best["lang"]

    routing = json.loads((out / "routing.json").read_text())
    for lang in {lang for _, lang in PROMPTS}:
        wins = Counter(r["teacher"] for r in sft if r["lang"] == lang)
        assert {t: routing[lang]["teachers"][t]["wins"] for t in ("a", "b")} == {t: wins[t] for t in ("a", "b")}
        assert routing[lang]["prompts"] == sum(wins.values())
    assert routing["all"]["teachers"]["a"]["wins"] + routing["all"]["teachers"]["b"]["wins"] == len(PROMPTS)
    assert (out / "routing.png").stat().st_size > 0


def test_pairs_respect_the_margin(tmp_path, pool):
    first = tmp_path / "first"
    first.mkdir()
    assert main(["arbitrage", "--config", str(recipe(first, pool))]) == 0
    candidates = read(first / "arbitrage" / "candidates.jsonl")
    margins = {}
    for c in candidates:
        margins.setdefault(c["id"], []).append(c["score"])
    margins = {k: max(v) - min(v) for k, v in margins.items()}
    threshold = sorted(margins.values())[len(margins) // 2]  # about half the prompts clear it

    second = tmp_path / "second"
    second.mkdir()
    assert main(["arbitrage", "--config", str(recipe(second, pool, min_margin=threshold))]) == 0
    pairs = read(second / "arbitrage" / "pairs.jsonl")
    assert {p["id"] for p in pairs} == {k for k, m in margins.items() if m >= threshold}
    for pair in pairs:
        assert pair["chosen_score"] - pair["rejected_score"] >= threshold
        assert pair["chosen"] != pair["rejected"] and pair["chosen_by"] in ("a", "b")
    metrics = json.loads((second / "arbitrage" / "metrics.json").read_text())
    assert metrics["pairs"] + metrics["pairs_below_margin"] == len(PROMPTS)


@pytest.mark.slow
def test_killed_run_resumes_with_nothing_lost_or_doubled(tmp_path, pool):
    many = [(f"{text} ({n})", lang) for n in range(4) for text, lang in PROMPTS]  # 32 prompts
    runs = {}
    for name in ("whole", "cut"):
        (tmp_path / name).mkdir()
        runs[name] = [
            sys.executable,
            "-m",
            "align.cli",
            "arbitrage",
            "--config",
            str(recipe(tmp_path / name, pool, prompts=many, batch_size=2, max_new_tokens=16)),
        ]
    whole = subprocess.run(runs["whole"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    partial = tmp_path / "cut" / ".arbitrage.partial"
    process = subprocess.Popen(runs["cut"], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    log = partial / "generations.0.rank0.jsonl"
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "cut" / "arbitrage").exists()
    written = len(log.read_text().splitlines())
    assert 5 <= written < len(many)  # killed midway through the first teacher

    resumed = subprocess.run(runs["cut"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    for name in ("candidates.jsonl", "sft.jsonl", "pairs.jsonl", "routing.json"):
        assert (tmp_path / "cut" / "arbitrage" / name).read_text() == (
            tmp_path / "whole" / "arbitrage" / name
        ).read_text()
    assert len(read(tmp_path / "cut" / "arbitrage" / "sft.jsonl")) == len(many)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teachers": []}, "'teachers': the pool is empty"),
        ({"teachers": [{"name": "x", "model": "/nonexistent/teacher"}]}, "'teachers[0].model': cannot load model"),
        ({"teachers": [{"name": "x"}]}, "'teachers[0].model': missing"),
        ({"ranker": {}}, "'ranker': give exactly one of ranker.reward_model"),
        (
            {"teachers": [{"name": "x", "model": "m", "languages": ["Klingon"]}]},
            "'teachers[0].languages': unknown language",
        ),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, pool, capsys, change, message):
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool, **change))]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "arbitrage").exists() and not (tmp_path / ".arbitrage.partial").exists()


def test_no_prompts_is_an_error(tmp_path, pool, capsys):
    config = recipe(tmp_path, pool)
    (tmp_path / "prompts.jsonl").write_text("")
    assert main(["arbitrage", "--config", str(config)]) == 2
    assert "prompts.jsonl: empty file" in capsys.readouterr().err
    assert not (tmp_path / "arbitrage").exists() and not (tmp_path / ".arbitrage.partial").exists()


def test_no_pair_of_equal_scores_or_identical_texts_at_zero_margin(tmp_path, pool):
    """Two teachers that are the same greedy model answer alike: at min_margin 0 no pair may have chosen == rejected
    (DPO would learn nothing from it), and the metrics say why each prompt made no pair."""
    same = [{"name": "a", "model": str(pool["a"])}, {"name": "a-again", "model": str(pool["a"])}]
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool, teachers=same, temperature=0.0))]) == 0
    out = tmp_path / "arbitrage"
    candidates = read(out / "candidates.jsonl")
    by_id = {}
    for c in candidates:
        by_id.setdefault(c["id"], []).append(c)
    assert all(len({c["completion"] for c in group}) == 1 for group in by_id.values())  # the control: same texts
    assert read(out / "pairs.jsonl") == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"] == 0 and metrics["pairs_below_margin"] == len(PROMPTS)
    assert sum(metrics["pairs_dropped"].get(k, 0) for k in ("tie", "identical")) == len(PROMPTS)
    assert len(read(out / "sft.jsonl")) == len(PROMPTS)  # the SFT records still take the best answer


def test_a_dataset_teacher_is_routed_like_a_model(tmp_path, pool):
    """A file of existing answers is a teacher: it answers the prompts it has (by id), the model answers the rest
    alone, and the ranker routes between both kinds per language."""
    answers = write_jsonl(
        tmp_path / "human.jsonl",
        [
            {"id": "p0", "completion": "La capitale de la France est Paris."},
            {"id": "p1", "completion": "Zwei plus drei ist fünf."},
            {"id": "p6", "completion": "Une année bissextile compte 366 jours."},
        ],
    )
    teachers = [{"name": "human", "completions": str(answers)}, {"name": "a", "model": str(pool["a"])}]
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool, teachers=teachers))]) == 0
    out = tmp_path / "arbitrage"
    candidates = read(out / "candidates.jsonl")
    human = {c["id"]: c["completion"] for c in candidates if c["model"] == "human"}
    assert human == {
        "p0": "La capitale de la France est Paris.",
        "p1": "Zwei plus drei ist fünf.",
        "p6": "Une année bissextile compte 366 jours.",
    }
    assert {c["id"] for c in candidates if c["model"] == "a"} == {f"p{i}" for i in range(len(PROMPTS))}
    sft = {r["id"]: r for r in read(out / "sft.jsonl")}
    assert all(sft[f"p{i}"]["teacher"] == "a" for i in (2, 3, 4, 5, 7))  # the file does not cover these
    routing = json.loads((out / "routing.json").read_text())
    assert routing["ja"]["teachers"]["human"]["candidates"] == 0
    assert routing["fr"]["teachers"]["human"]["candidates"] == 2
    assert sum(routing["all"]["teachers"][t]["wins"] for t in ("human", "a")) == len(PROMPTS)


@pytest.mark.parametrize(
    "teacher, message",
    [
        ({"name": "x", "completions": "/no/such/file.jsonl"}, "'teachers[0].completions': no such file"),
        ({"name": "x", "model": "m", "completions": "f.jsonl"}, "give exactly one of model, api"),
    ],
)
def test_bad_dataset_teachers_are_one_line(tmp_path, pool, capsys, teacher, message):
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool, teachers=[teacher]))]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_teacher_that_repeats_the_question_is_never_picked_and_echo_pairs_reject_it(tmp_path, pool):
    """Whatever the ranker's scores, the pair rule keeps echoes out of the SFT data; `echo_pairs` pairs every pick
    with the prompt itself."""
    copies = write_jsonl(
        tmp_path / "copy.jsonl", [{"id": f"p{i}", "completion": f"{p} {p}"} for i, (p, _) in enumerate(PROMPTS)]
    )
    teachers = [{"name": "copy", "completions": str(copies)}, {"name": "a", "model": str(pool["a"])}]
    assert main(["arbitrage", "--config", str(recipe(tmp_path, pool, teachers=teachers, echo_pairs=True))]) == 0
    out = tmp_path / "arbitrage"
    assert {r["teacher"] for r in read(out / "sft.jsonl")} == {"a"}
    pairs = read(out / "pairs.jsonl")
    echo = [p for p in pairs if p["rejected_by"] == "echo"]
    assert len(echo) == len(PROMPTS) and all(p["rejected"][0]["content"] == p["prompt"][-1]["content"] for p in echo)
    assert sum(p["rejected_by"] == "copy" for p in pairs) == len(PROMPTS)  # the rule decides these at any margin
    assert all(p["chosen_by"] == "a" for p in pairs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["echo_pairs"] == len(PROMPTS) and metrics["pair_statistics"]["chosen_echo_share"] == 0.0
    assert metrics["sft_echo_share"] == 0.0 and metrics["candidate_echo_share"] == 0.5
