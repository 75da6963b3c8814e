"""Ingestion: every input format and file type normalises to polyalign's canonical records, bad input fails with
one line naming the file, the line or row, and the field, and per-source weights resample deterministically.

Every record here names its language (or its source does) so that these tests never pay for loading the language
detector; detection itself is covered in test_languages.py.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from pathlib import Path

import pytest

from align.core.errors import ConfigError, InputError
from align.data import DataSource, iter_records, load_records

# ------------------------------------------------------------------------------------------------ helpers


def U(content: str) -> dict:
    return {"role": "user", "content": content}


def A(content: str) -> dict:
    return {"role": "assistant", "content": content}


def S(content: str) -> dict:
    return {"role": "system", "content": content}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def input_error(dataset, kind: str = "sft") -> InputError:
    """The InputError that loading `dataset` raises; it must render as one line."""
    with pytest.raises(InputError) as info:
        load_records(dataset, kind)
    message = str(info.value)
    assert "\n" not in message, message
    return info.value


# ------------------------------------------------------------------------------------------------ formats


def test_openai_messages_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"messages": [U("Bonjour !"), A("Bonjour, comment puis-je aider ?")], "lang": "fr"},
            {
                "messages": [S("Sei breve."), U("Ciao"), A("Ciao!"), U("Come stai?"), A("Bene.")],
                "lang": "it",
                "id": 42,
                "source": "my-corpus",
                "category": "chat",
                "unrelated": "dropped",
            },
        ],
    )
    assert load_records(str(path), "sft") == [
        {
            "messages": [U("Bonjour !"), A("Bonjour, comment puis-je aider ?")],
            "lang": "fr",
            "id": "chats-0",
            "source": "chats",
        },
        {
            "messages": [S("Sei breve."), U("Ciao"), A("Ciao!"), U("Come stai?"), A("Bene.")],
            "lang": "it",
            "id": "42",
            "source": "my-corpus",
            "category": "chat",
        },
    ]


def test_messages_drop_extra_message_keys_and_allow_empty_system(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": ""},
                    {"role": "user", "content": "Hi", "name": "bob"},
                    {"role": "assistant", "content": "Hello", "weight": 1},
                ],
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "sft")[0]["messages"] == [S(""), U("Hi"), A("Hello")]


def test_sharegpt_conversations(tmp_path):
    path = write_jsonl(
        tmp_path / "share.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Du bist hilfreich."},
                    {"from": "human", "value": "Wie spät ist es?"},
                    {"from": "gpt", "value": "Es ist drei Uhr."},
                    {"from": "Human", "value": "Danke."},
                    {"from": "GPT", "value": "Gern geschehen."},
                ],
                "lang": "de",
                "id": "x1",
            },
        ],
    )
    assert load_records(str(path), "sft") == [
        {
            "messages": [
                S("Du bist hilfreich."),
                U("Wie spät ist es?"),
                A("Es ist drei Uhr."),
                U("Danke."),
                A("Gern geschehen."),
            ],
            "lang": "de",
            "id": "x1",
            "source": "share",
        },
    ]


def test_alpaca_with_and_without_input(tmp_path):
    path = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "lang": "en"},
            {"instruction": "Name a primary colour.", "input": "", "output": "Red.", "lang": "en"},
            {"instruction": "Say hi.", "output": "Hi!", "lang": "en"},
            {"instruction": "Answer briefly.", "input": "2+2?", "response": "4", "system": "Be terse.", "lang": "en"},
        ],
    )
    assert load_records(str(path), "sft") == [
        {
            "messages": [U("Translate to French.\n\nGood morning"), A("Bonjour")],
            "lang": "en",
            "id": "alpaca-0",
            "source": "alpaca",
        },
        {"messages": [U("Name a primary colour."), A("Red.")], "lang": "en", "id": "alpaca-1", "source": "alpaca"},
        {"messages": [U("Say hi."), A("Hi!")], "lang": "en", "id": "alpaca-2", "source": "alpaca"},
        {
            "messages": [S("Be terse."), U("Answer briefly.\n\n2+2?"), A("4")],
            "lang": "en",
            "id": "alpaca-3",
            "source": "alpaca",
        },
    ]


def test_prompt_completion_strings_and_message_lists(tmp_path):
    path = write_jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "What is 2+2?", "completion": "4", "lang": "en"},
            {"prompt": [S("Be kind."), U("Hi"), A("Hello!"), U("Bye")], "completion": [A("Goodbye!")], "lang": "en"},
        ],
    )
    assert load_records(str(path), "sft") == [
        {"messages": [U("What is 2+2?"), A("4")], "lang": "en", "id": "pc-0", "source": "pc"},
        {
            "messages": [S("Be kind."), U("Hi"), A("Hello!"), U("Bye"), A("Goodbye!")],
            "lang": "en",
            "id": "pc-1",
            "source": "pc",
        },
    ]


def test_mt_bench_turns_become_a_prompt_record(tmp_path):
    path = write_jsonl(
        tmp_path / "question.jsonl",
        [
            {
                "question_id": 81,
                "category": "writing",
                "lang": "en",
                "turns": ["Write a travel blog post about Hawaii.", "Rewrite it starting every sentence with A."],
            },
        ],
    )
    assert load_records(str(path), "prompt") == [
        {
            "prompt": [U("Write a travel blog post about Hawaii.")],
            "turns": ["Write a travel blog post about Hawaii.", "Rewrite it starting every sentence with A."],
            "lang": "en",
            "id": "81",
            "source": "question",
            "category": "writing",
        },
    ]


def test_plain_prompt_records(tmp_path):
    path = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "Tell me a joke.", "lang": "en"},
            {"prompt": [S("Be brief."), U("Tell me a fact.")], "lang": "en", "reference": "Water is wet."},
        ],
    )
    assert load_records(str(path), "prompt") == [
        {"prompt": [U("Tell me a joke.")], "lang": "en", "id": "prompts-0", "source": "prompts"},
        {
            "prompt": [S("Be brief."), U("Tell me a fact.")],
            "lang": "en",
            "id": "prompts-1",
            "source": "prompts",
            "reference": "Water is wet.",
        },
    ]


def test_preference_with_strings(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {
                "prompt": "Capital of France?",
                "chosen": "Paris.",
                "rejected": "Lyon.",
                "lang": "en",
                "chosen_score": 9.5,
                "rejected_score": 2.0,
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [U("Capital of France?")],
            "chosen": [A("Paris.")],
            "rejected": [A("Lyon.")],
            "lang": "en",
            "id": "prefs-0",
            "source": "prefs",
            "chosen_score": 9.5,
            "rejected_score": 2.0,
        },
    ]


def test_preference_with_message_lists(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            # prompt as a multi-turn list, completions as assistant-only lists
            {
                "prompt": [S("Be terse."), U("Hi"), A("Hello."), U("2+2?")],
                "chosen": [A("4")],
                "rejected": [A("5")],
                "lang": "en",
            },
            # completions that repeat the prompt: the repeated prefix is dropped
            {
                "prompt": [U("Colour of the sky?")],
                "chosen": [U("Colour of the sky?"), A("Blue.")],
                "rejected": [U("Colour of the sky?"), A("Green.")],
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [S("Be terse."), U("Hi"), A("Hello."), U("2+2?")],
            "chosen": [A("4")],
            "rejected": [A("5")],
            "lang": "en",
            "id": "prefs-0",
            "source": "prefs",
        },
        {
            "prompt": [U("Colour of the sky?")],
            "chosen": [A("Blue.")],
            "rejected": [A("Green.")],
            "lang": "en",
            "id": "prefs-1",
            "source": "prefs",
        },
    ]


def test_hh_transcripts_shared_prefix_becomes_prompt(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {
                "chosen": "\n\nHuman: What is the capital of Spain?\n\nAssistant: Madrid.",
                "rejected": "\n\nHuman: What is the capital of Spain?\n\nAssistant: Barcelona.",
                "lang": "en",
            },
            # multi-turn: everything up to the last Human turn is shared, so it is the prompt
            {
                "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                "\n\nAssistant: An apple.",
                "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                "\n\nAssistant: A carrot.",
                "lang": "en",
            },
            # without the leading blank lines
            {
                "chosen": "Human: Say yes.\n\nAssistant: Yes.",
                "rejected": "Human: Say yes.\n\nAssistant: No.",
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [U("What is the capital of Spain?")],
            "chosen": [A("Madrid.")],
            "rejected": [A("Barcelona.")],
            "lang": "en",
            "id": "hh-0",
            "source": "hh",
        },
        {
            "prompt": [U("Hi there"), A("Hello! How can I help?"), U("Name a fruit.")],
            "chosen": [A("An apple.")],
            "rejected": [A("A carrot.")],
            "lang": "en",
            "id": "hh-1",
            "source": "hh",
        },
        {
            "prompt": [U("Say yes.")],
            "chosen": [A("Yes.")],
            "rejected": [A("No.")],
            "lang": "en",
            "id": "hh-2",
            "source": "hh",
        },
    ]


def test_implicit_prompt_message_list_preferences(tmp_path):
    path = write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke."), A("Why did the chicken...")],
                "rejected": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke."), A("No.")],
                "lang": "en",
            },
            {"chosen": [U("Q"), A("good answer")], "rejected": [U("Q"), A("bad answer")], "lang": "en"},
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke.")],
            "chosen": [A("Why did the chicken...")],
            "rejected": [A("No.")],
            "lang": "en",
            "id": "implicit-0",
            "source": "implicit",
        },
        {
            "prompt": [U("Q")],
            "chosen": [A("good answer")],
            "rejected": [A("bad answer")],
            "lang": "en",
            "id": "implicit-1",
            "source": "implicit",
        },
    ]


def test_preference_requested_as_sft_trains_on_chosen(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Milan.", "lang": "en", "chosen_score": 8},
        ],
    )
    assert load_records(str(path), "sft") == [
        {
            "messages": [U("Capital of Italy?"), A("Rome.")],
            "lang": "en",
            "id": "prefs-0",
            "source": "prefs",
            "chosen_score": 8,
        },
    ]


def test_sft_requested_as_prompts_keeps_up_to_the_last_user_turn(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [S("sys"), U("first"), A("one"), U("second"), A("two")], "lang": "en"},
        ],
    )
    assert load_records(str(path), "prompt") == [
        {"prompt": [S("sys"), U("first"), A("one"), U("second")], "lang": "en", "id": "chat-0", "source": "chat"},
    ]


def test_preference_requested_as_prompts(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "P?", "chosen": "a", "rejected": "b", "lang": "en"}])
    assert load_records(str(path), "prompt") == [
        {"prompt": [U("P?")], "lang": "en", "id": "pref-0", "source": "pref"},
    ]


def test_same_kind_formats_may_mix_in_one_file(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": [U("a"), A("b")], "lang": "en"},
            {"conversations": [{"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}], "lang": "en"},
            {"instruction": "e", "output": "f", "lang": "en"},
        ],
    )
    assert [r["messages"] for r in load_records(str(path), "sft")] == [
        [U("a"), A("b")],
        [U("c"), A("d")],
        [U("e"), A("f")],
    ]


def T(content: str, **keys) -> dict:
    return {"role": "tool", "content": content, **keys}


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = {
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_sharegpt_preference_with_one_message_answers(tmp_path):
    path = write_jsonl(
        tmp_path / "sgp.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello!"},
                    {"from": "human", "value": "Capital of Peru?"},
                ],
                "chosen": {"from": "gpt", "value": "Lima."},
                "rejected": {"from": "gpt", "value": "Cusco."},
                "lang": "en",
            },
            {
                "conversations": [{"from": "user", "value": "2+2?"}],
                "system": "Be terse.",
                "chosen": {"role": "assistant", "content": "4"},
                "rejected": "5",
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [U("Hi"), A("Hello!"), U("Capital of Peru?")],
            "chosen": [A("Lima.")],
            "rejected": [A("Cusco.")],
            "lang": "en",
            "id": "sgp-0",
            "source": "sgp",
        },
        {
            "prompt": [S("Be terse."), U("2+2?")],
            "chosen": [A("4")],
            "rejected": [A("5")],
            "lang": "en",
            "id": "sgp-1",
            "source": "sgp",
        },
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"chosen": [{"from": "gpt", "value": "a"}], "rejected": {"from": "gpt", "value": "b"}},
            "field 'chosen': expected one message object (from/value or role/content)",
        ),
        (
            {"chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "human", "value": "b"}},
            "field 'rejected': expected an assistant turn, got a user turn",
        ),
        ({"chosen": {"from": "gpt"}, "rejected": {"from": "gpt", "value": "b"}}, "field 'chosen.value': missing"),
    ],
)
def test_sharegpt_preference_bad_answers(tmp_path, row, message):
    path = write_jsonl(
        tmp_path / "sgp.jsonl", [{"conversations": [{"from": "human", "value": "Q"}], **row, "lang": "en"}]
    )
    assert str(input_error(str(path), "preference")) == f"{path}:1: {message}"


def test_sharegpt_preference_conversation_ending_with_the_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "sgp.jsonl",
        [
            {
                "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
                "lang": "en",
            },
        ],
    )
    assert (
        str(input_error(str(path), "preference"))
        == f"{path}:1: field 'conversations': ends with an assistant turn (the answers belong in chosen and rejected)"
    )


def test_chosen_messages_and_rejected_messages_split_at_the_shared_prefix(tmp_path):
    path = write_jsonl(
        tmp_path / "cm.jsonl",
        [
            {
                "chosen_messages": [S("sys"), U("Hi"), A("Hello."), U("Joke?"), A("A pun.")],
                "rejected_messages": [S("sys"), U("Hi"), A("Hello."), U("Joke?"), A("No.")],
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [S("sys"), U("Hi"), A("Hello."), U("Joke?")],
            "chosen": [A("A pun.")],
            "rejected": [A("No.")],
            "lang": "en",
            "id": "cm-0",
            "source": "cm",
        },
    ]
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"chosen_messages": [U("Q1"), A("a")], "rejected_messages": [U("Q2"), A("b")], "lang": "en"},
        ],
    )
    assert (
        str(input_error(str(bad), "preference"))
        == f"{bad}:1: field 'chosen_messages': chosen and rejected share no prompt that ends with a user turn"
    )


# ------------------------------------------------------------------------------------------------ tool use

SHAREGPT_TOOL_ROW = {
    "conversations": [
        {"from": "human", "value": "Quel temps fait-il à Lyon et à Paris ?"},
        {"from": "gpt", "value": "Je regarde."},
        {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Lyon"}})},
        {"from": "function_call", "value": json.dumps([{"name": "weather", "arguments": '{"city": "Paris"}'}])},
        {"from": "observation", "value": "Lyon : 18 °C"},
        {"from": "observation", "value": "Paris : 15 °C"},
        {"from": "gpt", "value": "18 °C à Lyon, 15 °C à Paris."},
        {"from": "human", "value": "Et à Nice ?"},
        {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Nice"}})},
        {"from": "observation", "value": "Nice : 22 °C"},
        {"from": "gpt", "value": "22 °C à Nice."},
    ],
    "tools": json.dumps([WEATHER]),
    "system": "Tu es un assistant météo.",
    "lang": "fr",
}
SHAREGPT_TOOL_MESSAGES = [
    S("Tu es un assistant météo."),
    U("Quel temps fait-il à Lyon et à Paris ?"),
    {
        "role": "assistant",
        "content": "Je regarde.",
        "tool_calls": [call("weather", city="Lyon"), call("weather", city="Paris")],
    },
    T("Lyon : 18 °C"),
    T("Paris : 15 °C"),
    A("18 °C à Lyon, 15 °C à Paris."),
    U("Et à Nice ?"),
    {"role": "assistant", "content": "", "tool_calls": [call("weather", city="Nice")]},
    T("Nice : 22 °C"),
    A("22 °C à Nice."),
]


def test_sharegpt_function_calls_and_observations(tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", [SHAREGPT_TOOL_ROW])
    assert load_records(str(path), "sft") == [
        {
            "messages": SHAREGPT_TOOL_MESSAGES,
            "tools": [{"type": "function", "function": WEATHER}],
            "lang": "fr",
            "id": "tools-0",
            "source": "tools",
        },
    ]


def test_openai_tool_calls_and_tool_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "oa.jsonl",
        [
            {
                "messages": [
                    U("Weather in Oslo?"),
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "-3 °C"},
                    A("It is -3 °C in Oslo."),
                ],
                "tools": [{"type": "function", "function": WEATHER}],
                "lang": "en",
            },
            # a call whose arguments are an object already, one with none; no tools field
            {
                "messages": [
                    U("Time?"),
                    {
                        "role": "assistant",
                        "content": "Checking.",
                        "tool_calls": [{"type": "function", "function": {"name": "now"}}],
                    },
                    T("12:00"),
                    A("Noon."),
                ],
                "lang": "en",
            },
        ],
    )
    first, second = load_records(str(path), "sft")
    assert first["messages"] == [
        U("Weather in Oslo?"),
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", **call("weather", city="Oslo")}]},
        T("-3 °C", name="weather", tool_call_id="call_1"),
        A("It is -3 °C in Oslo."),
    ]
    assert first["tools"] == [{"type": "function", "function": WEATHER}]
    assert second["messages"][1] == {"role": "assistant", "content": "Checking.", "tool_calls": [call("now")]}
    assert "tools" not in second


def test_a_conversation_that_ends_with_a_tool_call_trains_on_it(tmp_path):
    path = write_jsonl(
        tmp_path / "oa.jsonl",
        [
            {
                "messages": [
                    U("Weather in Oslo?"),
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
                        ],
                    },
                ],
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "sft")[0]["messages"][1]["tool_calls"] == [call("weather", city="Oslo")]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{name: weather}"}]},
            "field 'conversations[1].value': invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": '{"name": "weather", "arguments": "{city"}'},
                ]
            },
            "field 'conversations[1].value.arguments': invalid JSON (Expecting property name enclosed in double quotes "
            "at column 2)",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": '[{"arguments": {}}]'},
                ]
            },
            "field 'conversations[1].value[0].name': missing",
        ),
        (
            {
                "messages": [
                    U("q"),
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"type": "function", "function": {"name": "weather", "arguments": "{'city': 'Oslo'}"}}
                        ],
                    },
                ]
            },
            "field 'messages[1].tool_calls[0].function.arguments': invalid JSON (Expecting property name enclosed in "
            "double quotes at column 2)",
        ),
        (
            {
                "messages": [
                    U("q"),
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": [1]}}],
                    },
                ]
            },
            "field 'messages[1].tool_calls[0].function.arguments': expected an object of arguments, got list",
        ),
        (
            {"messages": [U("q"), {"role": "assistant", "content": "", "tool_calls": {"name": "weather"}}]},
            "field 'messages[1].tool_calls': expected a list of tool calls, got dict",
        ),
        (
            {"messages": [U("q"), A("a")], "tools": "[{"},
            "field 'tools': invalid JSON (Expecting property name enclosed in double quotes at column 3)",
        ),
        (
            {"messages": [U("q"), A("a")], "tools": [{"type": "function", "function": {"description": "no name"}}]},
            "field 'tools[0].function.name': missing",
        ),
        (
            {"messages": [U("q"), A("a")], "tools": [{"type": "code_interpreter"}]},
            "field 'tools[0].type': unsupported tool type 'code_interpreter' (expected function)",
        ),
        (
            {"messages": [U("q"), A("a")], "tools": [{"name": "weather", "parameters": "city"}]},
            "field 'tools[0].parameters': expected a JSON schema object",
        ),
    ],
)
def test_bad_tool_use_names_the_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{**row, "lang": "en"}])
    assert str(input_error(str(path))) == f"{path}:1: {message}"


# A template that renders tools and tool calls (as Qwen's and Hermes' do); the tokenizer's own ChatML renders neither.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}{% if m.get('tool_calls') %}<|im_start|>assistant\n{{ m['content'] }}"
    "{% for c in m['tool_calls'] %}<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_loaded_tool_records_render_through_a_template_with_tool_support(tmp_path):
    from align.models.chat import IGNORE_INDEX, TemplateError
    from align.models.loading import ModelArgs, load_tokenizer
    from align.stages.sft import tokenize_records

    [record] = load_records(str(write_jsonl(tmp_path / "tools.jsonl", [SHAREGPT_TOOL_ROW])), "sft")
    tokenizer = load_tokenizer(ModelArgs())  # its own copy: the template is changed below
    with pytest.raises(TemplateError, match="record tools-0: .*no tool support.*weather"):
        tokenize_records([record], tokenizer, None)  # the tools travel with the record
    tokenizer.chat_template = TOOL_TEMPLATE
    dataset, _ = tokenize_records([record], tokenizer, None)
    [input_ids], [labels] = dataset["input_ids"], dataset["labels"]
    assert tokenizer.decode(input_ids).startswith("<|im_start|>system\nTools: weather<|im_end|>\n")
    trained = tokenizer.decode([t for t, label in zip(input_ids, labels) if label != IGNORE_INDEX])
    assert trained == (
        'Je regarde.<tool_call>{"name": "weather", "arguments": {"city": "Lyon"}}</tool_call>'
        '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'
        "18 °C à Lyon, 15 °C à Paris.<|im_end|>\n"
        '<tool_call>{"name": "weather", "arguments": {"city": "Nice"}}</tool_call><|im_end|>\n'
        "22 °C à Nice.<|im_end|>\n"
    )


# ------------------------------------------------------------------------------------------------ content parts


def test_openai_content_parts_are_joined_with_newlines(tmp_path):
    path = write_jsonl(
        tmp_path / "parts.jsonl",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Résume :"}, {"type": "text", "value": "Un long texte."}],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Un texte."}],
                        "reasoning_content": "Court.",
                    },
                ],
                "lang": "fr",
            },
            {"messages": [U("Hi"), {"role": "assistant", "content": "Hello", "thinking": "Greet back."}], "lang": "en"},
        ],
    )
    first, second = load_records(str(path), "sft")
    assert first["messages"] == [
        U("Résume :\nUn long texte."),
        {"role": "assistant", "content": "Un texte.", "reasoning_content": "Court."},
    ]
    assert second["messages"][1] == {"role": "assistant", "content": "Hello", "thinking": "Greet back."}


@pytest.mark.parametrize(
    "parts, message",
    [
        (
            [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x.png"}}],
            "this toolkit trains text models: content part 2 is 'image_url'",
        ),
        (
            [{"type": "input_audio", "input_audio": {"data": "..."}}],
            "this toolkit trains text models: content part 1 is 'input_audio'",
        ),
        ([{"text": "untyped"}], "content part 1 has no type"),
        ([{"type": "text"}], "content part 1 has no text"),
        ([], "empty text"),
    ],
)
def test_content_parts_that_are_not_text(tmp_path, parts, message):
    path = write_jsonl(
        tmp_path / "parts.jsonl",
        [
            CHAT_ROWS[0],
            {"messages": [U("Hi"), A("Hello"), {"role": "user", "content": parts}, A("A cat.")], "lang": "en"},
        ],
    )
    assert str(input_error(str(path))) == f"{path}:2: field 'messages[2].content': {message}"


def test_a_reasoning_field_that_is_not_text(tmp_path):
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [{"messages": [U("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": ["x"]}], "lang": "en"}],
    )
    assert str(input_error(str(path))) == f"{path}:1: field 'messages[1].reasoning_content': expected text, got list"


# ------------------------------------------------------------------------------------------------ Aya, xP3


def test_aya_inputs_targets_take_the_language_code(tmp_path):
    path = write_jsonl(
        tmp_path / "aya.jsonl",
        [
            {
                "inputs": "Quelle est la capitale du Kenya ?",
                "targets": "Nairobi.",
                "language": "French",
                "language_code": "fra",
                "annotation_type": "original-annotations",
                "user_id": "u1",
            },
            {
                "inputs": "肯亞的首都是哪裡？",
                "targets": "奈洛比。",
                "language": "Traditional Chinese",
                "language_code": "zho",
            },
            {
                "inputs": "肯尼亚的首都是哪里？",
                "targets": "内罗毕。",
                "language": "Simplified Chinese",
                "language_code": "zho",
            },
            {"inputs": "Kenya'nın başkenti?", "targets": "Nairobi.", "language": "Turkish", "language_code": "xx-bad"},
            {"inputs": "Mji mkuu wa Kenya?", "targets": "Nairobi.", "language": "", "language_code": "swh"},
        ],
    )
    records = load_records(str(path), "sft")
    assert records[0] == {
        "messages": [U("Quelle est la capitale du Kenya ?"), A("Nairobi.")],
        "lang": "fr",
        "id": "aya-0",
        "source": "aya",
    }
    assert [r["lang"] for r in records] == ["fr", "zh-Hant", "zh", "tr", "sw"]


def test_aya_language_code_and_name_both_unknown(tmp_path):
    path = write_jsonl(
        tmp_path / "aya.jsonl", [{"inputs": "q", "targets": "a", "language": "Elvish", "language_code": "qya"}]
    )
    assert str(input_error(str(path))).startswith(f"{path}:1: field 'language_code': unknown language 'qya'")


def test_xp3_inputs_targets(tmp_path):
    path = write_jsonl(
        tmp_path / "xp3.jsonl",
        [
            {"inputs": "Translate to German: good night", "targets": "Gute Nacht"},
        ],
    )
    assert load_records([{"path": str(path), "lang": "en"}], "sft") == [
        {
            "messages": [U("Translate to German: good night"), A("Gute Nacht")],
            "lang": "en",
            "id": "xp3-0",
            "source": "xp3",
        },
    ]
    xp3x = write_jsonl(
        tmp_path / "xp3x.jsonl",
        [{"inputs": "Traduis : bonne nuit", "targets": "good night", "language": "fra_Latn", "split": "train"}],
    )
    assert load_records(str(xp3x), "sft")[0]["lang"] == "fr"
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"inputs": "q", "targets": " ", "language": "fra_Latn"}])
    assert str(input_error(str(empty))) == f"{empty}:1: field 'targets': empty text"


# ------------------------------------------------------------------------------------------------ Chatbot Arena


def arena(winner, a, b, **extra) -> dict:
    return {"conversation_a": a, "conversation_b": b, "winner": winner, "model_a": "alpha", "model_b": "beta", **extra}


def test_chatbot_arena_comparisons(tmp_path):
    path = write_jsonl(
        tmp_path / "arena.jsonl",
        [
            arena(
                "model_a",
                [U("Capital of Chile?"), A("Santiago.")],
                [U("Capital of Chile?"), A("Valparaíso.")],
                question_id="q1",
                language="English",
                turn=1,
            ),
            arena("tie", [U("Hi"), A("Hello")], [U("Hi"), A("Hey")], question_id="q2", language="English"),
            # multi-turn: the prompt is the winner's conversation up to the last user turn
            arena(
                "model_b",
                [U("Name a fruit."), A("Carrot."), U("Another?"), A("Potato.")],
                [U("Name a fruit."), A("Apple."), U("Another?"), A("Pear.")],
                question_id="q3",
                language="English",
            ),
            arena("tie (bothbad)", [U("Hi"), A("?")], [U("Hi"), A("!")], question_id="q4", language="English"),
        ],
    )
    skipped = Counter()
    assert load_records(str(path), "preference", skipped=skipped) == [
        {
            "prompt": [U("Capital of Chile?")],
            "chosen": [A("Santiago.")],
            "rejected": [A("Valparaíso.")],
            "chosen_by": "alpha",
            "rejected_by": "beta",
            "lang": "en",
            "id": "q1",
            "source": "arena",
        },
        {
            "prompt": [U("Name a fruit."), A("Apple."), U("Another?")],
            "chosen": [A("Pear.")],
            "rejected": [A("Potato.")],
            "chosen_by": "beta",
            "rejected_by": "alpha",
            "lang": "en",
            "id": "q3",
            "source": "arena",
        },
    ]
    assert skipped == {"tie": 2}


@pytest.mark.parametrize(
    "row, message",
    [
        (
            arena("model_c", [U("q"), A("a")], [U("q"), A("b")]),
            "field 'winner': expected model_a, model_b, tie, tie (bothbad), got 'model_c'",
        ),
        (
            arena("model_a", [U("q"), A("a")], [U("other q"), A("b")]),
            "field 'conversation_b': its last user turn differs from the other conversation's: not one comparison",
        ),
        (
            arena("model_b", [U("q"), A("a")], [U("q")]),
            "field 'conversation_b': does not end with an assistant answer to its last user turn",
        ),
        (
            arena("tie", [U("q"), A("a")], [U("q"), {"role": "bot", "content": "b"}]),
            "field 'conversation_b[1].role': unknown role 'bot' (expected system, user, assistant, tool)",
        ),
    ],
)
def test_bad_arena_rows(tmp_path, row, message):
    path = write_jsonl(tmp_path / "arena.jsonl", [{**row, "lang": "en"}])
    assert str(input_error(str(path), "preference")) == f"{path}:1: {message}"


def kaggle(prompt, a, b, vote, **extra) -> dict:
    return {
        "id": extra.pop("id", 1),
        "model_a": "alpha",
        "model_b": "beta",
        "prompt": json.dumps(prompt),
        "response_a": json.dumps(a),
        "response_b": json.dumps(b),
        "winner_model_a": int(vote == "a"),
        "winner_model_b": int(vote == "b"),
        "winner_tie": int(vote == "tie"),
        **extra,
    }


def test_kaggle_arena_export(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            kaggle(["Best season?"], ["Spring."], ["Winter."], "b", id=10),
            kaggle(["Hi", "Bye"], ["Hello", "Bye!"], ["Hey", "Ciao"], "a", id=11),
            kaggle(["Q"], ["x"], ["y"], "tie", id=12),
            kaggle(["Q"], [None], ["y"], "a", id=13),  # the export writes null where a model answered nothing
            kaggle(["Q1", "Q2"], [None, "x"], ["y", None], "b", id=14),  # the loser's earlier null is not used
        ],
    )
    skipped = Counter()
    records = load_records([{"path": str(path), "lang": "en"}], "preference", skipped=skipped)
    assert records == [
        {
            "prompt": [U("Best season?")],
            "chosen": [A("Winter.")],
            "rejected": [A("Spring.")],
            "chosen_by": "beta",
            "rejected_by": "alpha",
            "lang": "en",
            "id": "10",
            "source": "train",
        },
        {
            "prompt": [U("Hi"), A("Hello"), U("Bye")],
            "chosen": [A("Bye!")],
            "rejected": [A("Ciao")],
            "chosen_by": "alpha",
            "rejected_by": "beta",
            "lang": "en",
            "id": "11",
            "source": "train",
        },
    ]
    assert skipped == {"tie": 1, "null turn": 2}


def test_kaggle_arena_csv(tmp_path):
    header = [
        "id",
        "model_a",
        "model_b",
        "prompt",
        "response_a",
        "response_b",
        "winner_model_a",
        "winner_model_b",
        "winner_tie",
    ]
    path = write_csv(
        tmp_path / "train.csv",
        header,
        [
            ["7", "alpha", "beta", '["Ciel ?"]', '["Bleu."]', '["Vert."]', "1", "0", "0"],
        ],
    )
    assert load_records([{"path": str(path), "lang": "fr"}], "preference") == [
        {
            "prompt": [U("Ciel ?")],
            "chosen": [A("Bleu.")],
            "rejected": [A("Vert.")],
            "chosen_by": "alpha",
            "rejected_by": "beta",
            "lang": "fr",
            "id": "7",
            "source": "train",
        },
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        (kaggle(["Q1", "Q2"], ["a"], ["b1", "b2"], "a"), "field 'response_a': 1 responses to 2 prompt turns"),
        (
            {**kaggle(["Q"], ["a"], ["b"], "a"), "winner_model_b": 1},
            "field 'winner_model_a': expected exactly one of winner_model_a, winner_model_b, winner_tie to be 1",
        ),
        ({**kaggle(["Q"], ["a"], ["b"], "a"), "winner_tie": "yes"}, "field 'winner_tie': expected 0 or 1, got 'yes'"),
        (
            {**kaggle(["Q"], ["a"], ["b"], "a"), "response_b": '["b"'},
            "field 'response_b': invalid JSON (Expecting ',' delimiter at column 5)",
        ),
        (kaggle(["Q"], ["a"], [3], "a"), "field 'response_b[0]': expected text, got int"),
        (kaggle([" "], ["a"], ["b"], "b"), "field 'prompt[0]': empty text"),
    ],
)
def test_bad_kaggle_arena_rows(tmp_path, row, message):
    path = write_jsonl(tmp_path / "k.jsonl", [{**row, "lang": "en"}])
    assert str(input_error(str(path), "preference")) == f"{path}:1: {message}"


def test_a_file_of_ties_only_says_so(tmp_path):
    path = write_jsonl(tmp_path / "ties.jsonl", [arena("tie", [U("q"), A("a")], [U("q"), A("b")], lang="en")] * 2)
    assert str(input_error(str(path), "preference")) == f"{path}: no records after weighting (skipped 2 rows: tie 2)"


# ------------------------------------------------------------------------------------------------ UltraFeedback


def test_ultrafeedback_binarized_scores(tmp_path):
    prompt = "Write a haiku about rain."
    path = write_jsonl(
        tmp_path / "uf.jsonl",
        [
            {
                "prompt": prompt,
                "prompt_id": "abc",
                "chosen": [U(prompt), A("Soft rain on the roof")],
                "rejected": [U(prompt), A("Rain is wet.")],
                "messages": [U(prompt), A("Soft rain on the roof")],
                "score_chosen": 8.5,
                "score_rejected": 3.0,
                "lang": "en",
            },
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [U(prompt)],
            "chosen": [A("Soft rain on the roof")],
            "rejected": [A("Rain is wet.")],
            "lang": "en",
            "id": "uf-0",
            "source": "uf",
            "chosen_score": 8.5,
            "rejected_score": 3.0,
        },
    ]


# ------------------------------------------------------------------------------------------------ KTO


KTO_ROWS = [
    {"prompt": "Capital of Japan?", "completion": "Tokyo.", "label": True, "lang": "en"},
    {"prompt": "Capital of Japan?", "completion": "Osaka.", "label": False, "lang": "en"},
    {"prompt": [U("2+2?")], "completion": [A("4")], "label": True, "lang": "en"},
    {"messages": [U("Hi"), A("Go away.")], "label": False, "lang": "en"},
    {
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
        "kto_tag": True,
        "lang": "en",
    },
]


def test_kto_data_trains_sft_on_the_desirable_answers_only(tmp_path, caplog):
    path = write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)
    skipped = Counter()
    with caplog.at_level(logging.INFO, logger="align.data.loader"):
        records = load_records(str(path), "sft", skipped=skipped)
    assert [(r["messages"], r["id"]) for r in records] == [
        ([U("Capital of Japan?"), A("Tokyo.")], "kto-0"),
        ([U("2+2?"), A("4")], "kto-2"),
        ([U("Hi"), A("Hello!")], "kto-4"),
    ]
    assert skipped == {"undesirable (KTO label false)": 2}
    assert f"{path}: skipped 2 rows: undesirable (KTO label false) 2" in caplog.messages
    assert [r["prompt"] for r in load_records(str(path), "prompt")] == [
        [U("Capital of Japan?")],
        [U("2+2?")],
        [U("Hi")],
    ]


def test_kto_data_is_refused_for_preference_training(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)
    assert (
        str(input_error(str(path), "preference"))
        == f"{path}: unpaired data (KTO labels): preference training needs chosen and rejected answers for one prompt"
    )


def test_kto_csv_labels(tmp_path):
    path = write_csv(
        tmp_path / "kto.csv",
        ["prompt", "completion", "label", "lang"],
        [
            ["Sky colour?", "Blue.", "True", "en"],
            ["Sky colour?", "Plaid.", "false", "en"],
        ],
    )
    assert [r["messages"] for r in load_records(str(path), "sft")] == [[U("Sky colour?"), A("Blue.")]]


def test_bad_kto_rows(tmp_path):
    bad_tag = write_jsonl(tmp_path / "tag.jsonl", [{"messages": [U("q"), A("a")], "kto_tag": "maybe", "lang": "en"}])
    assert str(input_error(str(bad_tag))) == f"{bad_tag}:1: field 'kto_tag': expected true or false, got 'maybe'"
    # an undesirable row is still checked
    bad_row = write_jsonl(
        tmp_path / "row.jsonl", [{"messages": [U("q"), {"role": "bot", "content": "a"}], "label": False, "lang": "en"}]
    )
    assert str(input_error(str(bad_row))).startswith(f"{bad_row}:1: field 'messages[1].role': unknown role 'bot'")
    # a row without its label is not silently desirable
    unlabelled = write_jsonl(tmp_path / "mixed.jsonl", [KTO_ROWS[0], {"prompt": "q", "completion": "a", "lang": "en"}])
    assert str(input_error(str(unlabelled))).startswith(f"{unlabelled}:2: row does not match this file's format (kto)")


def test_a_label_that_is_no_boolean_is_not_kto(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U("q"), A("a")], "label": "chitchat", "lang": "en"}])
    assert load_records(str(path), "sft")[0]["messages"] == [U("q"), A("a")]


def test_iter_records_counts_what_it_skips(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)
    skipped = Counter()
    assert len(list(iter_records(str(path), "sft", skipped=skipped))) == 3
    assert skipped == {"undesirable (KTO label false)": 2}


def test_unknown_format_lists_the_new_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "lang": "en"}])
    message = str(input_error(str(path)))
    for name in (
        "inputs/targets (Aya, xP3)",
        "label or kto_tag (KTO)",
        "chosen_messages/rejected_messages",
        "conversations/chosen/rejected (ShareGPT preference)",
        "conversation_a/conversation_b/winner",
        "prompt/response_a/response_b",
    ):
        assert name in message


# ------------------------------------------------------------------------------------------------ file types

CHAT_ROWS = [
    {"messages": [U("Hola"), A("¡Hola! ¿Qué tal?")], "lang": "es"},
    {"messages": [U("Hallo"), A("Hallo, wie geht's?")], "lang": "de"},
]
CHAT_RECORDS = [[U("Hola"), A("¡Hola! ¿Qué tal?")], [U("Hallo"), A("Hallo, wie geht's?")]]


def test_json_array(tmp_path):
    path = write_json(tmp_path / "arr.json", CHAT_ROWS)
    records = load_records(str(path), "sft")
    assert [r["messages"] for r in records] == CHAT_RECORDS
    assert [(r["lang"], r["id"], r["source"]) for r in records] == [("es", "arr-0", "arr"), ("de", "arr-1", "arr")]


def test_json_file_that_is_really_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", CHAT_ROWS)
    records = load_records(str(path), "sft")
    assert [r["messages"] for r in records] == CHAT_RECORDS
    assert [r["id"] for r in records] == ["lines-0", "lines-1"]


def test_json_wrapper_object_with_one_list(tmp_path):
    path = write_json(tmp_path / "wrapped.json", {"data": CHAT_ROWS, "version": 2})
    assert [r["messages"] for r in load_records(str(path), "sft")] == CHAT_RECORDS


def test_json_file_holding_a_single_record_object(tmp_path):
    # One record written as a bare object is one record, even though it has a single list-valued field.
    path = write_json(tmp_path / "one.json", CHAT_ROWS[0])
    assert load_records(str(path), "sft") == [
        {"messages": CHAT_RECORDS[0], "lang": "es", "id": "one-0", "source": "one"},
    ]


def test_parquet(tmp_path):
    path = write_parquet(
        tmp_path / "train.parquet",
        [
            {"messages": [U("Bonjour"), A("Salut !")], "lang": "fr", "id": "p1"},
            {"messages": [S("Sois bref."), U("Merci"), A("De rien.")], "lang": "French", "id": "p2"},
        ],
    )
    assert load_records(str(path), "sft") == [
        {"messages": [U("Bonjour"), A("Salut !")], "lang": "fr", "id": "p1", "source": "train"},
        {"messages": [S("Sois bref."), U("Merci"), A("De rien.")], "lang": "fr", "id": "p2", "source": "train"},
    ]


def test_parquet_preferences(tmp_path):
    path = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"prompt": "Best pet?", "chosen": "A cat.", "rejected": "A rock.", "lang": "en"},
        ],
    )
    assert load_records(str(path), "preference") == [
        {
            "prompt": [U("Best pet?")],
            "chosen": [A("A cat.")],
            "rejected": [A("A rock.")],
            "lang": "en",
            "id": "pairs-0",
            "source": "pairs",
        },
    ]


def test_csv_messages_as_json_cells(tmp_path):
    path = write_csv(
        tmp_path / "chats.csv",
        ["messages", "lang", "id"],
        [
            [json.dumps([U("Olá"), A("Olá! Tudo bem?")], ensure_ascii=False), "pt-BR", "c1"],
            [json.dumps([U("Hej"), A("Hej hej!")]), "Swedish", ""],
        ],
    )
    assert load_records(str(path), "sft") == [
        {"messages": [U("Olá"), A("Olá! Tudo bem?")], "lang": "pt", "id": "c1", "source": "chats"},
        {"messages": [U("Hej"), A("Hej hej!")], "lang": "sv", "id": "chats-1", "source": "chats"},
    ]


def test_csv_alpaca_columns(tmp_path):
    path = write_csv(
        tmp_path / "alpaca.csv",
        ["instruction", "input", "output", "lang"],
        [
            ["Summarise.", "A long, long text.", "Text.", "en"],
            ["Count to three.", "", "1, 2, 3", "en"],
        ],
    )
    assert load_records(str(path), "sft") == [
        {
            "messages": [U("Summarise.\n\nA long, long text."), A("Text.")],
            "lang": "en",
            "id": "alpaca-0",
            "source": "alpaca",
        },
        {"messages": [U("Count to three."), A("1, 2, 3")], "lang": "en", "id": "alpaca-1", "source": "alpaca"},
    ]


def test_csv_saved_by_excel_with_a_byte_order_mark(tmp_path):
    # Excel's "CSV UTF-8" writes a BOM and CRLF line ends; the first column is still 'instruction'.
    path = tmp_path / "excel.csv"
    path.write_bytes("instruction,input,output,lang\r\nSay hi.,,Hi!,en\r\n".encode("utf-8-sig"))
    assert load_records(str(path), "sft") == [
        {"messages": [U("Say hi."), A("Hi!")], "lang": "en", "id": "excel-0", "source": "excel"},
    ]


def test_folder_of_mixed_files_detects_each_format(tmp_path):
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a_messages.jsonl", [{"messages": [U("m-q"), A("m-a")], "lang": "en"}])
    write_csv(folder / "b_alpaca.csv", ["instruction", "input", "output", "lang"], [["a-q", "", "a-a", "fr"]])
    write_json(
        folder / "c_sharegpt.json",
        [
            {"conversations": [{"from": "human", "value": "s-q"}, {"from": "gpt", "value": "s-a"}], "lang": "de"},
        ],
    )
    write_parquet(folder / "sub" / "d_pc.parquet", [{"prompt": "pc-q", "completion": "pc-a", "lang": "es"}])
    write_jsonl(
        folder / "e_share.jsonl",
        [
            {"conversations": [{"from": "user", "value": "r-q"}, {"from": "assistant", "value": "r-a"}], "lang": "it"},
        ],
    )
    # not data: ignored
    (folder / "README.md").write_text("# corpus\n")
    write_jsonl(folder / ".cache" / "junk.jsonl", [{"nonsense": 1}])
    write_jsonl(folder / ".hidden.jsonl", [{"nonsense": 1}])

    records = load_records(str(folder), "sft")
    assert [(r["messages"], r["lang"], r["source"], r["id"]) for r in records] == [
        ([U("m-q"), A("m-a")], "en", "a_messages", "a_messages-0"),
        ([U("a-q"), A("a-a")], "fr", "b_alpaca", "b_alpaca-0"),
        ([U("s-q"), A("s-a")], "de", "c_sharegpt", "c_sharegpt-0"),
        ([U("r-q"), A("r-a")], "it", "e_share", "e_share-0"),
        ([U("pc-q"), A("pc-a")], "es", "d_pc", "d_pc-0"),
    ]


def test_list_of_paths(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [CHAT_ROWS[0]])
    b = write_json(tmp_path / "b.json", [CHAT_ROWS[1]])
    records = load_records([str(a), str(b)], "sft")
    assert [(r["messages"], r["source"]) for r in records] == [(CHAT_RECORDS[0], "a"), (CHAT_RECORDS[1], "b")]


def test_datasets_save_to_disk_folder(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(
        [
            {"prompt": "Quelle heure est-il ?", "completion": "Il est midi.", "lang": "fr"},
            {"prompt": "Wie heißt du?", "completion": "Ich heiße Poly.", "lang": "de"},
        ]
    ).save_to_disk(str(folder))
    assert load_records(str(folder), "sft") == [
        {"messages": [U("Quelle heure est-il ?"), A("Il est midi.")], "lang": "fr", "id": "saved-0", "source": "saved"},
        {"messages": [U("Wie heißt du?"), A("Ich heiße Poly.")], "lang": "de", "id": "saved-1", "source": "saved"},
    ]


def test_datasets_save_to_disk_dataset_dict_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": "train prompt", "lang": "en"}]),
            "test": datasets.Dataset.from_list([{"prompt": "test prompt", "lang": "en"}]),
        }
    ).save_to_disk(str(folder))
    assert [r["prompt"] for r in load_records(str(folder), "prompt")] == [[U("train prompt")]]
    assert [r["prompt"] for r in load_records([{"path": str(folder), "split": "test"}], "prompt")] == [
        [U("test prompt")]
    ]
    error = input_error([{"path": str(folder), "split": "validation"}], "prompt")
    assert str(error) == f"dataset '{folder}' split 'validation': no split 'validation'"


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_json_line_names_the_physical_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(CHAT_ROWS[0])
    path.write_text(f'{good}\n\n{good}\n{{"messages": [\n{good}\n', encoding="utf-8")
    error = input_error(str(path))
    assert str(error).startswith(f"{path}:4: invalid JSON (")
    assert (error.line, error.field) == (4, None)


def test_bad_json_in_a_json_array_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "ok", "lang": "en"},\n  {"prompt": }\n]\n', encoding="utf-8")
    assert str(input_error(str(path), "prompt")).startswith(f"{path}:3: invalid JSON (")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(CHAT_ROWS[0]) + "\n[1, 2]\n", encoding="utf-8")
    assert str(input_error(str(path))) == f"{path}:2: expected a JSON object, got list"


def test_missing_content_names_the_field(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            CHAT_ROWS[0],
            {"messages": [{"role": "user"}, A("hi")], "lang": "en"},
        ],
    )
    error = input_error(str(path))
    assert str(error) == f"{path}:2: field 'messages[0].content': missing"
    assert (error.source, error.line, error.field) == (str(path), 2, "messages[0].content")


def test_missing_role_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U("hi"), {"content": "hello"}], "lang": "en"}])
    assert str(input_error(str(path))) == f"{path}:1: field 'messages[1].role': missing"


def test_unknown_message_role(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            CHAT_ROWS[0],
            CHAT_ROWS[1],
            {"messages": [U("hi"), {"role": "bot", "content": "hello"}], "lang": "en"},
        ],
    )
    assert (
        str(input_error(str(path)))
        == f"{path}:3: field 'messages[1].role': unknown role 'bot' (expected system, user, assistant, tool)"
    )


def test_unknown_sharegpt_speaker(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}], "lang": "en"},
        ],
    )
    assert (
        str(input_error(str(path)))
        == f"{path}:1: field 'conversations[1].from': unknown role 'bot' (expected human, gpt, system)"
    )


def test_missing_sharegpt_value(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}], "lang": "en"},
        ],
    )
    assert str(input_error(str(path))) == f"{path}:1: field 'conversations[1].value': missing"


def test_conversation_without_an_assistant_answer(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U("hi"), A("  ")], "lang": "en"}])
    assert str(input_error(str(path))) == f"{path}:1: field 'messages': no assistant message with content to train on"


def test_alpaca_empty_output(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Do it.", "output": " ", "lang": "en"}])
    assert str(input_error(str(path))) == f"{path}:1: field 'output': empty text"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert str(input_error(str(path))) == f"{path}: empty file"


def test_file_of_blank_lines_has_no_records(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n")
    assert str(input_error(str(path))) == f"{path}: no records"


def test_empty_folder(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    assert str(input_error(str(folder))).startswith(f"{folder}: folder holds no data files (")
    (folder / "notes.txt").write_text("not data")
    assert str(input_error(str(folder))).startswith(f"{folder}: folder holds no data files (")


def test_error_in_a_folder_names_the_file_not_the_folder(tmp_path):
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a.jsonl", [CHAT_ROWS[0]])
    bad = write_jsonl(folder / "b.jsonl", [CHAT_ROWS[1], {"messages": [U("x"), {"role": "bot", "content": "y"}]}])
    assert str(input_error(str(folder))).startswith(f"{bad}:2: field 'messages[1].role': unknown role 'bot'")


def test_unrecognised_format_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": 1, "lang": "en"}])
    message = str(input_error(str(path)))
    assert message.startswith(f"{path}:1: unrecognised format (columns: label, lang, text); expected one of: ")
    for name in ("messages", "conversations", "instruction/output", "prompt/chosen/rejected"):
        assert name in message


def test_row_of_another_kind_mid_file(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [CHAT_ROWS[0], {"prompt": "only a prompt", "lang": "en"}])
    assert str(input_error(str(path))).startswith(f"{path}:2: row does not match this file's format (messages): ")


@pytest.mark.parametrize("field", ["lang", "language"])
def test_unknown_language_name_in_a_row(tmp_path, field):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT_ROWS[0], {"messages": [U("nuqneH"), A("nuqneH")], field: "Klingon"}])
    error = input_error(str(path))
    assert str(error).startswith(f"{path}:2: field '{field}': unknown language 'Klingon'")
    assert error.field == field


def test_unknown_language_on_a_source(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT_ROWS[0]])
    with pytest.raises(ConfigError) as info:
        load_records([{"path": str(path), "lang": "Klingon"}], "sft")
    assert str(info.value).startswith("command line: 'dataset[0].lang': unknown language 'Klingon'")


def test_prompt_only_file_requested_as_sft(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi", "lang": "en"}])
    assert (
        str(input_error(str(path)))
        == f"{path}:1: holds prompt data (prompt records), which cannot serve as sft records"
    )


def test_mt_bench_file_requested_as_sft(tmp_path):
    path = write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": ["a", "b"], "lang": "en"}])
    assert (
        str(input_error(str(path)))
        == f"{path}:1: holds mt_bench data (prompt records), which cannot serve as sft records"
    )


def test_sft_file_requested_as_preference(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    assert (
        str(input_error(str(path), "preference"))
        == f"{path}:1: holds messages data (sft records), which cannot serve as preference records"
    )


def test_bad_hh_transcript(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": "just some text", "rejected": "\n\nHuman: a\n\nAssistant: b", "lang": "en"},
        ],
    )
    assert str(input_error(str(path), "preference")).startswith(f"{path}:1: field 'chosen': not an HH transcript")


def test_hh_transcript_ending_with_human(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {
                "chosen": "\n\nHuman: a\n\nAssistant: b",
                "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c",
                "lang": "en",
            },
        ],
    )
    assert (
        str(input_error(str(path), "preference"))
        == f"{path}:1: field 'rejected': transcript does not end with an Assistant turn"
    )


def test_preference_completion_with_a_user_turn(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Q", "chosen": [A("a"), U("more?"), A("b")], "rejected": "c", "lang": "en"},
        ],
    )
    assert (
        str(input_error(str(path), "preference"))
        == f"{path}:1: field 'chosen': expected only assistant turns after the prompt"
    )


def test_csv_row_with_broken_json_cell(tmp_path):
    path = write_csv(
        tmp_path / "chats.csv",
        ["messages", "lang"],
        [
            [json.dumps([U("a"), A("b")]), "en"],
            ['[{"role": "user", "content": "a"}, {"role": ', "en"],
        ],
    )
    error = input_error(str(path))
    assert str(error).startswith(f"{path} row 2: field 'messages': invalid JSON in cell (")
    assert (error.row, error.line, error.field) == (2, None, "messages")


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,output,lang\nq,a,en\nq,a,en,extra\n", encoding="utf-8")
    assert str(input_error(str(path))) == f"{path} row 2: more cells than header columns"


def test_json_array_row_error_names_the_row(tmp_path):
    path = write_json(
        tmp_path / "arr.json", [CHAT_ROWS[0], CHAT_ROWS[1], {"messages": [U("x"), {"role": "bot", "content": "y"}]}]
    )
    assert str(input_error(str(path))).startswith(f"{path} row 3: field 'messages[1].role': unknown role 'bot'")


def test_parquet_row_error_names_the_row(tmp_path):
    path = write_parquet(
        tmp_path / "t.parquet",
        [
            {"instruction": "q1", "output": "a1", "lang": "en"},
            {"instruction": "q2", "output": None, "lang": "en"},
        ],
    )
    assert str(input_error(str(path))) == f"{path} row 2: field 'output': missing"


def test_saved_dataset_row_error_names_the_dataset_and_row(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(
        [
            {"instruction": "q1", "output": "a1", "lang": "en"},
            {"instruction": "q2", "output": "a2", "lang": "Klingon"},
        ]
    ).save_to_disk(str(folder))
    assert str(input_error(str(folder))).startswith(
        f"dataset '{folder}' split 'train' row 2: field 'lang': unknown language 'Klingon'"
    )


def test_nonexistent_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(input_error("./nope.jsonl")) == "./nope.jsonl: no such file or folder"
    assert str(input_error("nope.jsonl")) == "nope.jsonl: no such file or folder"
    missing = tmp_path / "missing" / "data"
    assert str(input_error(str(missing))) == f"{missing}: no such file or folder"


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    assert str(input_error(str(path))).startswith(f"{path}: unsupported file type '.txt'")


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def restore_logging():
    """align.cli.main configures the root logger; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _warm_sft_imports(capsys):
    # Importing trl/peft/bitsandbytes the first time may log the libraries' own warnings to stderr; do it before
    # the command so that stderr holds only what polyalign prints.
    import trl

    trl.SFTConfig  # noqa: B018  (trl imports lazily)
    capsys.readouterr()


def test_cli_sft_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, capsys, restore_logging):
    from align.cli import main

    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            CHAT_ROWS[0],
            {"messages": [U("hi"), {"role": "bot", "content": "hello"}], "lang": "en"},
        ],
    )
    out = tmp_path / "out"
    _warm_sft_imports(capsys)
    assert main(["sft", "--dataset", str(bad), "--output_dir", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("polyalign sft: error: ")
    assert f"{bad}:2: field 'messages[1].role'" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no out/, no .out.partial


def test_cli_sft_missing_dataset_file(tmp_path, capsys, restore_logging, monkeypatch):
    from align.cli import main

    monkeypatch.chdir(tmp_path)
    _warm_sft_imports(capsys)
    assert main(["sft", "--dataset", "./nope.jsonl", "--output_dir", "out"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["polyalign sft: error: ./nope.jsonl: no such file or folder"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ weights


def _ten(tmp_path, name="ten") -> Path:
    return write_jsonl(
        tmp_path / f"{name}.jsonl",
        [{"messages": [U(f"q{i}"), A(f"a{i}")], "lang": "en", "id": f"{name}{i}"} for i in range(10)],
    )


def test_weight_two_repeats_every_record(tmp_path):
    path = _ten(tmp_path)
    ids = [f"ten{i}" for i in range(10)]
    assert [r["id"] for r in load_records([{"path": str(path), "weight": 2.0}], "sft")] == ids + ids
    assert [r["id"] for r in load_records([{"path": str(path), "weight": 2}], "sft")] == ids + ids


def test_weight_half_keeps_a_seeded_half(tmp_path):
    path = _ten(tmp_path)
    spec = [{"path": str(path), "weight": 0.5}]
    first = [r["id"] for r in load_records(spec, "sft", seed=3)]
    assert len(first) == 5
    assert len(set(first)) == 5 and set(first) <= {f"ten{i}" for i in range(10)}
    assert first == sorted(first, key=lambda s: int(s[3:]))  # original order kept
    assert [r["id"] for r in load_records(spec, "sft", seed=3)] == first  # deterministic for a seed
    samples = {tuple(r["id"] for r in load_records(spec, "sft", seed=s)) for s in range(8)}
    assert len(samples) > 1  # the seed matters


def test_fractional_weight_above_one(tmp_path):
    path = _ten(tmp_path)
    ids = [r["id"] for r in load_records([{"path": str(path), "weight": 1.5}], "sft")]
    assert len(ids) == 15
    assert ids[:10] == [f"ten{i}" for i in range(10)]
    assert len(set(ids[10:])) == 5


def test_weights_apply_per_source(tmp_path):
    a, b = _ten(tmp_path, "a"), _ten(tmp_path, "b")
    records = load_records([{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}], "sft")
    assert sum(r["source"] == "a" for r in records) == 20
    assert sum(r["source"] == "b" for r in records) == 5


def test_datasource_objects_are_accepted(tmp_path):
    path = _ten(tmp_path)
    assert len(load_records([DataSource(path=str(path), weight=3)], "sft")) == 30


@pytest.mark.parametrize("weight", [0, -1, "x", None, math.nan, math.inf])
def test_invalid_weight(tmp_path, weight):
    path = _ten(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_records([{"path": str(path)}, {"path": str(path), "weight": weight}], "sft")
    assert str(info.value).startswith("command line: 'dataset[1].weight': must be a positive number, got ")


def test_unknown_source_key_and_missing_path(tmp_path):
    path = _ten(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_records([{"path": str(path), "wieght": 2}], "sft")
    assert str(info.value).startswith("command line: 'dataset[0].wieght': unknown key")
    with pytest.raises(ConfigError) as info:
        load_records([{"weight": 2}], "sft")
    assert str(info.value) == "command line: 'dataset[0].path': missing"


def test_empty_dataset_list():
    # `dataset: []` in a recipe: the error must name the key, like parse_sources does.
    with pytest.raises(ConfigError) as info:
        load_records([], "sft")
    assert str(info.value) == "command line: 'dataset': empty list"


def test_a_training_stage_says_what_its_data_skipped(tmp_path):
    from align.stages.sft import SFTStage, parse_sft_config

    path = write_jsonl(tmp_path / "kto.jsonl", KTO_ROWS)
    stage = SFTStage(parse_sft_config({"model": "unused", "dataset": str(path), "output_dir": str(tmp_path / "out")}))
    assert stage.load().endswith("; skipped 2 rows: undesirable (KTO label false) 2")


@pytest.mark.parametrize("stage", ["sft", "dpo", "reward"])
def test_a_file_that_is_not_utf8_is_one_line_naming_line_and_field(tmp_path, capsys, stage, tiny_model_dir):
    """A Latin-1 export (é as the single byte 0xe9) stops every training stage before a model loads."""
    from align.cli import main

    good = {
        "sft": {"messages": [U("Bonjour"), A("Salut")]},
        "dpo": {"prompt": "Bonjour", "chosen": "Salut", "rejected": "Non"},
    }
    row = good.get(stage, good["dpo"])
    bad = dict(row, **({"messages": [U("Où est la gare ?"), A("Là.")]} if stage == "sft" else {"chosen": "Là."}))
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((json.dumps(row) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n").encode("latin-1"))
    assert (
        main([stage, "--model", str(tiny_model_dir), "--dataset", str(path), "--output_dir", str(tmp_path / "out")])
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    field = "content" if stage == "sft" else "chosen"
    assert err == [
        f"polyalign {stage}: error: {path}:2: field '{field}': not UTF-8: byte 0x{'f9' if stage == 'sft' else 'e0'}"
        f" at column {err[0].split('at column ')[1].split(' ')[0]} (save the file as UTF-8)"
    ], err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_recipe_that_is_not_utf8_names_its_line(tmp_path, capsys):
    from align.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_bytes("model: smollm2-135m\n# défaut\n".encode("latin-1"))
    assert main(["sft", "--config", str(recipe)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"polyalign sft: error: {recipe}:2: not UTF-8: byte 0xe9 (save the file as UTF-8)"
    )
