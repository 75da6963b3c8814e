"""Reward training on tiny models built from configs: it learns a multilingual preference (answer in the user's
language), saves a sequence classifier the HF ecosystem loads, resumes after a kill, trains LoRA and encoders,
and refuses bad input with one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, write_jsonl
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from align.cli import main
from align.models.loading import ModelArgs
from reward.rank import PairEncoder, RewardRanker
from reward.train import run_reward, split_heldout

# The same two questions in six languages (two Latin-script ones); the chosen answer is in the question's
# language, the rejected one is the same answer in another language. Every language is chosen and rejected
# equally often, so no per-language bias solves the task: the model must match the answer to the question.
TEMPLATES = {
    "en": [
        ("What is {a} plus {b}?", "{a} plus {b} is {c}."),
        ("Name a colour you like, number {a}.", "I like the colour blue, and {a} is my number."),
    ],
    "fr": [
        ("Combien font {a} plus {b} ?", "{a} plus {b} font {c}."),
        ("Donne une couleur que tu aimes, numéro {a}.", "J'aime la couleur bleue, et {a} est mon numéro."),
    ],
    "ar": [
        ("كم يساوي {a} زائد {b}؟", "{a} زائد {b} يساوي {c}."),
        ("اذكر لونًا تحبه، رقم {a}.", "أحب اللون الأزرق، و{a} هو رقمي."),
    ],
    "ru": [
        ("Сколько будет {a} плюс {b}?", "{a} плюс {b} равно {c}."),
        ("Назови любимый цвет, номер {a}.", "Я люблю синий цвет, а {a} — мой номер."),
    ],
    "hi": [
        ("{a} और {b} का योग क्या है?", "{a} और {b} का योग {c} है।"),
        ("अपना पसंदीदा रंग बताओ, संख्या {a}।", "मुझे नीला रंग पसंद है, और {a} मेरी संख्या है।"),
    ],
    "ja": [
        ("{a}足す{b}はいくつですか？", "{a}足す{b}は{c}です。"),
        ("好きな色を教えてください、番号{a}。", "私は青が好きで、{a}が私の番号です。"),
    ],
}
LANGS = sorted(TEMPLATES)
FAST = [
    "--gradient_checkpointing",
    "false",
    "--disable_tqdm",
    "true",
    "--save_strategy",
    "no",
    "--max_length",
    "128",
    "--per_device_train_batch_size",
    "8",
    "--lr_scheduler_type",
    "constant",
    "--logging_steps",
    "20",
]


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        other = rng.choice([x for x in LANGS if x != lang])
        k, a, b = rng.randrange(2), rng.randrange(2, 99), rng.randrange(2, 99)
        slots = {"a": a, "b": b, "c": a + b}
        rows.append(
            {
                "prompt": TEMPLATES[lang][k][0].format(**slots),
                "chosen": TEMPLATES[lang][k][1].format(**slots),
                "rejected": TEMPLATES[other][k][1].format(**slots),
                "lang": lang,
                "id": f"{seed}-{i}",
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer) -> dict:
    root = tmp_path_factory.mktemp("reward")
    base = build_tiny_llama(root / "base", tokenizer)
    train = write_jsonl(root / "train.jsonl", preference_rows(240, seed=0))
    held = write_jsonl(root / "eval.jsonl", preference_rows(60, seed=1))
    out = root / "rm"
    # 120 steps at 3e-3: at 60 steps and 6e-3 the held-out accuracy swung from 0.78 to 0.95 between CPUs.
    assert (
        main(
            [
                "reward",
                "--model",
                str(base),
                "--dataset",
                str(train),
                "--eval_dataset",
                str(held),
                "--output_dir",
                str(out),
                "--learning_rate",
                "3e-3",
                "--max_steps",
                "120",
                *FAST,
            ]
        )
        == 0
    )
    return {"out": out, "eval": held, "base": base, "metrics": json.loads((out / "metrics.json").read_text())}


def test_training_raises_heldout_accuracy_well_above_the_untrained_model(trained):
    m = trained["metrics"]
    assert m["train_pairs"] == 240 and m["eval_pairs"] == 60 and m["steps"] == 120 and m["truncated"] == 0
    after, before = m["eval"], m["eval_untrained"]
    assert set(after["per_language"]) == set(before["per_language"]) == set(LANGS)
    assert after["pairs_per_language"] == {lang: 10 for lang in LANGS}
    assert after["accuracy"] >= 0.85, after
    assert after["accuracy"] - before["accuracy"] >= 0.25, (before, after)
    assert after["mean_margin"] > before["mean_margin"] + 1.0


def test_output_is_a_sequence_classifier_with_tokenizer_and_chat_template(trained, tokenizer):
    out = trained["out"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    assert not list(out.glob("checkpoint-*")) and not (out / "training_args.bin").exists()
    assert not (out.parent / ".rm.partial").exists()
    assert json.loads((out / "polyalign_recipe.json").read_text())["stage"] == "reward"


def test_score_cli_reproduces_the_reported_accuracy(trained, tmp_path, capsys):
    scored = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "score",
                "--model",
                str(trained["out"]),
                "--input",
                str(trained["eval"]),
                "--output",
                str(scored),
                "--max_length",
                "128",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    accuracy = sum(r["chosen_score"] > r["rejected_score"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(trained["metrics"]["eval"]["accuracy"], abs=1e-4)


def test_trained_ranker_prefers_the_answer_in_the_users_language(trained):
    ranker = RewardRanker(str(trained["out"]), batch_size=8, max_length=128)
    rng = random.Random(7)
    prompts, groups, right = [], [], []
    for i, lang in enumerate(LANGS * 2):
        a, b = rng.randrange(2, 99), rng.randrange(2, 99)
        others = [x for x in LANGS if x != lang][i % 3 :: 3][:2]
        langs = [lang, *others]
        rng.shuffle(langs)
        prompts.append(TEMPLATES[lang][0][0].format(a=a, b=b))
        groups.append([TEMPLATES[x][0][1].format(a=a, b=b, c=a + b) for x in langs])
        right.append(langs.index(lang))
    rankings = ranker.rank_many(prompts, groups)
    best = sum(r.best == k for r, k in zip(rankings, right))
    assert best >= 10, [(r.best, k) for r, k in zip(rankings, right)]  # of 12
    assert all(r.worst != k for r, k in zip(rankings, right))
    assert all(r.margin > 0 for r in rankings)


# ---------------------------------------------------------------------------------------------------- resume, LoRA


class StopAt(TrainerCallback):
    """Simulates a kill: raises once the given step has ended (after its checkpoint was saved)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_from_its_last_checkpoint(tokenizer, tmp_path):
    base = build_tiny_llama(tmp_path / "base", tokenizer)
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(36, seed=2))
    out = tmp_path / "rm"
    raw = {
        "model": str(base),
        "dataset": str(data),
        "output_dir": str(out),
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
        "learning_rate": 1e-3,
        "max_length": 128,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "eval_fraction": 0.2,
    }
    with pytest.raises(KeyboardInterrupt):
        run_reward(raw, callbacks=[StopAt(3)])
    assert not out.exists() and (tmp_path / ".rm.partial" / "checkpoint-2" / "trainer_state.json").exists()
    run_reward(raw)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["steps"] == 4
    assert not (tmp_path / ".rm.partial").exists()

    # The metrics of an uninterrupted run, field by field: losses and counts over the whole training; timings over
    # the steps this process ran, and saying so.
    run_reward({**raw, "output_dir": str(tmp_path / "whole")})
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert (metrics["timed_steps"], whole["timed_steps"]) == (2, 4)
    timings = {"train_runtime_s", "timed_steps", "timed_tokens", "resumed_from"}
    assert metrics.keys() == whole.keys()
    for key in whole.keys() - timings:
        if isinstance(whole[key], float):
            assert metrics[key] == pytest.approx(whole[key], abs=1e-6), key
        else:
            assert metrics[key] == whole[key], key


def test_lora_reward_model_is_merged_and_its_adapter_scores_the_same(tokenizer, tmp_path):
    base = build_tiny_llama(tmp_path / "base", tokenizer)
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(24, seed=3))
    out = tmp_path / "rm"
    assert (
        main(
            [
                "reward",
                "--model",
                str(base),
                "--dataset",
                str(data),
                "--output_dir",
                str(out),
                "--lora.target_modules",
                "[q_proj, v_proj]",
                "--max_steps",
                "3",
                "--learning_rate",
                "1e-2",
                *FAST,
            ]
        )
        == 0
    )
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert merged.config.num_labels == 1 and json.loads((out / "metrics.json").read_text())["lora"] is True
    prompts, answers = ["Combien font 2 plus 3 ?"] * 2, ["2 plus 3 font 5.", "2 plus 3 is 5."]
    fp32 = ModelArgs(dtype="fp32")  # exact comparisons on any device (CUDA defaults to bf16)
    fresh = RewardRanker(str(base), new_head=True, max_length=128, model_args=fp32).score(prompts, answers)
    from_merged = RewardRanker(str(out), max_length=128, model_args=fp32).score(prompts, answers)
    from_adapter = RewardRanker(str(out / "adapter"), max_length=128, model_args=fp32).score(prompts, answers)
    assert from_merged == pytest.approx(from_adapter, abs=1e-4)
    assert from_merged != pytest.approx(fresh, abs=1e-4)  # the head was trained and saved


# ---------------------------------------------------------------------------------------------------- encoders


def build_tiny_bert(directory: Path, rows: list[dict]) -> Path:
    """A BERT-style encoder saved like sentence-transformers' MiniLM (BertModel, WordPiece, no chat template)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    split = BertTokenizer()._tokenizer.pre_tokenizer.pre_tokenize_str
    texts = [r[key] for r in rows for key in ("prompt", "chosen", "rejected")] + ["What is 2 plus 3?"]
    words = sorted({piece for text in texts for piece, _ in split(text.lower())} - set("0123456789"))
    digits = list("0123456789") + [f"##{d}" for d in "0123456789"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *digits, *words]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def test_an_encoder_trains_and_scores_plain_text(tmp_path):
    rows = preference_rows(24, seed=4)
    encoder = build_tiny_bert(tmp_path / "bert", rows)
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "rm"
    assert (
        main(
            [
                "reward",
                "--model",
                str(encoder),
                "--dataset",
                str(data),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--learning_rate",
                "1e-3",
                *FAST,
            ]
        )
        == 0
    )
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    ranker = RewardRanker(str(out), max_length=12, model_args=ModelArgs(dtype="fp32"))
    assert not ranker.encoder.chat
    whole = PairEncoder(ranker.tokenizer, None).encode("What is 2 plus 3?", "2 plus 3 is 5.")
    text = ranker.tokenizer.decode(whole.input_ids)
    assert text == "[CLS] what is 2 plus 3? 2 plus 3 is 5. [SEP]"  # "prompt\n\ncompletion" with its own specials
    cut = ranker.encoder.encode("What is 12 plus 30 plus 4 plus 5?", "12 plus 30 plus 4 plus 5 is 51.")
    assert cut.truncated and len(cut.input_ids) == 12
    # 10 content tokens, 5 from the end of the prompt and 5 from the start of the completion; specials survive
    assert ranker.tokenizer.convert_ids_to_tokens(cut.input_ids) == [
        "[CLS]",
        "plus",
        "4",
        "plus",
        "5",
        "?",
        "1",
        "##2",
        "plus",
        "30",
        "plus",
        "[SEP]",
    ]
    scores = ranker.score(["What is 2 plus 3?"] * 2, ["2 plus 3 is 5.", "2 plus 3 font 5."])
    assert all(isinstance(s, float) for s in scores) and scores[0] != scores[1]


# ---------------------------------------------------------------------------------------------------- refusals


def test_heldout_split_keeps_each_prompt_on_one_side_and_every_language():
    rows = preference_rows(60, seed=5)
    rows += [dict(r, rejected=r["rejected"] + " !", id=r["id"] + "b") for r in rows[:12]]  # prompts with two pairs
    train, held = split_heldout(rows, 0.2, seed=0)
    assert len(train) + len(held) == len(rows)
    assert {r["lang"] for r in held} == set(LANGS)
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held}
    assert split_heldout(rows, 0.2, seed=0) == (train, held)  # seeded


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_stops_with_one_line_naming_file_line_and_field(tiny_model_dir, tmp_path, capsys):
    rows = preference_rows(4, seed=6)
    rows[2]["rejected"] = [{"role": "assistant", "content": 7}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "rm"
    assert main(["reward", "--model", str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(out)]) == 2
    assert (
        _error_line(capsys) == f"polyalign reward: error: {data}:3: field 'rejected[0].content': expected text, got int"
    )
    assert not out.exists() and not (tmp_path / ".rm.partial").exists()

    good = write_jsonl(tmp_path / "good.jsonl", preference_rows(4, seed=6))
    assert (
        main(
            [
                "reward",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(good),
                "--output_dir",
                str(out),
                "--chat_template_path",
                "x.jinja",
            ]
        )
        == 2
    )
    assert "'chat_template_path': not supported" in _error_line(capsys)
    assert (
        main(
            [
                "reward",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(good),
                "--output_dir",
                str(out),
                "--eval_fraction",
                "1.5",
            ]
        )
        == 2
    )
    assert "'eval_fraction': must be in [0, 1)" in _error_line(capsys)


def test_bad_training_values_stop_before_the_model_loads(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", preference_rows(4, seed=6))
    common = [
        "reward",
        "--model",
        str(tmp_path / "no-model"),
        "--dataset",
        str(good),
        "--output_dir",
        str(tmp_path / "rm"),
    ]
    assert main([*common, "--learning_rate", "-1"]) == 2
    assert _error_line(capsys) == "polyalign reward: error: command line: 'learning_rate': must be >= 0, got -1.0"
    assert main([*common, "--lora", "true", "--save_merged", "false"]) == 2
    assert "'save_merged': a LoRA reward model is always saved merged" in _error_line(capsys)
    assert not (tmp_path / "rm").exists() and not (tmp_path / ".rm.partial").exists()
