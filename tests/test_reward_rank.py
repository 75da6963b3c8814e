"""The ranker: own-tokenizer encoding, explicit truncation, length-sorted batches in input order, ranking, shards,
and `polyalign score` (its output and its one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from conftest import build_tiny_llama, subprocess_env, write_jsonl

from align.cli import main
from reward.rank import (
    PairEncoder,
    RewardRanker,
    balanced_order,
    join_shards,
    length_batches,
    ranking_from_scores,
    truncation_split,
)

REPO = Path(__file__).resolve().parents[1]

PAIRS = [
    ("Quelle est la capitale de la France ?", "Paris."),
    ("What is two plus two?", "Two plus two is four, because adding two to two gives four."),
    ("Was ist die Hauptstadt von Deutschland? Bitte antworte ausführlich, in zwei oder drei Sätzen.", "Berlin."),
    ("日本の首都はどこですか？", "日本の首都は東京です。東京は本州にあります。"),
    ("¿Cuánto es siete por ocho?", "Cincuenta y seis."),
    ("भारत की राजधानी क्या है?", "भारत की राजधानी नई दिल्ली है।"),
    ("Hi", "Hello! How can I help you today? I can answer questions in many languages."),
    ("Назови три цвета.", "Красный, зелёный и синий."),
    ("Explain why the sky is blue in one sentence.", "Air scatters short blue wavelengths far more than red ones."),
    ("ما هي عاصمة مصر؟", "عاصمة مصر هي القاهرة."),
]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tokenizer) -> Path:
    """A 'third-party' reward checkpoint: a tiny Llama saved as LlamaForSequenceClassification (random head)."""
    from transformers import AutoModelForSequenceClassification

    base = build_tiny_llama(tmp_path_factory.mktemp("base"), tokenizer, seed=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ranker(reward_dir) -> RewardRanker:
    from align.models.loading import ModelArgs

    # fp32 on any device: the scores are compared exactly (CUDA defaults to bf16; the 2-process run is on CPU)
    return RewardRanker(str(reward_dir), batch_size=4, max_length=512, model_args=ModelArgs(dtype="fp32"))


def test_sorted_batches_give_unbatched_scores_in_input_order(ranker):
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    single = RewardRanker(ranker.model, ranker.tokenizer, batch_size=1, max_length=512)
    unsorted = RewardRanker(ranker.model, ranker.tokenizer, batch_size=4, max_length=512, sort_by_length=False)
    reference = single.score(prompts, completions)
    batched = ranker.score(prompts, completions)
    assert len({round(s, 6) for s in reference}) == len(PAIRS)  # distinct: a permutation would be caught
    assert torch.allclose(torch.tensor(batched), torch.tensor(reference), atol=1e-5)
    assert torch.allclose(torch.tensor(unsorted.score(prompts, completions)), torch.tensor(reference), atol=1e-5)
    # Sorting by length is what saves the padding.
    ranker.padded_tokens = unsorted.padded_tokens = 0
    ranker.score(prompts, completions), unsorted.score(prompts, completions)
    assert ranker.padded_tokens < unsorted.padded_tokens
    # Deterministic: the same call gives bit-identical scores.
    assert ranker.score(prompts, completions) == batched


def test_length_batches_are_longest_first_and_cover_every_index_once():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = length_batches(lengths, 3)
    assert batches == [[1, 3, 5], [0, 4, 6], [2]]  # ties keep input order
    assert length_batches(lengths, 3, sort=False) == [[0, 1, 2], [3, 4, 5], [6]]


def test_encoding_uses_the_chat_template_and_truncation_keeps_prompt_end_and_completion_start(tokenizer):
    prompt = "Lis ceci attentivement. " * 30 + "Question : quelle est la capitale de la France ?"
    completion = "La capitale de la France est Paris. " * 30
    full = PairEncoder(tokenizer, None)
    text, boundary = full.text([{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}])
    assert text.startswith("<|im_start|>") and text[boundary:].startswith("La capitale")  # the RM's own template
    untruncated = full.encode(prompt, completion)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert untruncated.input_ids == ids and not untruncated.truncated
    head = tokenizer(text[:boundary], add_special_tokens=False)["input_ids"]
    prompt_ids, completion_ids = ids[: len(head)], ids[len(head) :]
    assert prompt_ids == head  # the boundary falls between tokens for ChatML

    cut = PairEncoder(tokenizer, 64).encode(prompt, completion)
    assert cut.truncated and len(cut.input_ids) == 64
    assert cut.input_ids == prompt_ids[-32:] + completion_ids[:32]  # both long: half each
    short = PairEncoder(tokenizer, 128).encode("Capitale ?", completion)
    short_text, short_boundary = full.text(
        [{"role": "user", "content": "Capitale ?"}], [{"role": "assistant", "content": completion}]
    )
    short_head = tokenizer(short_text[:short_boundary], add_special_tokens=False)["input_ids"]
    assert len(short_head) < 64 and short.truncated and len(short.input_ids) == 128
    assert short.input_ids[: len(short_head)] == short_head  # a prompt under half the budget is kept whole


def test_truncation_split():
    assert truncation_split(100, 100, 64) == (32, 32)
    assert truncation_split(10, 100, 64) == (10, 54)
    assert truncation_split(100, 10, 64) == (54, 10)
    assert truncation_split(5, 5, 64) == (5, 5)


def test_truncation_is_reported(ranker):
    small = RewardRanker(ranker.model, ranker.tokenizer, batch_size=4, max_length=48)
    lengths = [
        len(e.input_ids)
        for e in RewardRanker(ranker.model, ranker.tokenizer, max_length=None).encode(
            [p for p, _ in PAIRS], [c for _, c in PAIRS]
        )
    ]
    scored = small.score_pairs([p for p, _ in PAIRS], [c for _, c in PAIRS])
    assert scored.truncated == [n > 48 for n in lengths]
    assert 0 < scored.n_truncated < len(PAIRS)


def test_ranking_picks_best_worst_and_margin():
    ranking = ranking_from_scores([0.5, 2.0, -1.0, 1.0])
    assert (ranking.best, ranking.worst, ranking.margin) == (1, 2, 3.0)
    tied = ranking_from_scores([1.0, 1.0, 1.0])
    assert (tied.best, tied.worst, tied.margin) == (0, 2, 0.0)
    with pytest.raises(ValueError):
        ranking_from_scores([])


def test_rank_many_agrees_with_score(ranker):
    prompts = ["Quelle est la capitale de la France ?", "What is two plus two?"]
    candidates = [["Paris.", "Berlin.", "La capitale est Paris."], ["Four.", "Vier."]]
    rankings = ranker.rank_many(prompts, candidates)
    for prompt, group, ranking in zip(prompts, candidates, rankings):
        scores = ranker.score([prompt] * len(group), group)
        assert ranking.scores == pytest.approx(scores, abs=1e-5)
        assert ranking.best == max(range(len(group)), key=scores.__getitem__)
        assert ranking.worst == min(range(len(group)), key=scores.__getitem__)
        assert ranking.margin == pytest.approx(max(scores) - min(scores), abs=1e-5)
    assert ranker.rank(prompts[1], candidates[1]) == rankings[1]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_from_split_between_processes_join_in_input_order(world):
    weights = [17, 3, 250, 40, 40, 9, 120, 1, 66, 5, 31]
    order = balanced_order(weights, world)
    assert sorted(order) == list(range(len(weights)))
    parts, loads = [], []
    for rank in range(world):  # accelerate's own split, for each process of a `world`-process run
        state = SimpleNamespace(num_processes=world, process_index=rank, device=torch.device("cpu"))
        with PartialState.split_between_processes(state, order) as mine:
            parts += [(i, float(weights[i]) * 10, weights[i] > 100) for i in mine]
            loads.append(sum(weights[i] for i in mine))
    joined = join_shards(parts, len(weights))
    assert joined.scores == [w * 10.0 for w in weights]
    assert joined.truncated == [w > 100 for w in weights]
    assert max(loads) - min(loads) <= max(weights)  # balanced: no process gets all the long ones
    with pytest.raises(RuntimeError, match="twice"):
        join_shards(parts + parts[:1], len(weights))
    with pytest.raises(RuntimeError, match="lost 1"):
        join_shards(parts[1:], len(weights))


# ---------------------------------------------------------------------------------------------------- CLI


def test_score_cli_writes_candidates_and_pairs_in_input_order(ranker, reward_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "q1", "prompt": "Capitale de la France ?", "lang": "fr"}])
    rows = [{"prompt": p, "completion": c, "model": f"m{i}", "id": f"x{i}"} for i, (p, c) in enumerate(PAIRS)]
    rows.append({"id": "q1", "completion": "Paris.", "model": "lookup"})  # prompt found by id in `prompts`
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "score",
                "--model",
                str(reward_dir),
                "--input",
                str(candidates),
                "--prompts",
                str(prompts),
                "--output",
                str(out),
                "--batch_size",
                "3",
            ]
        )
        == 0
    )
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in scored] == [r["model"] for r in rows]  # input order, fields kept
    expected = ranker.score([p for p, _ in PAIRS] + ["Capitale de la France ?"], [c for _, c in PAIRS] + ["Paris."])
    assert [r["score"] for r in scored] == pytest.approx(expected, abs=1e-5)
    assert "scored 11 candidates" in capsys.readouterr().out

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": PAIRS[0][0], "chosen": PAIRS[0][1], "rejected": "Berlin.", "lang": "fr"},
            {"prompt": PAIRS[1][0], "chosen": PAIRS[1][1], "rejected": "Five.", "lang": "en"},
        ],
    )
    assert main(["score", "--model", str(reward_dir), "--input", str(pairs), "--output", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    expected = ranker.score([PAIRS[0][0], PAIRS[0][0]], [PAIRS[0][1], "Berlin."])
    assert [scored[0]["chosen_score"], scored[0]["rejected_score"]] == pytest.approx(expected, abs=1e-5)
    assert "pairwise accuracy" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_score_cli_missing_field_names_file_line_and_field(reward_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "answer": "d"}])
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(reward_dir), "--input", str(bad), "--output", str(out)]) == 2
    assert _one_line_error(capsys) == f"polyalign score: error: {bad}:2: field 'completion': missing"
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
    )
    assert main(["score", "--model", str(reward_dir), "--input", str(pairs), "--output", str(out)]) == 2
    assert f"{pairs}:2: field 'rejected': missing" in _one_line_error(capsys)
    assert not out.exists()


def test_score_cli_refuses_a_causal_lm(tiny_model_dir, tmp_path, capsys):
    rows = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "completion": "b"}])
    assert (
        main(["score", "--model", str(tiny_model_dir), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")])
        == 2
    )
    err = _one_line_error(capsys)
    assert str(tiny_model_dir) in err and "not a reward model" in err and "LlamaForCausalLM" in err


@pytest.mark.slow
def test_two_processes_score_like_one(reward_dir, ranker, tmp_path):
    rows = [{"prompt": p, "completion": c, "n": i} for i, (p, c) in enumerate(PAIRS)]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    out = tmp_path / "scored.jsonl"
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
        str(REPO / "recipes" / "reward_model.py"),
        "score",
        "--model",
        str(reward_dir),
        "--input",
        str(candidates),
        "--output",
        str(out),
        "--batch_size",
        "2",
    ]
    result = subprocess.run(launch, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in scored] == list(range(len(PAIRS)))
    expected = ranker.score([p for p, _ in PAIRS], [c for _, c in PAIRS])
    assert [r["score"] for r in scored] == pytest.approx(expected, abs=1e-5)
