"""Assistant-only labels for multi-turn chats, under several real chat templates (none need generation markers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trl

from align.models.chat import IGNORE_INDEX, TemplateError, tokenize_chat

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

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
    [chat] = tokenize_chat(tokenizer, messages, max_length=None, chat_template=template)
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
    [ours] = tokenize_chat(tokenizer, messages, max_length=None, chat_template=template)
    reference = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ours.input_ids == reference["input_ids"]
    our_mask = [int(label != IGNORE_INDEX) for label in ours.labels]
    for token, mine, theirs in zip(ours.input_ids, our_mask, reference["assistant_masks"]):
        if mine != theirs:  # the template puts the newline after "assistant" inside its marker; we count it as prompt
            assert tokenizer.decode([token]).strip() == ""


def test_truncation_keeps_the_start_and_reports_it(tokenizer):
    [chat] = tokenize_chat(tokenizer, CHAT, max_length=12)
    [full] = tokenize_chat(tokenizer, CHAT, max_length=None)
    assert chat.truncated and not full.truncated
    assert chat.input_ids == full.input_ids[:12] and chat.labels == full.labels[:12]


def test_full_sequence_loss_when_asked(tokenizer):
    [chat] = tokenize_chat(tokenizer, CHAT, max_length=None, assistant_only=False)
    assert chat.labels == chat.input_ids


# Templates written here to reproduce what the templates of current model families do (none copied from a model).
OPEN = "{% for m in messages %}"
CLOSE = "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
TURN = "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
# Reasoning shown only on the turns after the last user message, as Qwen3's template does.
STRIPS_REASONING = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}"
    + OPEN
    + "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% if loop.index0 > ns.last %}<think>\n"
    "{{ m.get('reasoning_content', '') }}\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% else %}" + TURN + "{% endif %}" + CLOSE
)
# The generation prompt opens a block the rendered turns do not have, and the final turn closes differently
# (DeepSeek-R1's "<think>\n" prompt; templates that end the conversation with EOS).
MARKS_THE_END = (
    OPEN
    + TURN.replace(
        "<|im_end|>", "{% if loop.last and m['role'] == 'assistant' %}<|endoftext|>{% else %}<|im_end|>{% endif %}"
    )
    + "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}" + OPEN + TURN + CLOSE
)
REFUSES_SYSTEM = (
    OPEN + "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + TURN + CLOSE
)
WITH_TOOLS = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}" + OPEN + "{% if m.get('tool_calls') %}<|im_start|>assistant\n{% for c in m['tool_calls'] %}"
    "<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% else %}"
    + TURN
    + "{% endif %}"
    + CLOSE
)
# Reasoning shown only after the last user turn, and tool calls: a call with no text is still a turn to label whole.
REASONS_WITH_TOOLS = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}"
    + OPEN
    + "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% if loop.index0 > ns.last %}<think>\n"
    "{{ m.get('reasoning_content', '') }}\n</think>\n\n{% endif %}{{ m['content'] }}{% for c in m.get('tool_calls') or [] %}"
    "<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}" + TURN + "{% endif %}" + CLOSE
)
ITERATES_TOOLS = "{% for t in tools %}{{ t }}{% endfor %}" + OPEN + TURN + CLOSE

REASONING_CHAT = [
    {"role": "user", "content": "Combien font deux et deux ?"},
    {"role": "assistant", "content": "Quatre.", "reasoning_content": "2 + 2 = 4"},
    {"role": "user", "content": "Et trois fois trois ?"},
    {"role": "assistant", "content": "Neuf.", "reasoning_content": "3 × 3 = 9"},
]
TOOL_CHAT = [
    {"role": "user", "content": "Quel temps fait-il à Lyon ?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Lyon"}}}],
    },
    {"role": "tool", "name": "weather", "content": "18 °C, ensoleillé"},
    {"role": "assistant", "content": "Il fait 18 °C et il y a du soleil à Lyon."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def labelled(tokenizer, chats) -> list[str]:
    """The labelled text of each training example."""
    return ["".join(labelled_runs(tokenizer, c.input_ids, c.labels)) for c in chats]


def test_reasoning_stripped_from_earlier_turns_gives_each_turn_its_own_example(tokenizer):
    chats = tokenize_chat(tokenizer, REASONING_CHAT, max_length=None, chat_template=STRIPS_REASONING)
    assert labelled(tokenizer, chats) == [
        "<think>\n2 + 2 = 4\n</think>\n\nQuatre.<|im_end|>\n",
        "<think>\n3 × 3 = 9\n</think>\n\nNeuf.<|im_end|>\n",
    ]
    first, whole = (tokenizer.decode(c.input_ids) for c in chats)
    assert first.endswith(
        "Combien font deux et deux ?<|im_end|>\n<|im_start|>assistant\n<think>\n2 + 2 = 4\n"
        "</think>\n\nQuatre.<|im_end|>\n"
    )
    assert "2 + 2 = 4" not in whole  # the later turn's example shows the earlier one as the template does in context


def test_a_prefix_preserving_template_still_gives_one_example(tokenizer):
    chats = tokenize_chat(tokenizer, REASONING_CHAT, max_length=None)  # SmolLM2's ChatML ignores reasoning_content
    assert labelled(tokenizer, chats) == ["Quatre.<|im_end|>\nNeuf.<|im_end|>\n"]


def test_a_final_turn_marked_differently_is_labelled_in_its_own_rendering(tokenizer):
    chats = tokenize_chat(tokenizer, CHAT, max_length=None, chat_template=MARKS_THE_END)
    assert labelled(tokenizer, chats) == [
        "Die Hauptstadt von Österreich ist Wien.<|endoftext|>",
        "Die Bundesstadt der Schweiz ist Bern.<|endoftext|>",
    ]
    ending_any_turn = MARKS_THE_END.replace(" and m['role'] == 'assistant'", "")  # the prompt itself changes
    with pytest.raises(TemplateError, match="renders the conversation before assistant turn 2 differently"):
        tokenize_chat(tokenizer, CHAT, max_length=None, chat_template=ending_any_turn)


def test_an_injected_default_system_prompt_is_context_not_label(tokenizer):
    [chat] = tokenize_chat(tokenizer, CHAT[1:], max_length=None, chat_template=DEFAULT_SYSTEM)
    assert "You are a helpful assistant." in tokenizer.decode(chat.input_ids)
    assert labelled(tokenizer, [chat]) == [
        "Die Hauptstadt von Österreich ist Wien.<|im_end|>\nDie Bundesstadt der Schweiz ist Bern.<|im_end|>\n"
    ]


def test_tool_calls_are_labelled_and_tool_results_are_not(tokenizer):
    [chat] = tokenize_chat(tokenizer, TOOL_CHAT, max_length=None, chat_template=WITH_TOOLS, tools=TOOLS)
    assert "Tools: weather" in tokenizer.decode(chat.input_ids)
    assert labelled(tokenizer, [chat]) == [
        '<tool_call>{"name": "weather", "arguments": {"city": "Lyon"}}</tool_call><|im_end|>\n'
        "Il fait 18 °C et il y a du soleil à Lyon.<|im_end|>\n"
    ]


def test_a_tool_call_without_text_in_a_rewriting_template_is_labelled_whole(tokenizer):
    calling = [{**TOOL_CHAT[1], "reasoning_content": "Je consulte la météo."}, *TOOL_CHAT[2:]]
    chat = [
        TOOL_CHAT[0],
        *calling,
        {"role": "user", "content": "Merci !"},
        {"role": "assistant", "content": "De rien."},
    ]
    chats = tokenize_chat(tokenizer, chat, max_length=None, chat_template=REASONS_WITH_TOOLS, tools=TOOLS)
    assert labelled(tokenizer, chats) == [
        '<think>\nJe consulte la météo.\n</think>\n\n<tool_call>{"name": "weather", "arguments": {"city": "Lyon"}}'
        "</tool_call><|im_end|>\n",
        "<think>\n\n</think>\n\nIl fait 18 °C et il y a du soleil à Lyon.<|im_end|>\n",
        "<think>\n\n</think>\n\nDe rien.<|im_end|>\n",
    ]


def test_a_template_without_tool_support_is_refused_by_name(tokenizer):
    with pytest.raises(TemplateError, match="no tool support.*weather"):
        tokenize_chat(tokenizer, TOOL_CHAT, max_length=None, tools=TOOLS)


def test_a_template_that_iterates_over_tools_gets_a_list(tokenizer):
    [chat] = tokenize_chat(tokenizer, CHAT[1:3], max_length=None, chat_template=ITERATES_TOOLS)
    assert labelled(tokenizer, [chat]) == ["Die Hauptstadt von Österreich ist Wien.<|im_end|>\n"]


def test_a_template_that_cannot_render_the_conversation_is_refused(tokenizer):
    with pytest.raises(TemplateError, match="cannot render this conversation: System role not supported"):
        tokenize_chat(tokenizer, CHAT, max_length=None, chat_template=REFUSES_SYSTEM)
    drops = OPEN + "{% if m['role'] != 'assistant' %}" + TURN + "{% endif %}" + CLOSE  # never shows an answer
    with pytest.raises(TemplateError, match="does not render assistant turn 2"):
        tokenize_chat(tokenizer, CHAT, max_length=None, chat_template=drops)


def test_sft_tokenising_counts_the_examples_a_rewriting_template_adds():
    from align.models.loading import ModelArgs, load_tokenizer
    from align.stages.sft import tokenize_records

    tokenizer = load_tokenizer(ModelArgs())  # its own copy: the template is changed below
    tokenizer.chat_template = STRIPS_REASONING
    records = [
        {"messages": REASONING_CHAT, "lang": "fr", "id": "r"},
        {"messages": CHAT[1:3], "lang": "de", "id": "one-turn"},
        {"messages": TOOL_CHAT, "lang": "fr", "id": "tool", "tools": TOOLS},
    ]
    with pytest.raises(TemplateError, match="record tool: .*no tool support"):
        tokenize_records(records, tokenizer, None)
    dataset, stats = tokenize_records(records[:2], tokenizer, None)
    assert stats["examples"] == 2 and stats["training_examples"] == len(dataset) == 3
    assert stats["examples_per_language"] == {"fr": 2, "de": 1}
    expected = tokenize_chat(tokenizer, REASONING_CHAT, max_length=None)
    assert dataset["input_ids"][:2] == [c.input_ids for c in expected]
