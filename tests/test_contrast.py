"""`polyalign contrast`: translation-contrast preference pairs. On the embedded default the pairs are valid
preference records that `polyalign dpo` reads; on tiny models every side is checked against the model that should
have written it; a resumed run keeps what was written; bad configs are one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import scaled_teacher, write_jsonl

from align.cli import main
from align.core.config import recipe_hash, resolve_recipe
from align.core.lifecycle import HASH_MARKER
from align.data import load_records
from align.generation.generate import GenerationArgs, generate
from align.models.loading import ModelArgs, load_model, load_tokenizer
from align.stages.contrast import ContrastArgs, build_pairs, parse_contrast_config, translation_request


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """This machine's 2 cores are shared: one torch thread is several times faster than two waiting on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = [
    {"prompt": "Quelle est la capitale de la France ?", "lang": "fr", "id": "p-fr"},
    {"prompt": "What is the capital of France?", "lang": "en", "id": "p-en"},  # skipped: nothing to contrast
    {"prompt": "Wie heißt die Hauptstadt von Deutschland?", "lang": "de", "id": "p-de"},
]


def recipe(tmp_path: Path, **overrides) -> Path:
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    config = {
        "prompts": str(data),
        "output_dir": str(tmp_path / "contrast"),
        "strong": "smollm2-135m",
        "weak": "smollm2-135m",
        "translator": "smollm2-135m",
        "max_new_tokens": 4,
        "temperature": 0.0,
        "batch_size": 2,
        "check_language": False,
        "dtype": "fp32",
        **overrides,
    }
    path = tmp_path / "contrast.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_contrast_on_the_embedded_default_makes_pairs_dpo_reads(tmp_path):
    path = recipe(
        tmp_path,
        english_prompt="instruct",
        strong={"model": "smollm2-135m", "name": "strong", "system_prompt": "Answer in {language}."},
        weak={"model": "smollm2-135m", "name": "weak"},
    )
    assert main(["contrast", "--config", str(path)]) == 0
    out = tmp_path / "contrast"
    assert not (tmp_path / ".contrast.partial").exists()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "pairs.jsonl", "polyalign_recipe.json"]
    pairs = read(out / "pairs.jsonl")
    assert [p["id"] for p in pairs] == ["p-fr", "p-de"]
    for pair in pairs:
        assert pair["chosen_by"] == "strong" and pair["rejected_by"] == "weak"
        assert pair["translated_by"] == "smollm2-135m" and pair["provenance"] == "synthetic"
        assert pair["rejected_provenance"] == "machine-translated"
        assert pair["chosen"][0]["content"] and pair["rejected"][0]["content"]
        assert pair["chosen"] != pair["rejected"] and pair["weak_english"]
    records = load_records(str(out / "pairs.jsonl"), "preference")
    assert [(r["lang"], r["chosen_by"], r["rejected_by"], r["provenance"]) for r in records] == [
        ("fr", "strong", "weak", "synthetic"),
        ("de", "strong", "weak", "synthetic"),
    ]
    assert records[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]["prompt"]}]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"] == 2 and metrics["skipped_english"] == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("contrast-models")
    return {
        name: str(scaled_teacher(root / name, tokenizer, seed=seed))
        for name, seed in (("strong", 11), ("weak", 12), ("translator", 13))
    }


def answers(model_dir: str, chats: list[list[dict]], max_new_tokens: int = 6) -> list[str]:
    args = ModelArgs(model=model_dir, dtype="fp32")
    return generate(
        load_model(args),
        load_tokenizer(args),
        chats,
        GenerationArgs(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=2),
        progress=False,
    )


def test_each_side_comes_from_the_model_that_should_write_it(tmp_path, tiny):
    path = recipe(
        tmp_path,
        strong=tiny["strong"],
        weak=tiny["weak"],
        translator=tiny["translator"],
        max_new_tokens=6,
        english_prompt="translate",
    )
    assert main(["contrast", "--config", str(path)]) == 0
    pairs = read(tmp_path / "contrast" / "pairs.jsonl")
    job = parse_contrast_config(yaml.safe_load(path.read_text()))
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS if p["lang"] != "en"]
    langs = ["fr", "de"]
    assert [p["chosen"][0]["content"] for p in pairs] == answers(tiny["strong"], prompts)
    english = answers(
        tiny["translator"],
        [translation_request(job, job.translator, p[0]["content"], lang, "en") for p, lang in zip(prompts, langs)],
    )
    assert [p["prompt_english"][0]["content"] for p in pairs] == english
    weak = answers(tiny["weak"], [[{"role": "user", "content": e}] for e in english])
    assert [p["weak_english"] for p in pairs] == weak
    rejected = answers(
        tiny["translator"], [translation_request(job, job.translator, w, "en", lang) for w, lang in zip(weak, langs)]
    )
    assert [p["rejected"][0]["content"] for p in pairs] == rejected


def test_a_resumed_run_keeps_what_was_written(tmp_path, tiny):
    path = recipe(
        tmp_path, strong=tiny["strong"], weak=tiny["weak"], translator=tiny["translator"], english_prompt="instruct"
    )
    raw = yaml.safe_load(path.read_text())
    partial = tmp_path / ".contrast.partial"
    partial.mkdir()
    (partial / HASH_MARKER).write_text(
        recipe_hash(resolve_recipe(raw, ContrastArgs, str(path)))
    )  # as the stage marks it
    # A killed run had answered the first prompt with the strong model (and half-written the next line).
    (partial / "chosen.jsonl").write_text(
        json.dumps({"index": "0", "completions": ["Paris, bien sûr."]}) + '\n{"index": '
    )
    assert main(["contrast", "--config", str(path)]) == 0
    pairs = read(tmp_path / "contrast" / "pairs.jsonl")
    assert pairs[0]["chosen"][0]["content"] == "Paris, bien sûr."
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS if p["lang"] != "en"]
    assert pairs[1]["chosen"][0]["content"] == answers(tiny["strong"], prompts, max_new_tokens=4)[1]


def test_language_check_and_degenerate_pairs_are_dropped(tmp_path):
    job = parse_contrast_config(yaml.safe_load(recipe(tmp_path, check_language=True).read_text()))
    prompts = [{"prompt": [{"role": "user", "content": "q"}], "lang": "fr", "id": str(i)} for i in range(4)]
    french = "La capitale de la France est Paris, une grande ville située sur la Seine."
    translated = "La capitale française, c'est la ville de Paris, qui se trouve au bord de la Seine."
    chosen = {
        "0": french,
        "1": "The capital of France is Paris, a large city on the river Seine.",
        "2": french,
        "3": french,
    }
    rejected = {
        "0": translated,
        "1": translated,
        "2": french,
        "3": "Die Hauptstadt Frankreichs ist Paris an der Seine.",
    }
    rows, drops = build_pairs(job, prompts, chosen, {k: "English" for k in chosen}, rejected, {})
    assert [r["id"] for r in rows] == ["0"]
    assert dict(drops["fr"]) == {"chosen_wrong_language": 1, "identical": 1, "rejected_wrong_language": 1}


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        ({"strong": None}, "strong", "missing"),
        ({"weak": {"name": "w"}}, "weak.model", "missing"),
        ({"translate_template": "Translate to {lang}: {text}"}, "translate_template", "unknown placeholder {lang}"),
        ({"translate_template": "Translate into {target}."}, "translate_template", "must contain {text}"),
        ({"english_prompt": "ask"}, "english_prompt", "translate, instruct"),
        ({"strong": {"model": "smollm2-135m", "temprature": 1}}, "strong.temprature", "did you mean"),
        ({"translator": "/no/such/model"}, "translator.model", "cannot load model"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, overrides, key, message):
    assert main(["contrast", "--config", str(recipe(tmp_path, **overrides))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{key}'" in err and message in err
    assert not (tmp_path / "contrast").exists() and not (tmp_path / ".contrast.partial").exists()


def test_two_processes_share_every_phase_and_give_the_pairs_of_one(tmp_path, tiny):
    import subprocess
    import sys

    from conftest import subprocess_env

    models = {"strong": tiny["strong"], "weak": tiny["weak"], "translator": tiny["translator"]}
    one = recipe(tmp_path / "one", **models, batch_size=1, english_prompt="translate")
    assert main(["contrast", "--config", str(one)]) == 0
    two = recipe(tmp_path / "two", **models, batch_size=1, english_prompt="translate")
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
        "contrast",
        "--config",
        str(two),
    ]
    result = subprocess.run(launch, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = {name: tmp_path / name / "contrast" for name in ("one", "two")}
    assert (out["two"] / "pairs.jsonl").read_bytes() == (out["one"] / "pairs.jsonl").read_bytes()
    assert sorted(p.name for p in out["two"].iterdir()) == ["metrics.json", "pairs.jsonl", "polyalign_recipe.json"]
