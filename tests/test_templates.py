"""A base model (no chat template) as a student: `chat_template: chatml` gives its tokenizer the template and the
tokens it needs, SFT trains assistant-only labels on it, and the output loads and generates with its template."""

from __future__ import annotations

import json

import pytest
from conftest import CHATS, build_tiny_llama, write_jsonl

from align.cli import main
from align.core.errors import ConfigError, PolyalignError
from align.models.chat import IGNORE_INDEX, tokenize_chat
from align.models.loading import ModelArgs, load_model, load_tokenizer


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tokenizer):
    """A tiny Llama whose tokenizer has no chat template and no ChatML tokens (a base model's)."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("base")
    build_tiny_llama(directory, tokenizer)
    plain = AutoTokenizer.from_pretrained(directory)
    plain.chat_template = None
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    plain.save_pretrained(directory)
    return directory


def test_a_base_model_is_refused_without_a_template_and_given_one_with_it(base_model):
    with pytest.raises(PolyalignError, match="no chat template; give one with `chat_template:`"):
        load_tokenizer(ModelArgs(model=str(base_model)))
    args = ModelArgs(model=str(base_model), chat_template="gemma", dtype="fp32")
    gemma = load_tokenizer(args)
    assert gemma.eos_token == "<end_of_turn>" and "<start_of_turn>" in gemma.get_vocab()
    from align.models.loading import match_embeddings

    model = load_model(args)
    before = model.get_input_embeddings().num_embeddings
    assert len(gemma) == before + 2  # <start_of_turn>, <end_of_turn>: new to this vocabulary
    match_embeddings(model, gemma)
    assert model.get_input_embeddings().num_embeddings == len(gemma)
    assert gemma.eos_token_id in model.generation_config.eos_token_id
    with pytest.raises(ConfigError, match="'chat_template': 'nosuch' is neither a known template"):
        load_tokenizer(ModelArgs(model=str(base_model), chat_template="nosuch"))


def test_labels_cover_the_assistant_turns_and_their_end_of_turn(base_model):
    tokenizer = load_tokenizer(ModelArgs(model=str(base_model), chat_template="chatml"))
    messages = CHATS[1]["messages"]
    [chat] = tokenize_chat(tokenizer, messages, max_length=None)
    labelled = tokenizer.decode([t for t, label in zip(chat.input_ids, chat.labels) if label != IGNORE_INDEX])
    assert labelled == "Zwei plus drei ist fünf.<|im_end|>\nFünf mal zwei ist zehn.<|im_end|>\n"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end and chat.input_ids.count(im_end) == len(messages)  # one token each


@pytest.mark.slow
def test_sft_on_a_base_model_with_chatml_saves_a_model_that_generates(tmp_path, base_model, capsys):
    data = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    out = tmp_path / "sft"
    assert (
        main(
            [
                "sft",
                "--model",
                str(base_model),
                "--dataset",
                str(data),
                "--output_dir",
                str(out),
                "--chat_template",
                "chatml",
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--max_length",
                "128",
                "--save_strategy",
                "no",
                "--dtype",
                "fp32",
                "--report_to",
                "none",
            ]
        )
        == 0
    )
    trained = load_tokenizer(ModelArgs(model=str(out)))  # no chat_template given: the output carries its own
    assert "<|im_start|>" in trained.chat_template and trained.eos_token == "<|im_end|>"
    model = load_model(ModelArgs(model=str(out), dtype="fp32"))
    assert model.get_input_embeddings().num_embeddings >= len(trained)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert trained.eos_token_id in (eos if isinstance(eos, list) else [eos])
    capsys.readouterr()
    assert (
        main(["generate", "--model", str(out), "--dtype", "fp32", "--max_new_tokens", "4", "--prompt", "Bonjour !"])
        == 0
    )
    assert "Bonjour !" in capsys.readouterr().out


def test_trls_chat_template_path_is_the_same_key_and_reward_refuses_both(tmp_path):
    from align.stages.sft import parse_sft_config
    from reward.train import parse_reward_config

    job = parse_sft_config({"dataset": "d.jsonl", "output_dir": str(tmp_path / "o"), "chat_template_path": "chatml"})
    assert job.args.chat_template == "chatml"
    with pytest.raises(ConfigError, match="give chat_template or chat_template_path, not both"):
        parse_sft_config({"dataset": "d", "output_dir": "o", "chat_template": "chatml", "chat_template_path": "x"})
    with pytest.raises(ConfigError, match="'chat_template': not supported by polyalign reward"):
        parse_reward_config({"dataset": "d", "output_dir": "o", "chat_template": "chatml"})
