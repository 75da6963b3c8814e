"""Assistant-only labels for multi-turn chats, under several real chat templates (none need generation markers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trl

from align.chat import IGNORE_INDEX, TemplateError, tokenize_chat

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"

MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
           "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")

CHAT = [
    {"role": "system", "content": "Antworte kurz."},
    {"role": "user", "content": "Wie heißt die Hauptstadt von Österreich?"},
    {"role": "assistant", "content": "Die Hauptstadt von Österreich ist Wien."},
    {"role": "user", "content": "Und die von der Schweiz?"},
    {"role": "assistant", "content": "Die Bundesstadt der Schweiz ist Bern."},
]

# template name → (template text or None for the tokenizer's own ChatML, the end-of-turn text the span must include)
TEMPLATES = {
    "chatml-smollm2": (None, "<|im_end|>"),
    "llama3": ((TRL_TEMPLATES / "llama3.jinja").read_text(), "<|eot_id|>"),
    "gemma": ((TRL_TEMPLATES / "gemma.jinja").read_text(), "<end_of_turn>"),
    "phi3": ((TRL_TEMPLATES / "phi3.jinja").read_text(), "<|end|>"),
    "mistral": (MISTRAL, "<|im_end|>"),  # SmolLM2's eos_token is <|im_end|>
}


def labelled_runs(tokenizer, input_ids, labels) -> list[str]:
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_only_assistant_turns_carry_labels(tokenizer, name):
    template, end_of_turn = TEMPLATES[name]
    messages = CHAT if name not in ("gemma", "mistral") else CHAT[1:]  # these templates reject a system turn
    chat = tokenize_chat(tokenizer, messages, max_length=None, chat_template=template)
    runs = labelled_runs(tokenizer, chat.input_ids, chat.labels)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run.strip().startswith(answer)
        assert end_of_turn in run  # the model must learn to end its turn
    labelled_text = "".join(runs)
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] not in labelled_text


def test_matches_generation_markers_where_a_template_has_them(tokenizer):
    """On a template with {% generation %} markers, our spans equal the template's own, up to whitespace."""
    template = (TRL_TEMPLATES / "qwen2_5_training.jinja").read_text()
    messages = CHAT[1:]
    ours = tokenize_chat(tokenizer, messages, max_length=None, chat_template=template)
    reference = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
    assert ours.input_ids == reference["input_ids"]
    our_mask = [int(label != IGNORE_INDEX) for label in ours.labels]
    for token, mine, theirs in zip(ours.input_ids, our_mask, reference["assistant_masks"]):
        if mine != theirs:  # the template puts the newline after "assistant" inside its marker; we count it as prompt
            assert tokenizer.decode([token]).strip() == ""


def test_template_that_rewrites_history_is_refused(tokenizer):
    rewriting = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[summary]"
                 "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TemplateError, match="prefix-preserving"):
        tokenize_chat(tokenizer, CHAT, max_length=None, chat_template=rewriting)


def test_truncation_keeps_the_start_and_reports_it(tokenizer):
    chat = tokenize_chat(tokenizer, CHAT, max_length=12)
    full = tokenize_chat(tokenizer, CHAT, max_length=None)
    assert chat.truncated and not full.truncated
    assert chat.input_ids == full.input_ids[:12] and chat.labels == full.labels[:12]


def test_full_sequence_loss_when_asked(tokenizer):
    chat = tokenize_chat(tokenizer, CHAT, max_length=None, assistant_only=False)
    assert chat.labels == chat.input_ids
