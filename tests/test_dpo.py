"""Offline DPO: it moves the policy toward the chosen answers, and the reference costs no memory it need not."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from align.cli import main
from align.data import load_records
from align.stages.dpo import build_dpo_trainer, parse_dpo_config

# Chosen answers are in the prompt's language, rejected ones in another (the multilingual preference of the recipe).
PAIRS = [
    ("Quelle est la capitale de la France ?", "La capitale de la France est Paris.", "The capital is Paris.", "fr"),
    ("Was ist zwei plus drei?", "Zwei plus drei ist fünf.", "Two plus three is five.", "de"),
    ("¿Cuánto es siete por ocho?", "Siete por ocho es cincuenta y seis.", "Seven times eight is 56.", "es"),
    ("日本の首都はどこですか？", "日本の首都は東京です。", "The capital of Japan is Tokyo.", "ja"),
]


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r, "lang": lang} for p, c, r, lang in PAIRS]
    )


def sequence_logp(model, tokenizer, prompt: str, answer: str) -> float:
    """log p(answer | prompt) under the chat template."""
    messages = [{"role": "user", "content": prompt}]
    start = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], return_dict=False)
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[len(start) - 1 :].sum())


def margins(model, tokenizer) -> list[float]:
    return [sequence_logp(model, tokenizer, p, c) - sequence_logp(model, tokenizer, p, r) for p, c, r, _ in PAIRS]


def test_dpo_raises_the_chosen_over_rejected_margin(tiny_model_dir, pairs_file, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dpo"
    assert (
        main(
            [
                "dpo",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(pairs_file),
                "--output_dir",
                str(out),
                "--max_steps",
                "12",
                "--learning_rate",
                "5e-3",
                "--beta",
                "0.1",
                "--per_device_train_batch_size",
                "4",
                "--logging_steps",
                "1",
                "--disable_tqdm",
                "true",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    before = margins(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    after = margins(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    assert all(a > b + 1.0 for a, b in zip(after, before)), (before, after)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["pairs_per_language"] == {"fr": 1, "de": 1, "es": 1, "ja": 1}
    assert metrics["reference"] == "frozen copy of the starting policy"
    assert not (tmp_path / ".dpo.partial").exists() and not list(out.glob("checkpoint-*"))


def _trainer(tiny_model_dir, pairs_file, tmp_path, **overrides):
    raw = {
        "model": str(tiny_model_dir),
        "dataset": str(pairs_file),
        "output_dir": str(tmp_path / "o"),
        "dtype": "fp32",
        "max_steps": 1,
        **overrides,
    }
    job = parse_dpo_config(raw)
    return build_dpo_trainer(job, load_records(job.args.dataset, "preference"))


def test_lora_reference_is_the_policy_with_adapters_disabled(tiny_model_dir, pairs_file, tmp_path):
    trainer, kind, _ = _trainer(tiny_model_dir, pairs_file, tmp_path, lora=True)
    assert trainer.ref_model is None and hasattr(trainer.model, "peft_config")
    assert kind == "policy with adapters disabled"
    # One model instance: every parameter outside the adapters belongs to the one base.
    bases = {id(m) for m in trainer.model.modules() if m.__class__.__name__ == "LlamaForCausalLM"}
    assert len(bases) == 1


def test_precomputed_reference_keeps_no_second_model(tiny_model_dir, pairs_file, tmp_path):
    trainer, kind, _ = _trainer(tiny_model_dir, pairs_file, tmp_path, precompute_ref_log_probs=True)
    assert trainer.ref_model is None and kind == "starting policy, log-probs precomputed"
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)


def test_full_fine_tuning_without_precompute_gets_a_frozen_copy(tiny_model_dir, pairs_file, tmp_path):
    trainer, kind, _ = _trainer(tiny_model_dir, pairs_file, tmp_path)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_bad_dpo_config_names_the_key(tmp_path, capsys):
    assert main(["dpo", "--dataset", "x.jsonl", "--output_dir", str(tmp_path / "o"), "--betta", "0.2"]) == 2
    assert "'betta': unknown key" in capsys.readouterr().err


def test_bad_dpo_value_names_the_key_and_where_it_was_written(tmp_path, capsys):
    assert main(["dpo", "--dataset", "x.jsonl", "--output_dir", str(tmp_path / "o"), "--beta", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "polyalign dpo: error: command line: 'beta': must be > 0, got 0.0"
    ]


def test_tool_calls_whose_arguments_differ_are_refused_before_any_model_loads(tmp_path, capsys):
    def pair(question, name, arguments):
        call = {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
        }
        return {
            "prompt": [{"role": "user", "content": question}, call, {"role": "tool", "content": "18"}],
            "chosen": [{"role": "assistant", "content": "Il fait 18 °C."}],
            "rejected": [{"role": "assistant", "content": "Je ne sais pas."}],
            "lang": "fr",
        }

    data = write_jsonl(
        tmp_path / "tools.jsonl",
        [pair("Météo à Lyon ?", "weather", {"city": "Lyon"}), pair("Quelle date ?", "date", {"zone": "CET"})],
    )
    config = tmp_path / "dpo.yaml"
    config.write_text(f"model: no/such-model\ndataset: {data}\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["dpo", "--config", str(config)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "preference training needs every tool call's arguments to have the same keys "
        "(['city'] vs ['zone']); split the data by tool, or train these calls with SFT"
    )
    assert not (tmp_path / "out").exists()
