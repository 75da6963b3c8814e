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
from pathlib import Path

import pytest

from align.data import DataSource, load_records
from align.errors import ConfigError, InputError

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
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [U("Bonjour !"), A("Bonjour, comment puis-je aider ?")], "lang": "fr"},
        {"messages": [S("Sei breve."), U("Ciao"), A("Ciao!"), U("Come stai?"), A("Bene.")], "lang": "it",
         "id": 42, "source": "my-corpus", "category": "chat", "unrelated": "dropped"},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Bonjour !"), A("Bonjour, comment puis-je aider ?")], "lang": "fr", "id": "chats-0",
         "source": "chats"},
        {"messages": [S("Sei breve."), U("Ciao"), A("Ciao!"), U("Come stai?"), A("Bene.")], "lang": "it",
         "id": "42", "source": "my-corpus", "category": "chat"},
    ]


def test_messages_drop_extra_message_keys_and_allow_empty_system(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi", "name": "bob"},
                      {"role": "assistant", "content": "Hello", "weight": 1}], "lang": "en"},
    ])
    assert load_records(str(path), "sft")[0]["messages"] == [S(""), U("Hi"), A("Hello")]


def test_sharegpt_conversations(tmp_path):
    path = write_jsonl(tmp_path / "share.jsonl", [
        {"conversations": [{"from": "system", "value": "Du bist hilfreich."},
                           {"from": "human", "value": "Wie spät ist es?"},
                           {"from": "gpt", "value": "Es ist drei Uhr."},
                           {"from": "Human", "value": "Danke."},
                           {"from": "GPT", "value": "Gern geschehen."}], "lang": "de", "id": "x1"},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [S("Du bist hilfreich."), U("Wie spät ist es?"), A("Es ist drei Uhr."), U("Danke."),
                      A("Gern geschehen.")], "lang": "de", "id": "x1", "source": "share"},
    ]


def test_alpaca_with_and_without_input(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "lang": "en"},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red.", "lang": "en"},
        {"instruction": "Say hi.", "output": "Hi!", "lang": "en"},
        {"instruction": "Answer briefly.", "input": "2+2?", "response": "4", "system": "Be terse.", "lang": "en"},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Translate to French.\n\nGood morning"), A("Bonjour")], "lang": "en", "id": "alpaca-0",
         "source": "alpaca"},
        {"messages": [U("Name a primary colour."), A("Red.")], "lang": "en", "id": "alpaca-1", "source": "alpaca"},
        {"messages": [U("Say hi."), A("Hi!")], "lang": "en", "id": "alpaca-2", "source": "alpaca"},
        {"messages": [S("Be terse."), U("Answer briefly.\n\n2+2?"), A("4")], "lang": "en", "id": "alpaca-3",
         "source": "alpaca"},
    ]


def test_prompt_completion_strings_and_message_lists(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "What is 2+2?", "completion": "4", "lang": "en"},
        {"prompt": [S("Be kind."), U("Hi"), A("Hello!"), U("Bye")], "completion": [A("Goodbye!")], "lang": "en"},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("What is 2+2?"), A("4")], "lang": "en", "id": "pc-0", "source": "pc"},
        {"messages": [S("Be kind."), U("Hi"), A("Hello!"), U("Bye"), A("Goodbye!")], "lang": "en", "id": "pc-1",
         "source": "pc"},
    ]


def test_mt_bench_turns_become_a_prompt_record(tmp_path):
    path = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 81, "category": "writing", "lang": "en",
         "turns": ["Write a travel blog post about Hawaii.", "Rewrite it starting every sentence with A."]},
    ])
    assert load_records(str(path), "prompt") == [
        {"prompt": [U("Write a travel blog post about Hawaii.")],
         "turns": ["Write a travel blog post about Hawaii.", "Rewrite it starting every sentence with A."],
         "lang": "en", "id": "81", "source": "question", "category": "writing"},
    ]


def test_plain_prompt_records(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "Tell me a joke.", "lang": "en"},
        {"prompt": [S("Be brief."), U("Tell me a fact.")], "lang": "en", "reference": "Water is wet."},
    ])
    assert load_records(str(path), "prompt") == [
        {"prompt": [U("Tell me a joke.")], "lang": "en", "id": "prompts-0", "source": "prompts"},
        {"prompt": [S("Be brief."), U("Tell me a fact.")], "lang": "en", "id": "prompts-1", "source": "prompts",
         "reference": "Water is wet."},
    ]


def test_preference_with_strings(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "lang": "en",
         "chosen_score": 9.5, "rejected_score": 2.0},
    ])
    assert load_records(str(path), "preference") == [
        {"prompt": [U("Capital of France?")], "chosen": [A("Paris.")], "rejected": [A("Lyon.")], "lang": "en",
         "id": "prefs-0", "source": "prefs", "chosen_score": 9.5, "rejected_score": 2.0},
    ]


def test_preference_with_message_lists(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        # prompt as a multi-turn list, completions as assistant-only lists
        {"prompt": [S("Be terse."), U("Hi"), A("Hello."), U("2+2?")], "chosen": [A("4")], "rejected": [A("5")],
         "lang": "en"},
        # completions that repeat the prompt: the repeated prefix is dropped
        {"prompt": [U("Colour of the sky?")], "chosen": [U("Colour of the sky?"), A("Blue.")],
         "rejected": [U("Colour of the sky?"), A("Green.")], "lang": "en"},
    ])
    assert load_records(str(path), "preference") == [
        {"prompt": [S("Be terse."), U("Hi"), A("Hello."), U("2+2?")], "chosen": [A("4")], "rejected": [A("5")],
         "lang": "en", "id": "prefs-0", "source": "prefs"},
        {"prompt": [U("Colour of the sky?")], "chosen": [A("Blue.")], "rejected": [A("Green.")], "lang": "en",
         "id": "prefs-1", "source": "prefs"},
    ]


def test_hh_transcripts_shared_prefix_becomes_prompt(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: What is the capital of Spain?\n\nAssistant: Madrid.",
         "rejected": "\n\nHuman: What is the capital of Spain?\n\nAssistant: Barcelona.", "lang": "en"},
        # multi-turn: everything up to the last Human turn is shared, so it is the prompt
        {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                   "\n\nAssistant: An apple.",
         "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                     "\n\nAssistant: A carrot.", "lang": "en"},
        # without the leading blank lines
        {"chosen": "Human: Say yes.\n\nAssistant: Yes.", "rejected": "Human: Say yes.\n\nAssistant: No.",
         "lang": "en"},
    ])
    assert load_records(str(path), "preference") == [
        {"prompt": [U("What is the capital of Spain?")], "chosen": [A("Madrid.")], "rejected": [A("Barcelona.")],
         "lang": "en", "id": "hh-0", "source": "hh"},
        {"prompt": [U("Hi there"), A("Hello! How can I help?"), U("Name a fruit.")], "chosen": [A("An apple.")],
         "rejected": [A("A carrot.")], "lang": "en", "id": "hh-1", "source": "hh"},
        {"prompt": [U("Say yes.")], "chosen": [A("Yes.")], "rejected": [A("No.")], "lang": "en", "id": "hh-2",
         "source": "hh"},
    ]


def test_implicit_prompt_message_list_preferences(tmp_path):
    path = write_jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke."), A("Why did the chicken...")],
         "rejected": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke."), A("No.")], "lang": "en"},
        {"chosen": [U("Q"), A("good answer")], "rejected": [U("Q"), A("bad answer")], "lang": "en"},
    ])
    assert load_records(str(path), "preference") == [
        {"prompt": [S("Be nice."), U("Hi"), A("Hello!"), U("Tell me a joke.")],
         "chosen": [A("Why did the chicken...")], "rejected": [A("No.")], "lang": "en", "id": "implicit-0",
         "source": "implicit"},
        {"prompt": [U("Q")], "chosen": [A("good answer")], "rejected": [A("bad answer")], "lang": "en",
         "id": "implicit-1", "source": "implicit"},
    ]


def test_preference_requested_as_sft_trains_on_chosen(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Milan.", "lang": "en", "chosen_score": 8},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Capital of Italy?"), A("Rome.")], "lang": "en", "id": "prefs-0", "source": "prefs",
         "chosen_score": 8},
    ]


def test_sft_requested_as_prompts_keeps_up_to_the_last_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [S("sys"), U("first"), A("one"), U("second"), A("two")], "lang": "en"},
    ])
    assert load_records(str(path), "prompt") == [
        {"prompt": [S("sys"), U("first"), A("one"), U("second")], "lang": "en", "id": "chat-0", "source": "chat"},
    ]


def test_preference_requested_as_prompts(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "P?", "chosen": "a", "rejected": "b", "lang": "en"}])
    assert load_records(str(path), "prompt") == [
        {"prompt": [U("P?")], "lang": "en", "id": "pref-0", "source": "pref"},
    ]


def test_same_kind_formats_may_mix_in_one_file(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [U("a"), A("b")], "lang": "en"},
        {"conversations": [{"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}], "lang": "en"},
        {"instruction": "e", "output": "f", "lang": "en"},
    ])
    assert [r["messages"] for r in load_records(str(path), "sft")] == [[U("a"), A("b")], [U("c"), A("d")],
                                                                        [U("e"), A("f")]]


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
    path = write_parquet(tmp_path / "train.parquet", [
        {"messages": [U("Bonjour"), A("Salut !")], "lang": "fr", "id": "p1"},
        {"messages": [S("Sois bref."), U("Merci"), A("De rien.")], "lang": "French", "id": "p2"},
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Bonjour"), A("Salut !")], "lang": "fr", "id": "p1", "source": "train"},
        {"messages": [S("Sois bref."), U("Merci"), A("De rien.")], "lang": "fr", "id": "p2", "source": "train"},
    ]


def test_parquet_preferences(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", [
        {"prompt": "Best pet?", "chosen": "A cat.", "rejected": "A rock.", "lang": "en"},
    ])
    assert load_records(str(path), "preference") == [
        {"prompt": [U("Best pet?")], "chosen": [A("A cat.")], "rejected": [A("A rock.")], "lang": "en",
         "id": "pairs-0", "source": "pairs"},
    ]


def test_csv_messages_as_json_cells(tmp_path):
    path = write_csv(tmp_path / "chats.csv", ["messages", "lang", "id"], [
        [json.dumps([U("Olá"), A("Olá! Tudo bem?")], ensure_ascii=False), "pt-BR", "c1"],
        [json.dumps([U("Hej"), A("Hej hej!")]), "Swedish", ""],
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Olá"), A("Olá! Tudo bem?")], "lang": "pt", "id": "c1", "source": "chats"},
        {"messages": [U("Hej"), A("Hej hej!")], "lang": "sv", "id": "chats-1", "source": "chats"},
    ]


def test_csv_alpaca_columns(tmp_path):
    path = write_csv(tmp_path / "alpaca.csv", ["instruction", "input", "output", "lang"], [
        ["Summarise.", "A long, long text.", "Text.", "en"],
        ["Count to three.", "", "1, 2, 3", "en"],
    ])
    assert load_records(str(path), "sft") == [
        {"messages": [U("Summarise.\n\nA long, long text."), A("Text.")], "lang": "en", "id": "alpaca-0",
         "source": "alpaca"},
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
    write_json(folder / "c_sharegpt.json", [
        {"conversations": [{"from": "human", "value": "s-q"}, {"from": "gpt", "value": "s-a"}], "lang": "de"},
    ])
    write_parquet(folder / "sub" / "d_pc.parquet", [{"prompt": "pc-q", "completion": "pc-a", "lang": "es"}])
    write_jsonl(folder / "e_share.jsonl", [
        {"conversations": [{"from": "user", "value": "r-q"}, {"from": "assistant", "value": "r-a"}], "lang": "it"},
    ])
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
    datasets.Dataset.from_list([
        {"prompt": "Quelle heure est-il ?", "completion": "Il est midi.", "lang": "fr"},
        {"prompt": "Wie heißt du?", "completion": "Ich heiße Poly.", "lang": "de"},
    ]).save_to_disk(str(folder))
    assert load_records(str(folder), "sft") == [
        {"messages": [U("Quelle heure est-il ?"), A("Il est midi.")], "lang": "fr", "id": "saved-0",
         "source": "saved"},
        {"messages": [U("Wie heißt du?"), A("Ich heiße Poly.")], "lang": "de", "id": "saved-1", "source": "saved"},
    ]


def test_datasets_save_to_disk_dataset_dict_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": "train prompt", "lang": "en"}]),
        "test": datasets.Dataset.from_list([{"prompt": "test prompt", "lang": "en"}]),
    }).save_to_disk(str(folder))
    assert [r["prompt"] for r in load_records(str(folder), "prompt")] == [[U("train prompt")]]
    assert [r["prompt"] for r in load_records([{"path": str(folder), "split": "test"}], "prompt")] == \
        [[U("test prompt")]]
    error = input_error([{"path": str(folder), "split": "validation"}], "prompt")
    assert str(error) == f"dataset '{folder}' split 'validation': no split 'validation'"


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_json_line_names_the_physical_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(CHAT_ROWS[0])
    path.write_text(f"{good}\n\n{good}\n{{\"messages\": [\n{good}\n", encoding="utf-8")
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
    path = write_jsonl(tmp_path / "c.jsonl", [
        CHAT_ROWS[0],
        {"messages": [{"role": "user"}, A("hi")], "lang": "en"},
    ])
    error = input_error(str(path))
    assert str(error) == f"{path}:2: field 'messages[0].content': missing"
    assert (error.source, error.line, error.field) == (str(path), 2, "messages[0].content")


def test_missing_role_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U("hi"), {"content": "hello"}], "lang": "en"}])
    assert str(input_error(str(path))) == f"{path}:1: field 'messages[1].role': missing"


def test_unknown_message_role(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        CHAT_ROWS[0], CHAT_ROWS[1],
        {"messages": [U("hi"), {"role": "bot", "content": "hello"}], "lang": "en"},
    ])
    assert str(input_error(str(path))) == \
        f"{path}:3: field 'messages[1].role': unknown role 'bot' (expected system, user, assistant, tool)"


def test_unknown_sharegpt_speaker(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}], "lang": "en"},
    ])
    assert str(input_error(str(path))) == \
        f"{path}:1: field 'conversations[1].from': unknown role 'bot' (expected human, gpt, system)"


def test_missing_sharegpt_value(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}], "lang": "en"},
    ])
    assert str(input_error(str(path))) == f"{path}:1: field 'conversations[1].value': missing"


def test_conversation_without_an_assistant_answer(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U("hi"), A("  ")], "lang": "en"}])
    assert str(input_error(str(path))) == \
        f"{path}:1: field 'messages': no assistant message with content to train on"


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
    assert str(input_error(str(path))) == \
        f"{path}:1: holds prompt data (prompt records), which cannot serve as sft records"


def test_mt_bench_file_requested_as_sft(tmp_path):
    path = write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": ["a", "b"], "lang": "en"}])
    assert str(input_error(str(path))) == \
        f"{path}:1: holds mt_bench data (prompt records), which cannot serve as sft records"


def test_sft_file_requested_as_preference(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    assert str(input_error(str(path), "preference")) == \
        f"{path}:1: holds messages data (sft records), which cannot serve as preference records"


def test_bad_hh_transcript(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "just some text", "rejected": "\n\nHuman: a\n\nAssistant: b", "lang": "en"},
    ])
    assert str(input_error(str(path), "preference")).startswith(f"{path}:1: field 'chosen': not an HH transcript")


def test_hh_transcript_ending_with_human(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c",
         "lang": "en"},
    ])
    assert str(input_error(str(path), "preference")) == \
        f"{path}:1: field 'rejected': transcript does not end with an Assistant turn"


def test_preference_completion_with_a_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q", "chosen": [A("a"), U("more?"), A("b")], "rejected": "c", "lang": "en"},
    ])
    assert str(input_error(str(path), "preference")) == \
        f"{path}:1: field 'chosen': expected only assistant turns after the prompt"


def test_csv_row_with_broken_json_cell(tmp_path):
    path = write_csv(tmp_path / "chats.csv", ["messages", "lang"], [
        [json.dumps([U("a"), A("b")]), "en"],
        ['[{"role": "user", "content": "a"}, {"role": ', "en"],
    ])
    error = input_error(str(path))
    assert str(error).startswith(f"{path} row 2: field 'messages': invalid JSON in cell (")
    assert (error.row, error.line, error.field) == (2, None, "messages")


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,output,lang\nq,a,en\nq,a,en,extra\n", encoding="utf-8")
    assert str(input_error(str(path))) == f"{path} row 2: more cells than header columns"


def test_json_array_row_error_names_the_row(tmp_path):
    path = write_json(tmp_path / "arr.json", [CHAT_ROWS[0], CHAT_ROWS[1],
                                              {"messages": [U("x"), {"role": "bot", "content": "y"}]}])
    assert str(input_error(str(path))).startswith(f"{path} row 3: field 'messages[1].role': unknown role 'bot'")


def test_parquet_row_error_names_the_row(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", [
        {"instruction": "q1", "output": "a1", "lang": "en"},
        {"instruction": "q2", "output": None, "lang": "en"},
    ])
    assert str(input_error(str(path))) == f"{path} row 2: field 'output': missing"


def test_saved_dataset_row_error_names_the_dataset_and_row(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([
        {"instruction": "q1", "output": "a1", "lang": "en"},
        {"instruction": "q2", "output": "a2", "lang": "Klingon"},
    ]).save_to_disk(str(folder))
    assert str(input_error(str(folder))).startswith(
        f"dataset '{folder}' split 'train' row 2: field 'lang': unknown language 'Klingon'")


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
    import align.sft  # noqa: F401
    import trl

    trl.SFTConfig  # noqa: B018  (trl imports lazily)
    capsys.readouterr()


def test_cli_sft_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, capsys, restore_logging):
    from align.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [
        CHAT_ROWS[0],
        {"messages": [U("hi"), {"role": "bot", "content": "hello"}], "lang": "en"},
    ])
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
    return write_jsonl(tmp_path / f"{name}.jsonl",
                       [{"messages": [U(f"q{i}"), A(f"a{i}")], "lang": "en", "id": f"{name}{i}"} for i in range(10)])


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
