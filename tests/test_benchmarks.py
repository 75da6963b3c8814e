"""Benchmarks through lm-eval on local multiple-choice tasks whose right answers are known by construction.

The tiny model's own log-likelihoods pick the labels: the right choice is the one it scores highest (accuracy must be
1) or lowest (accuracy must be 0). Either result from the other task would mean the labels are wired wrongly."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, scaled_teacher, write_jsonl

from align.core.errors import ConfigError
from align.evaluation.benchmarks import BenchmarkArgs, index_tasks, metric_name, resolve_tasks, run_benchmarks

WORDS = [
    "Paris",
    "Berlin",
    "Roma",
    "Madrid",
    "Lisboa",
    "東京",
    "दिल्ली",
    "Варшава",
    "Athina",
    "Ankara",
    "Praha",
    "Wien",
    "Seoul",
    "Hanoi",
    "Jakarta",
    "Kyiv",
    "Tehran",
    "Dublin",
    "Oslo",
    "Cairo",
]
QUESTIONS = [
    "La capitale est",
    "Die Hauptstadt ist",
    "The capital is",
    "La capital es",
    "A capital é",
    "首都は",
    "राजधानी है",
    "Столица",
    "Başkent",
    "Thủ đô là",
    "Ibu kota adalah",
    "Stolica to",
]
FLORES = REPO / "recipes" / "eval" / "tasks" / "flores200"
MARGIN = 0.5  # nats between the chosen candidate and the next, so tokenisation details cannot flip the choice


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return scaled_teacher(tmp_path_factory.mktemp("bench-llama"), tokenizer, seed=1, scale=4)


@pytest.fixture(scope="module")
def loglikelihoods(model_dir):
    """log p(" " + choice | context), summed over the continuation's tokens, as lm-eval splits them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def score(context: str, choices: list[str]) -> list[float]:
        context_ids = tokenizer(context)["input_ids"]
        scores = []
        for choice in choices:
            ids = tokenizer(context + " " + choice)["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        return scores

    return score


def write_task(directory, name: str, rows: list[dict], data_file=None):
    data = data_file or write_jsonl(directory / f"{name}.jsonl", rows)
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(directory / "cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc"}],
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def labelled_rows(loglikelihoods, pick) -> list[dict]:
    """Questions with four choices each, labelled with the choice `pick` (max or min) selects by a clear margin."""
    rows = []
    for i, question in enumerate(QUESTIONS):
        choices = [WORDS[(i * 3 + k * 7) % len(WORDS)] for k in range(4)]
        scores = loglikelihoods(question, choices)
        label = scores.index(pick(scores))
        others = [s for k, s in enumerate(scores) if k != label]
        if abs(scores[label] - pick(others)) >= MARGIN:
            rows.append({"question": question, "choices": choices, "label": label})
    assert len(rows) >= 5, "too few questions with a clear margin for this seed"
    return rows


def test_labels_are_wired_to_the_scores(model_dir, loglikelihoods, tmp_path):
    top = write_task(tmp_path, "tiny_top", labelled_rows(loglikelihoods, max))
    bottom = write_task(tmp_path, "tiny_bottom", labelled_rows(loglikelihoods, min))
    results = run_benchmarks(
        str(model_dir), [str(top), str(bottom)], batch_size=4, backend="transformers", log_dir=tmp_path / "lm-eval"
    )
    assert results["tiny_top"]["acc"] == 1.0
    assert results["tiny_bottom"]["acc"] == 0.0
    assert "acc_stderr" in results["tiny_top"] and all("," not in m for m in results["tiny_top"])
    logged = list((tmp_path / "lm-eval").rglob("results_*.json"))
    assert logged and "tiny_top" in json.loads(logged[0].read_text())["results"]


def test_a_group_reports_each_subtask(model_dir, tmp_path):
    rows = [
        {"question": "The capital is", "choices": ["Paris", "Roma"], "label": 0},
        {"question": "La capitale est", "choices": ["Berlin", "Oslo"], "label": 1},
    ]
    write_task(tmp_path, "tiny_fr", rows)
    write_task(tmp_path, "tiny_it", rows)
    assert resolve_tasks([str(tmp_path)]).names == ["tiny_fr", "tiny_it"]
    group = {
        "group": "tiny_group",
        "task": ["tiny_fr", "tiny_it"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
    }
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(group))
    resolved = resolve_tasks([str(tmp_path)])
    assert resolved.names == ["tiny_group"]
    results = run_benchmarks(str(model_dir), resolved, limit=1, backend="hf")
    assert {"tiny_fr", "tiny_it", "tiny_group"} <= set(results)
    assert results["tiny_group"]["acc"] == results["tiny_fr"]["acc"]


def test_unknown_task_is_one_line_naming_it():
    with pytest.raises(ConfigError) as error:
        resolve_tasks(["xcopa_it", "no_such_benchmark"], source="eval.yaml")
    message = str(error.value)
    assert "\n" not in message and "no_such_benchmark" in message and message.startswith("eval.yaml: 'benchmarks'")


def test_missing_dataset_is_one_line_naming_the_task(tmp_path):
    path = write_task(tmp_path, "tiny_missing", [], data_file=tmp_path / "absent.jsonl")
    with pytest.raises(ConfigError) as error:
        resolve_tasks([str(path)], source="eval.yaml")
    message = str(error.value)
    assert "\n" not in message and "tiny_missing" in message and "not available offline" in message


def test_missing_task_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        resolve_tasks([str(tmp_path / "nowhere.yaml")])


def test_metric_names_drop_the_default_filter():
    assert metric_name("acc,none") == "acc"
    assert metric_name("acc_stderr,none") == "acc_stderr"
    assert metric_name("exact_match_stderr,flexible-extract") == "exact_match_flexible-extract_stderr"


def test_args_refuse_an_unknown_backend():
    with pytest.raises(ConfigError, match="backend"):
        BenchmarkArgs(tasks=["xcopa"], backend="tgi")
    assert BenchmarkArgs(tasks="xcopa").tasks == ["xcopa"]


def test_the_multilingual_recipe_names_tasks_lm_eval_knows():
    recipe = yaml.safe_load((REPO / "recipes" / "eval" / "multilingual.yaml").read_text(encoding="utf-8"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        manager, names = index_tasks(recipe["benchmarks"], source="multilingual.yaml")
    assert {"xcopa", "belebele_zho_Hans", "global_mmlu_full_uk", "mgsm_native_cot_ja", "flores200"} <= set(names)
    flores = manager.task_index["flores200"]
    assert flores.yaml_path.parent.name == "flores200"
    assert "flores200_en-fr" in manager.task_index and "flores200_vi-en" in manager.task_index


def test_flores_pairs_each_sentence_with_its_english(monkeypatch):
    import importlib.util

    import datasets

    spec = importlib.util.spec_from_file_location("flores200_utils", FLORES / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    english = datasets.DatasetDict(
        {
            "dev": datasets.Dataset.from_dict({"text": ["a", "b", "c"]}),
            "devtest": datasets.Dataset.from_dict({"text": ["x", "y"]}),
        }
    )
    monkeypatch.setattr(utils, "_english", lambda: english)
    french = utils.pair_with_english(datasets.Dataset.from_dict({"text": ["X", "Y"]}))
    assert list(zip(french["text"], french["eng"])) == [("X", "x"), ("Y", "y")]
    with pytest.raises(ValueError, match="no English split"):
        utils.pair_with_english(datasets.Dataset.from_dict({"text": ["?"]}))


def test_a_task_listed_twice_is_refused(tmp_path):
    rows = [{"question": "The capital is", "choices": ["Paris", "Roma"], "label": 0}]
    write_task(tmp_path, "tiny_fr", rows)
    (tmp_path / "group.yaml").write_text(yaml.safe_dump({"group": "tiny_group", "task": ["tiny_fr"]}))
    with pytest.raises(ConfigError, match="tiny_fr"):
        resolve_tasks([str(tmp_path / "group.yaml"), str(tmp_path / "tiny_fr.yaml")])
