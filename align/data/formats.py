"""Detect a dataset's format and normalise its rows to polyalign's canonical records.

Canonical records (ARCHITECTURE.md), all in trl's conversational form:
- sft:        {"messages": [...], "lang", "source", "id", "tools"?}
- preference: {"prompt": [...], "chosen": [...], "rejected": [...], "lang", "source", "id", scores...}
- prompt:     {"prompt": [...], "lang", "source", "id"} (MT-Bench keeps all user `turns`)

Messages are {"role", "content"} with text content; an assistant message may carry `tool_calls`
([{"type": "function", "function": {"name", "arguments": {...}}}]) and `reasoning_content` or `thinking`, a tool
message `name` and `tool_call_id`; `tools` holds the definitions the conversation may call, as templates take them.

One module over 400 lines: one short normaliser per format and the detector that chooses among them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from align.data.languages import UnknownLanguage, base_language, detect_language, normalize_lang
from align.data.sources import Location

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "function_call": "assistant",
}
# Fields that travel with a record from input to output, when present.
PASSTHROUGH = (
    "category",
    "provenance",
    "chosen_score",
    "rejected_score",
    "chosen_by",
    "rejected_by",
    "reference",
    "references",
)
# Other datasets' names for PASSTHROUGH fields (UltraFeedback-binarized).
RENAMED = {"score_chosen": "chosen_score", "score_rejected": "rejected_score"}
TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_KEYS = ("reasoning_content", "thinking")
TOOL_MESSAGE_KEYS = ("name", "tool_call_id")
# Chatbot Arena's `winner` → (chosen side, rejected side); None for a tie.
ARENA_WINNERS = {"model_a": ("a", "b"), "model_b": ("b", "a"), "tie": None, "tie (bothbad)": None}

# format name → kind of canonical record it yields ("unpaired": sft records of which only the desirable are kept)
FORMAT_KINDS = {
    "messages": "sft",
    "sharegpt": "sft",
    "alpaca": "sft",
    "aya": "sft",
    "xp3": "sft",
    "prompt_completion": "sft",
    "kto": "unpaired",
    "preference": "preference",
    "preference_implicit": "preference",
    "preference_messages": "preference",
    "sharegpt_preference": "preference",
    "arena": "preference",
    "arena_kaggle": "preference",
    "mt_bench": "prompt",
    "prompt": "prompt",
}


class Skip(Exception):
    """A well-formed row with nothing to train on for its kind (an Arena tie, an undesirable KTO answer): the loader
    drops and counts it under `reason` instead of failing."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def detect_format(row: dict) -> str | None:
    """Name of the format a row is in, judged by its keys (and, for KTO's common name `label`, by the label being a
    boolean); None when nothing matches."""
    keys = set(row)
    if ("kto_tag" in keys or ("label" in keys and _is_flag(row["label"]))) and (
        keys & {"messages", "conversations"} or {"prompt", "completion"} <= keys
    ):
        return "kto"
    if {"chosen", "rejected"} <= keys:
        if "conversations" in keys:
            return "sharegpt_preference"
        return "preference" if "prompt" in keys else "preference_implicit"
    if {"chosen_messages", "rejected_messages"} <= keys:
        return "preference_messages"
    if {"conversation_a", "conversation_b"} <= keys:
        return "arena"
    if {"prompt", "response_a", "response_b"} <= keys:
        return "arena_kaggle"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if {"inputs", "targets"} <= keys:
        return "aya" if "language_code" in keys else "xp3"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "turns" in keys:
        return "mt_bench"
    if "prompt" in keys:
        return "prompt"
    return None


def describe_unknown(row: dict) -> str:
    keys = ", ".join(sorted(row)[:12]) or "none"
    return (
        "unrecognised format (columns: " + keys + "); expected one of: messages, conversations (ShareGPT), "
        "instruction/output (Alpaca), inputs/targets (Aya, xP3), prompt/completion, messages or "
        "prompt/completion with label or kto_tag (KTO), turns (MT-Bench), prompt/chosen/rejected, "
        "chosen/rejected (HH transcripts), chosen_messages/rejected_messages, conversations/chosen/rejected "
        "(ShareGPT preference), conversation_a/conversation_b/winner (Chatbot Arena), "
        "prompt/response_a/response_b (Arena, Kaggle), prompt"
    )


# ---------------------------------------------------------------------------------------------------- helpers


def _text(loc: Location, value: Any, field: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise loc.error("missing", field)
    if not isinstance(value, str):
        raise loc.error(f"expected text, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise loc.error("empty text", field)
    return value


def _json(loc: Location, text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise loc.error(f"invalid JSON ({e.msg} at column {e.colno})", field) from None


def _content(loc: Location, value: Any, field: str, *, allow_empty: bool = False) -> str:
    """A message's text. OpenAI content parts are joined with newlines, as vLLM flattens them for a text-only model's
    template, so training sees the text that serving will; any other part is refused, not dropped, since the answer
    may be about it."""
    if isinstance(value, list):
        texts = []
        for n, part in enumerate(value, start=1):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind is None:
                raise loc.error(f"content part {n} has no type", field)
            if kind not in TEXT_PARTS:
                raise loc.error(f"this toolkit trains text models: content part {n} is {kind!r}", field)
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise loc.error(f"content part {n} has no text", field)
            texts.append(text)
        value = "\n".join(texts)
    return _text(loc, value, field, allow_empty=allow_empty)


def _call(loc: Location, function: Any, field: str) -> dict:
    """{"name", "arguments"} → a canonical tool call; arguments written as JSON text (OpenAI's way) are parsed, since
    templates render them as objects."""
    if not isinstance(function, dict):
        raise loc.error("expected a function call object {name, arguments}", field)
    name = _text(loc, function.get("name"), f"{field}.name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        arguments = _json(loc, arguments, f"{field}.arguments") if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise loc.error(f"expected an object of arguments, got {type(arguments).__name__}", f"{field}.arguments")
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_calls(loc: Location, value: Any, field: str) -> list[dict]:
    """OpenAI `tool_calls`: [{"id"?, "type": "function", "function": {"name", "arguments"}}]."""
    if not isinstance(value, list):
        raise loc.error(f"expected a list of tool calls, got {type(value).__name__}", field)
    calls = []
    for j, call in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise loc.error("expected a tool call object {type: function, function: {name, arguments}}", where)
        canonical = _call(loc, call["function"], f"{where}.function")
        if call.get("id") not in (None, ""):
            canonical = {"id": str(call["id"]), **canonical}
        calls.append(canonical)
    return calls


def _message(loc: Location, message: dict, role: str, where: str) -> dict:
    """One OpenAI-style message with the keys templates read for its role; other keys are dropped."""
    calls = message.get("tool_calls") if role == "assistant" else None
    content = message.get("content")
    if content is None and calls:
        content = ""  # OpenAI writes null content beside tool calls
    out = {"role": role, "content": _content(loc, content, f"{where}.content", allow_empty=role != "user")}
    if calls:
        out["tool_calls"] = _tool_calls(loc, calls, f"{where}.tool_calls")
    for key in REASONING_KEYS if role == "assistant" else TOOL_MESSAGE_KEYS if role == "tool" else ():
        if message.get(key) not in (None, ""):
            out[key] = _text(loc, message[key], f"{where}.{key}", allow_empty=True)
    return out


def _messages(loc: Location, value: Any, field: str) -> list[dict]:
    """Validate an OpenAI-style message list."""
    if value is None:
        raise loc.error("missing", field)
    if not isinstance(value, list) or not value:
        raise loc.error("expected a non-empty list of messages", field)
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise loc.error(f"expected a message object, got {type(message).__name__}", where)
        role = message.get("role")
        if role is None:
            raise loc.error("missing", f"{where}.role")
        if role not in ROLES:
            raise loc.error(f"unknown role {role!r} (expected {', '.join(ROLES)})", f"{where}.role")
        out.append(_message(loc, message, role, where))
    return out


def _tools(loc: Location, value: Any, field: str = "tools") -> list[dict]:
    """Tool definitions as templates take them, [{"type": "function", "function": {name, description, parameters}}]:
    JSON text (ShareGPT writes it so) is parsed, a bare function schema wrapped."""
    if isinstance(value, str):
        value = _json(loc, value, field) if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise loc.error(f"expected a list of tool definitions, got {type(value).__name__}", field)
    out = []
    for k, tool in enumerate(value):
        where = f"{field}[{k}]"
        if not isinstance(tool, dict):
            raise loc.error(f"expected a tool definition object, got {type(tool).__name__}", where)
        if tool.get("type") not in (None, "function"):
            raise loc.error(f"unsupported tool type {tool['type']!r} (expected function)", f"{where}.type")
        function, where = (tool["function"], f"{where}.function") if "function" in tool else (tool, where)
        if not isinstance(function, dict):
            raise loc.error("expected a function schema {name, description, parameters}", where)
        function = {key: v for key, v in function.items() if v is not None and key != "type"}
        _text(loc, function.get("name"), f"{where}.name")
        if "description" in function:
            _text(loc, function["description"], f"{where}.description", allow_empty=True)
        if not isinstance(function.get("parameters", {}), dict):
            raise loc.error("expected a JSON schema object", f"{where}.parameters")
        out.append({"type": "function", "function": function})
    return out


def _require_assistant(loc: Location, messages: list[dict], field: str) -> None:
    if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
        raise loc.error("no assistant message with content to train on", field)
    if not any(m["role"] == "user" for m in messages):
        raise loc.error("no user message", field)


def _turn_list(loc: Location, value: Any, field: str, role: str) -> list[dict]:
    """A string becomes one message of `role`; a list is validated as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(loc, value, field)}]
    return _messages(loc, value, field)


def _sharegpt_calls(loc: Location, value: Any, field: str) -> list[dict]:
    """A ShareGPT `function_call` turn's value: JSON text of one {"name", "arguments"} call or a list of them."""
    parsed = _json(loc, _text(loc, value, field), field) if isinstance(value, str) or value is None else value
    if isinstance(parsed, list):
        if not parsed:
            raise loc.error("no function call", field)
        return [_call(loc, call, f"{field}[{k}]") for k, call in enumerate(parsed)]
    return [_call(loc, parsed, field)]


def _sharegpt_turn(loc: Location, turn: Any, where: str) -> dict:
    if not isinstance(turn, dict):
        raise loc.error("expected a turn object", where)
    if "from" not in turn and "role" in turn:  # already role/content
        role = SHAREGPT_ROLES.get(str(turn["role"]).lower())
        if role is None:
            raise loc.error(f"unknown role {turn['role']!r} (expected {', '.join(ROLES)})", f"{where}.role")
        return _message(loc, turn, role, where)
    speaker = turn.get("from")
    if speaker is None:
        raise loc.error("missing", f"{where}.from")
    role = SHAREGPT_ROLES.get(str(speaker).lower())
    if role is None:
        raise loc.error(f"unknown role {speaker!r} (expected human, gpt, system)", f"{where}.from")
    if str(speaker).lower() == "function_call":
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": _sharegpt_calls(loc, turn.get("value"), f"{where}.value"),
        }
    return {"role": role, "content": _content(loc, turn.get("value"), f"{where}.value", allow_empty=role != "user")}


def _sharegpt_messages(loc: Location, row: dict) -> list[dict]:
    """`conversations` (and a top-level `system`, as LLaMA-Factory writes it) → messages. A function_call turn joins
    the assistant message before it, so "gpt: Let me look.", "function_call: ..." is one message with content and
    tool_calls, the shape chat templates render."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise loc.error("expected a non-empty list of turns", "conversations")
    system = row.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    for i, turn in enumerate(turns):
        message = _sharegpt_turn(loc, turn, f"conversations[{i}]")
        if message.get("tool_calls") and messages and messages[-1]["role"] == "assistant":
            messages[-1] = {**messages[-1], "tool_calls": messages[-1].get("tool_calls", []) + message["tool_calls"]}
        else:
            messages.append(message)
    if isinstance(system, str) and system.strip() and len(messages) > 1 and messages[1]["role"] == "system":
        raise loc.error("a system prompt both here and as the first turn", "system")
    return messages


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _parse_hh(loc: Location, text: Any, field: str) -> list[dict]:
    """Anthropic HH transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." → messages."""
    text = _text(loc, text, field)
    if not text.startswith("\n\n"):
        text = "\n\n" + text
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise loc.error("not an HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')", field)
    messages = [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]
    if messages[-1]["role"] != "assistant":
        raise loc.error("transcript does not end with an Assistant turn", field)
    return messages


def _split_shared_prefix(
    loc: Location, chosen: list[dict], rejected: list[dict], fields: tuple[str, str] = ("chosen", "rejected")
) -> tuple[list, list, list]:
    """Implicit-prompt preference data: the common leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    prompt, chosen_tail, rejected_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt or prompt[-1]["role"] == "assistant":
        raise loc.error("chosen and rejected share no prompt that ends with a user turn", fields[0])
    for name, tail in zip(fields, (chosen_tail, rejected_tail)):
        if any(m["role"] != "assistant" for m in tail):
            raise loc.error("differs from the other completion before the last assistant turn", name)
    return prompt, chosen_tail, rejected_tail


def _compared(loc: Location, chosen: list[dict], rejected: list[dict], fields: tuple[str, str]) -> dict:
    """Two conversations a judge compared as a whole (Chatbot Arena) → one pair: the prompt is the chosen side's
    conversation up to its last user turn, chosen and rejected each side's answer to that turn. Multi-turn sides differ
    in every answer, so the rejected answer followed its own earlier answers; the winner's are the context the model
    should learn to continue, and one pair per conversation claims no more than the one vote."""
    ends = []
    for conversation, field in zip((chosen, rejected), fields):
        users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
        if not users:
            raise loc.error("no user message", field)
        answer = conversation[users[-1] + 1 :]
        if not answer or any(m["role"] != "assistant" for m in answer):
            raise loc.error("does not end with an assistant answer to its last user turn", field)
        ends.append((users[-1], answer))
    if chosen[ends[0][0]]["content"] != rejected[ends[1][0]]["content"]:
        raise loc.error("its last user turn differs from the other conversation's: not one comparison", fields[1])
    return {"prompt": chosen[: ends[0][0] + 1], "chosen": ends[0][1], "rejected": ends[1][1]}


def _judged_models(row: dict, won: str, lost: str) -> dict:
    models = {"chosen_by": row.get(f"model_{won}"), "rejected_by": row.get(f"model_{lost}")}
    return {key: name for key, name in models.items() if isinstance(name, str) and name}


def _bool(loc: Location, value: Any, field: str) -> bool:
    """A JSON or Parquet boolean, or a CSV cell's "true"/"false"."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise loc.error(f"expected true or false, got {value!r}", field)
    return value


def _binary(loc: Location, value: Any, field: str) -> bool:
    """A 0/1 column (Kaggle's winner_model_a), as a number or a CSV cell."""
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return value.strip() == "1"
    if isinstance(value, bool) or value not in (0, 1):
        raise loc.error(f"expected 0 or 1, got {value!r}", field)
    return value == 1


def _json_turns(loc: Location, value: Any, field: str) -> list[str | None]:
    """A Kaggle Arena column: JSON text of a list of turns ('["q1", "q2"]'), null where a model answered nothing."""
    if isinstance(value, str):
        value = _json(loc, value, field)
    if not isinstance(value, list) or not value:
        raise loc.error("expected a non-empty list of turns (JSON text or a list)", field)
    for i, turn in enumerate(value):
        if turn is not None and not isinstance(turn, str):
            raise loc.error(f"expected text, got {type(turn).__name__}", f"{field}[{i}]")
    return value


def _one_answer(loc: Location, value: Any, field: str) -> list[dict]:
    """ShareGPT preference's `chosen`/`rejected`: one assistant turn (from/value or role/content, or text)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(loc, value, field)}]
    if not isinstance(value, dict):
        raise loc.error("expected one message object (from/value or role/content)", field)
    message = _sharegpt_turn(loc, value, field)
    if message["role"] != "assistant":
        raise loc.error(f"expected an assistant turn, got a {message['role']} turn", field)
    return [message]


# ---------------------------------------------------------------------------------------------------- normalisers


def _from_messages(loc: Location, row: dict) -> dict:
    messages = _messages(loc, row.get("messages"), "messages")
    _require_assistant(loc, messages, "messages")
    return {"messages": messages}


def _from_sharegpt(loc: Location, row: dict) -> dict:
    messages = _sharegpt_messages(loc, row)
    _require_assistant(loc, messages, "conversations")
    return {"messages": messages}


def _from_alpaca(loc: Location, row: dict) -> dict:
    instruction = _text(loc, row.get("instruction"), "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise loc.error(f"expected text, got {type(extra).__name__}", "input")
    output_field = "output" if "output" in row else "response"
    output = _text(loc, row.get(output_field), output_field)
    user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
    messages = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def _from_inputs_targets(loc: Location, row: dict) -> dict:
    """Aya dataset and xP3: one prompt, one answer (the language comes from the row, see `declared_lang`)."""
    return {
        "messages": [
            {"role": "user", "content": _text(loc, row.get("inputs"), "inputs")},
            {"role": "assistant", "content": _text(loc, row.get("targets"), "targets")},
        ]
    }


def _from_prompt_completion(loc: Location, row: dict) -> dict:
    prompt = _turn_list(loc, row.get("prompt"), "prompt", "user")
    completion = _turn_list(loc, row.get("completion"), "completion", "assistant")
    messages = prompt + completion
    _require_assistant(loc, messages, "completion")
    return {"messages": messages}


def _from_kto(loc: Location, row: dict) -> dict:
    """Unpaired data (trl's KTO `label`, LLaMA-Factory's `kto_tag`): the desirable answers are SFT data; the others
    are checked, then skipped."""
    field = "label" if "label" in row else "kto_tag"
    desirable = _bool(loc, row.get(field), field)
    shape = "messages" if "messages" in row else "sharegpt" if "conversations" in row else "prompt_completion"
    record = NORMALISERS[shape](loc, row)
    if not desirable:
        raise Skip("undesirable (KTO label false)")
    return record


def _from_preference(loc: Location, row: dict) -> dict:
    prompt = _turn_list(loc, row.get("prompt"), "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise loc.error("prompt ends with an assistant turn", "prompt")
    out = {"prompt": prompt}
    for name in ("chosen", "rejected"):
        completion = _turn_list(loc, row.get(name), name, "assistant")
        if completion[: len(prompt)] == prompt and len(completion) > len(prompt):
            completion = completion[len(prompt) :]  # the completion repeated the prompt
        if any(m["role"] != "assistant" for m in completion):
            raise loc.error("expected only assistant turns after the prompt", name)
        out[name] = completion
    return out


def _from_preference_implicit(loc: Location, row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str):
        chosen, rejected = _parse_hh(loc, chosen, "chosen"), _parse_hh(loc, rejected, "rejected")
    else:
        chosen, rejected = _messages(loc, chosen, "chosen"), _messages(loc, rejected, "rejected")
    prompt, chosen, rejected = _split_shared_prefix(loc, chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _from_preference_messages(loc: Location, row: dict) -> dict:
    fields = ("chosen_messages", "rejected_messages")
    chosen, rejected = (_messages(loc, row.get(field), field) for field in fields)
    prompt, chosen, rejected = _split_shared_prefix(loc, chosen, rejected, fields)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _from_sharegpt_preference(loc: Location, row: dict) -> dict:
    prompt = _sharegpt_messages(loc, row)
    if prompt[-1]["role"] == "assistant":
        raise loc.error("ends with an assistant turn (the answers belong in chosen and rejected)", "conversations")
    if not any(m["role"] == "user" for m in prompt):
        raise loc.error("no user message", "conversations")
    return {
        "prompt": prompt,
        "chosen": _one_answer(loc, row.get("chosen"), "chosen"),
        "rejected": _one_answer(loc, row.get("rejected"), "rejected"),
    }


def _from_arena(loc: Location, row: dict) -> dict:
    winner = row.get("winner")
    if winner not in ARENA_WINNERS:
        raise loc.error(f"expected {', '.join(ARENA_WINNERS)}, got {winner!r}", "winner")
    sides = {side: _messages(loc, row.get(f"conversation_{side}"), f"conversation_{side}") for side in "ab"}
    if ARENA_WINNERS[winner] is None:
        raise Skip("tie")
    won, lost = ARENA_WINNERS[winner]
    pair = _compared(loc, sides[won], sides[lost], (f"conversation_{won}", f"conversation_{lost}"))
    return {**pair, **_judged_models(row, won, lost)}


def _from_arena_kaggle(loc: Location, row: dict) -> dict:
    """The Kaggle Arena export: turns as JSON lists, the vote as three 0/1 columns. Paired as `_compared` says."""
    votes = {side: _binary(loc, row.get(f"winner_model_{side}"), f"winner_model_{side}") for side in "ab"}
    votes["tie"] = _binary(loc, row.get("winner_tie"), "winner_tie")
    if sum(votes.values()) != 1:
        raise loc.error("expected exactly one of winner_model_a, winner_model_b, winner_tie to be 1", "winner_model_a")
    prompts = _json_turns(loc, row.get("prompt"), "prompt")
    responses = {side: _json_turns(loc, row.get(f"response_{side}"), f"response_{side}") for side in "ab"}
    for side, turns in responses.items():
        if len(turns) != len(prompts):
            raise loc.error(f"{len(turns)} responses to {len(prompts)} prompt turns", f"response_{side}")
    if votes["tie"]:
        raise Skip("tie")
    won, lost = ("a", "b") if votes["a"] else ("b", "a")
    if None in prompts or None in responses[won] or responses[lost][-1] is None:
        raise Skip("null turn")
    prompt = []
    for i, (question, answer) in enumerate(zip(prompts, responses[won])):
        prompt.append({"role": "user", "content": _text(loc, question, f"prompt[{i}]")})
        prompt.append({"role": "assistant", "content": _text(loc, answer, f"response_{won}[{i}]", allow_empty=True)})
    rejected = _text(loc, responses[lost][-1], f"response_{lost}[{len(prompts) - 1}]", allow_empty=True)
    return {
        "prompt": prompt[:-1],
        "chosen": prompt[-1:],
        "rejected": [{"role": "assistant", "content": rejected}],
        **_judged_models(row, won, lost),
    }


def _from_mt_bench(loc: Location, row: dict) -> dict:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise loc.error("expected a non-empty list of user turns", "turns")
    turns = [_text(loc, t, f"turns[{i}]") for i, t in enumerate(turns)]
    return {"prompt": [{"role": "user", "content": turns[0]}], "turns": turns}


def _from_prompt(loc: Location, row: dict) -> dict:
    prompt = _turn_list(loc, row.get("prompt"), "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise loc.error("prompt ends with an assistant turn", "prompt")
    return {"prompt": prompt}


NORMALISERS: dict[str, Callable[[Location, dict], dict]] = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "aya": _from_inputs_targets,
    "xp3": _from_inputs_targets,
    "prompt_completion": _from_prompt_completion,
    "kto": _from_kto,
    "preference": _from_preference,
    "preference_implicit": _from_preference_implicit,
    "preference_messages": _from_preference_messages,
    "sharegpt_preference": _from_sharegpt_preference,
    "arena": _from_arena,
    "arena_kaggle": _from_arena_kaggle,
    "mt_bench": _from_mt_bench,
    "prompt": _from_prompt,
}


def all_text(record: dict) -> str:
    """Every turn's words, prompt first, system and tool turns included: what a row that declares no language is
    detected by."""
    parts = [m["content"] for key in ("prompt", "messages", "chosen") for m in record.get(key, [])]
    return "\n".join(parts)


def _lang(loc: Location, value: Any, field: str) -> str:
    try:
        return normalize_lang(value)
    except UnknownLanguage as e:
        raise loc.error(str(e), field) from None


def declared_lang(loc: Location, row: dict) -> str | None:
    """The language a row names: `lang`, else `language_code` (Aya) with `language` as the fallback, else `language`.
    Beside a code, a name of the same language wins, for it may say more: the code `zho` with "Traditional Chinese"
    is zh-Hant."""
    given = {
        field: row.get(field) for field in ("lang", "language_code", "language") if row.get(field) not in (None, "")
    }
    if "lang" in given:
        return _lang(loc, given["lang"], "lang")
    if "language_code" not in given:
        return _lang(loc, given["language"], "language") if "language" in given else None
    try:
        named = normalize_lang(given["language"]) if "language" in given else None
    except UnknownLanguage:
        named = None
    try:
        coded = normalize_lang(given["language_code"])
    except UnknownLanguage as e:
        if named is None:
            raise loc.error(str(e), "language_code") from None
        return named
    return named if named is not None and base_language(named) == base_language(coded) else coded


def resolve_lang(loc: Location, row: dict, record: dict, default_lang: str | None) -> None:
    """Set record['lang'] from the row's language fields, the source's declared language, or detection."""
    declared = declared_lang(loc, row) or default_lang
    if declared:
        record["lang"] = declared
        return
    code, confidence = detect_language(all_text(record))
    if code is None:
        raise loc.error("no language given and none can be detected (no letters); add a 'lang' field", "lang")
    record["lang"] = code
    record["lang_confidence"] = round(confidence, 4)


def normalise_row(
    loc: Location, row: dict, fmt: str, *, source_name: str, index: int, default_lang: str | None = None
) -> dict:
    """A row as its canonical record; raises Skip for a row the loader drops and counts."""
    record = NORMALISERS[fmt](loc, row)
    if row.get("tools") is not None and (tools := _tools(loc, row["tools"])):
        record["tools"] = tools
    resolve_lang(loc, row, record, default_lang)
    rid = row.get("id", row.get("question_id"))
    record["id"] = str(rid) if rid not in (None, "") else f"{source_name}-{index}"
    source = row.get("source")
    record["source"] = source if isinstance(source, str) and source else source_name
    for key in PASSTHROUGH:
        if key in row and row[key] is not None:
            record[key] = row[key]
    for key, target in RENAMED.items():
        if target not in record and row.get(key) is not None:
            record[target] = row[key]
    return record


# ---------------------------------------------------------------------------------------------------- conversions


def to_kind(record: dict, kind: str) -> dict | None:
    """Convert a canonical record to another kind when that makes sense (sft/preference → prompt)."""
    have = "sft" if "messages" in record else "preference" if "chosen" in record else "prompt"
    if have == kind:
        return record
    meta = {k: v for k, v in record.items() if k not in ("messages", "prompt", "chosen", "rejected", "turns")}
    if kind == "prompt" and have == "sft":
        messages = record["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        return {"prompt": messages[: last_user + 1], **meta}
    if kind == "prompt" and have == "preference":
        return {"prompt": record["prompt"], **meta}
    if kind == "sft" and have == "preference":
        return {"messages": record["prompt"] + record["chosen"], **meta}
    return None
