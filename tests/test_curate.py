"""`polyalign curate` end to end on crafted records whose fate is known: what each step keeps and drops and why,
the report and chart, counts that add up, streaming in chunks, 1 vs 2 processes, and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from align.cli import main

LONG = (
    "The old lighthouse on the northern cliff was built in 1872 by a family of fishermen who wanted to protect "
    "their sons from the storms that wrecked so many boats every winter. Its lamp burned whale oil at first, then "
    "kerosene, and finally electricity, and the keepers wrote every passing ship into a thick leather logbook."
)
NEAR = LONG.replace("northern cliff", "northern hill").replace("thick leather", "heavy leather")


def chat(user: str, assistant: str, lang: str, rid: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "lang": lang,
        "id": rid,
        **extra,
    }


RECORDS = [
    chat("What is the capital of France?", "The capital of France is Paris, a city on the Seine.", "en", "en-capital"),
    # Same text once case, punctuation and spacing are normalised.
    chat(
        "what is the  capital of FRANCE",
        "The capital of France is Paris -- a city on the Seine!",
        "en",
        "en-capital-dup",
    ),
    chat("Tell me about the lighthouse.", LONG, "en", "en-lighthouse"),
    chat("Tell me about the lighthouse.", NEAR, "en", "en-lighthouse-near"),  # two words changed
    chat(
        "Quelle est la meilleure saison pour visiter la Bretagne ?",  # declared French, answered in German
        "Die beste Reisezeit für die Bretagne ist der Spätsommer, wenn das Wasser warm ist und die Strände leer sind.",
        "fr",
        "fr-german",
    ),
    chat(
        "Quelle est la meilleure saison pour visiter la Bretagne ?",
        "<p>La meilleure saison est la fin de l&#39;été, quand la mer est <b>chaude</b> et les plages calmes.</p>",
        "fr",
        "fr-html",
    ),
    chat(
        "Où puis-je lire la documentation de Python ?",
        "Lisez la documentation officielle (https://docs.python.org/3/) 😀 : elle est très complète et bien écrite.",
        "fr",
        "fr-url-emoji",
    ),
    chat(
        "Wie viel ist zwei plus zwei?",
        "Zwei plus zwei ist vier.\nUser: Und drei plus drei?\nAssistant: Drei plus drei ist sechs.",
        "de",
        "de-merged",
    ),
    chat(
        "Nenne die Schritte, um Tee zuzubereiten.",
        "So bereitest du Tee zu:\n1. Wasser kochen.\n2. Teebeutel in die Tasse legen.\n2. Wasser eingießen.\n"
        "4. Drei Minuten ziehen lassen.",
        "de",
        "de-numbering",
    ),
    chat(
        "¿Cuál es el río más largo de España?",
        "El río más largo de España es el Tajo, que desemboca en Lisboa.",
        "es",
        "es-river",
        source="mt-corpus",
    ),
    chat(
        "¿Cuál es la capital de Perú?",
        "La capital de Perú es Lima, fundada en 1535 junto al río Rímac.",
        "es",
        "es-lima",
        provenance="synthetic",
    ),
]
STEPS = [
    "clean",
    "exact_dedup",
    "minhash_dedup",
    "language_filter",
    {"provenance": {"default": "native", "sources": {"mt-corpus": "machine-translated"}}},
]


def recipe(tmp_path: Path, records=RECORDS, **overrides) -> Path:
    data = write_jsonl(tmp_path / "data.jsonl", records)
    config = {"dataset": str(data), "output_dir": str(tmp_path / "curated"), "steps": STEPS, **overrides}
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate")
    assert main(["curate", "--config", str(recipe(tmp))]) == 0
    return tmp / "curated"


def test_each_step_keeps_and_drops_what_it_should(curated):
    kept = {r["id"]: r for r in read(curated / "curated.jsonl")}
    dropped = {r["id"]: r for r in read(curated / "dropped.jsonl")}
    assert set(kept) == {
        "en-capital",
        "en-lighthouse",
        "fr-html",
        "fr-url-emoji",
        "de-merged",
        "de-numbering",
        "es-river",
        "es-lima",
    }
    assert {i: (r["dropped_by"], r["drop_reason"]) for i, r in dropped.items()} == {
        "en-capital-dup": ("exact_dedup", "exact_duplicate"),
        "en-lighthouse-near": ("minhash_dedup", "near_duplicate"),
        "fr-german": ("language_filter", "language_mismatch"),
    }
    assert dropped["en-capital-dup"]["drop_detail"] == "duplicate of en-capital"
    assert dropped["en-lighthouse-near"]["drop_detail"].startswith("near-duplicate of en-lighthouse")
    assert dropped["fr-german"]["drop_detail"].startswith("declared fr, detected de")

    answer = {i: r["messages"][-1]["content"] for i, r in kept.items()}
    assert answer["fr-html"] == "La meilleure saison est la fin de l'été, quand la mer est chaude et les plages calmes."
    assert answer["fr-url-emoji"] == "Lisez la documentation officielle : elle est très complète et bien écrite."
    assert answer["de-numbering"].endswith(
        "1. Wasser kochen.\n2. Teebeutel in die Tasse legen.\n3. Wasser eingießen.\n4. Drei Minuten ziehen lassen."
    )
    assert kept["de-merged"]["messages"] == [
        {"role": "user", "content": "Wie viel ist zwei plus zwei?"},
        {"role": "assistant", "content": "Zwei plus zwei ist vier."},
        {"role": "user", "content": "Und drei plus drei?"},
        {"role": "assistant", "content": "Drei plus drei ist sechs."},
    ]
    # Language detection is recorded; provenance comes from the source, the data, or the default.
    assert all(r["detected_lang"] == r["lang"] and 0 < r["lang_confidence"] <= 1 for r in kept.values())
    assert kept["es-river"]["provenance"] == "machine-translated"
    assert kept["es-lima"]["provenance"] == "synthetic"
    assert kept["en-capital"]["provenance"] == "native"
    # Unchanged records pass through unchanged (apart from the fields the steps add).
    original = next(r for r in RECORDS if r["id"] == "en-lighthouse")
    assert kept["en-lighthouse"]["messages"] == original["messages"]


def test_report_and_counts_add_up(curated):
    metrics = json.loads((curated / "metrics.json").read_text())
    steps = metrics["steps"]
    assert [s["step"] for s in steps] == ["clean", "exact_dedup", "minhash_dedup", "language_filter", "provenance"]
    assert steps[0]["in"] == metrics["input"] == len(RECORDS)
    for before, after in zip(steps, steps[1:]):
        assert after["in"] == before["kept"]
    for step in steps:
        assert step["in"] == step["kept"] + step["dropped"] == step["kept"] + sum(step["reasons"].values())
    assert steps[-1]["kept"] == metrics["curated"] == len(read(curated / "curated.jsonl"))
    assert metrics["dropped"] == len(read(curated / "dropped.jsonl")) == metrics["input"] - metrics["curated"]
    assert steps[0]["changed"] == {"html": 1, "urls": 1, "emoji": 1, "merged_dialogues": 1, "list_numbering": 1}
    assert steps[-1]["changed"] == {"provenance": 7}  # es-lima already had one
    assert metrics["languages"]["fr"] == {"input": 3, "curated": 2, "mixed": 0}

    report = (curated / "report.md").read_text()
    assert "| exact_dedup | 11 | 10 | 1 | exact_duplicate 1 |" in report
    assert "| language_filter | 9 | 8 | 1 | language_mismatch 1 |" in report
    assert "![records kept and dropped by each step](curation.png)" in report
    png = (curated / "curation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(curated.parent.glob(".curated*"))


def test_two_processes_and_small_chunks_give_the_same_result(curated, tmp_path):
    # num_proc 2 runs the per-record steps through datasets.map; chunks of 3 make dedup work across chunks.
    assert main(["curate", "--config", str(recipe(tmp_path)), "--num_proc", "2", "--chunk_size", "3"]) == 0
    for name in ("curated.jsonl", "dropped.jsonl"):
        assert (tmp_path / "curated" / name).read_text() == (curated / name).read_text()


def test_switches_and_repeated_steps(tmp_path):
    steps = [
        {"clean": {"html": False, "merged_dialogues": "drop"}},
        {"exact_dedup": False},
        {"exact_dedup": {"on": "prompt"}},
    ]
    assert main(["curate", "--config", str(recipe(tmp_path, steps=steps))]) == 0
    out = tmp_path / "curated"
    kept = {r["id"]: r for r in read(out / "curated.jsonl")}
    dropped = {r["id"]: r for r in read(out / "dropped.jsonl")}
    assert "<b>chaude</b>" in dropped["fr-html"]["messages"][-1]["content"]  # html cleaner off
    assert "😀" not in kept["fr-url-emoji"]["messages"][-1]["content"]  # the others on
    assert dropped["de-merged"]["drop_reason"] == "merged_dialogue"
    # Prompt-level dedup: the second Brittany question and the second lighthouse prompt go.
    assert {i for i, r in dropped.items() if r["dropped_by"] == "exact_dedup#2"} == {
        "en-capital-dup",
        "en-lighthouse-near",
        "fr-html",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["disabled_steps"] == ["exact_dedup"]
    assert "Steps turned off: exact_dedup." in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "steps, key, message",
    [
        (["clean", "exact_dedupe"], "steps[1]", "unknown step 'exact_dedupe' (did you mean 'exact_dedup'?)"),
        ([{"minhash_dedup": {"treshold": 0.5}}], "steps[0].minhash_dedup.treshold", "did you mean"),
        ([{"minhash_dedup": {"threshold": 1.5}}], "steps[0].minhash_dedup.threshold", "between 0 and 1"),
        ([{"clean": {"merged_dialogues": "merge"}}], "steps[0].clean.merged_dialogues", "split, drop, keep"),
        ([{"provenance": {"sources": {"x": "human"}}}], "steps[0].provenance.sources.x", "native"),
        ([{"mix": {"temperature": 2}}, "clean"], "steps[0].mix", "mix must be the last step"),
        ([{"mix": {"multipliers": {"klingon": 2}}}], "steps[0].mix.multipliers.klingon", "unknown language"),
        ([{"mix": {"temperature": 0}}], "steps[0].mix.temperature", "must be a number > 0"),
        ([{"language_filter": {"on": "answer"}}], "steps[0].language_filter.on", "conversation, prompt, response"),
        ([], "steps", "non-empty list"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, steps, key, message):
    assert main(["curate", "--config", str(recipe(tmp_path, steps=steps))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"'{key}'" in err and message in err
    assert not (tmp_path / "curated").exists()
    assert not list(tmp_path.glob(".curated*"))


def test_bad_input_or_existing_output_leaves_nothing(tmp_path, capsys):
    bad = [*RECORDS[:5], {"messages": [{"role": "bot", "content": "hi"}], "lang": "en"}]
    assert main(["curate", "--config", str(recipe(tmp_path, records=bad)), "--chunk_size", "2"]) == 2
    err = capsys.readouterr().err
    assert "data.jsonl:6: field 'messages[0].role'" in err
    assert not (tmp_path / "curated").exists() and not list(tmp_path.glob(".curated*"))

    config = recipe(tmp_path)
    assert main(["curate", "--config", str(config)]) == 0
    before = (tmp_path / "curated" / "curated.jsonl").read_text()
    assert main(["curate", "--config", str(config)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "curated" / "curated.jsonl").read_text() == before
    assert main(["curate", "--config", str(config), "--overwrite", "--steps", "[exact_dedup]"]) == 0
    assert len(read(tmp_path / "curated" / "curated.jsonl")) == len(RECORDS) - 1


def test_provenance_reaches_sft_metrics(curated, tokenizer):
    from align.data import load_records
    from align.stages.sft import tokenize_records

    records = load_records(str(curated / "curated.jsonl"), "sft")
    assert {r["id"]: r["provenance"] for r in records}["es-river"] == "machine-translated"
    _, stats = tokenize_records(records, tokenizer, max_length=256)
    assert stats["examples_per_provenance"] == {"native": 6, "machine-translated": 1, "synthetic": 1}


def test_iter_records_streams_what_load_records_returns(tmp_path):
    from align.core.errors import InputError
    from align.data import iter_records, load_records

    a = write_jsonl(tmp_path / "a.jsonl", RECORDS[:4])
    b = write_jsonl(tmp_path / "b.jsonl", RECORDS[4:])
    spec = [{"path": str(a), "weight": 1.5}, str(b)]
    assert list(iter_records(spec, "sft", seed=3)) == load_records(spec, "sft", seed=3)
    # Row by row: the records before a bad row arrive before the error does.
    bad = write_jsonl(tmp_path / "bad.jsonl", [*RECORDS[:3], {"messages": "oops", "lang": "en"}])
    stream = iter_records(str(bad), "sft")
    assert [next(stream)["id"] for _ in range(3)] == ["en-capital", "en-capital-dup", "en-lighthouse"]
    with pytest.raises(InputError, match="bad.jsonl:4"):
        next(stream)


def test_a_killed_run_leaves_no_output_and_the_next_run_clears_its_partial(tmp_path, capsys):
    import os
    import socket

    config = recipe(tmp_path)
    # What a run killed halfway leaves: a partial with a half-written file, owned by a process that is gone.
    partial = tmp_path / ".curated.partial"
    partial.mkdir()
    (partial / "curated.jsonl").write_text('{"id": "half-writ', encoding="utf-8")
    (partial / "polyalign_owner").write_text(f"{socket.gethostname()}:999999999")
    assert not (tmp_path / "curated").exists()
    assert main(["curate", "--config", str(config)]) == 0
    assert len(read(tmp_path / "curated" / "curated.jsonl")) == 8
    assert sorted(p.name for p in (tmp_path / "curated").iterdir()) == [
        "curated.jsonl",
        "curation.png",
        "dropped.jsonl",
        "metrics.json",
        "polyalign_recipe.json",
        "report.md",
    ]
    assert not partial.exists()

    # A partial that a live process is building is refused, and left to it.
    partial.mkdir()
    (partial / "polyalign_owner").write_text(f"{socket.gethostname()}:{os.getppid()}")
    assert main(["curate", "--config", str(config), "--overwrite"]) == 2
    assert "another run is building" in capsys.readouterr().err
    assert partial.exists() and len(read(tmp_path / "curated" / "curated.jsonl")) == 8


def test_a_bad_dataset_entry_names_the_recipe_file(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    config = recipe(tmp_path, dataset=[{"path": str(data), "wieght": 2}])
    assert main(["curate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{config}: 'dataset[0].wieght': unknown key" in err
    assert not (tmp_path / "curated").exists() and not list(tmp_path.glob(".curated*"))
