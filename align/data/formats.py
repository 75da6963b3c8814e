"""Detect a dataset's format and normalise its rows to polyalign's canonical records.

Canonical records (ARCHITECTURE.md), all in trl's conversational form:
- sft:        {"messages": [...], "lang", "source", "id"}
- preference: {"prompt": [...], "chosen": [...], "rejected": [...], "lang", "source", "id", scores...}
- prompt:     {"prompt": [...], "lang", "source", "id"} (MT-Bench keeps all user `turns`)
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .languages import UnknownLanguage, detect_language, normalize_lang
from .sources import Location

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
# Fields that travel with a record from input to output, when present.
PASSTHROUGH = ("category", "provenance", "chosen_score", "rejected_score", "chosen_by", "rejected_by",
               "reference", "references")

# format name → kind of canonical record it yields
FORMAT_KINDS = {
    "messages": "sft",
    "sharegpt": "sft",
    "alpaca": "sft",
    "prompt_completion": "sft",
    "preference": "preference",
    "preference_implicit": "preference",
    "mt_bench": "prompt",
    "prompt": "prompt",
}


def detect_format(row: dict) -> str | None:
    """Name of the format a row is in, judged by its keys; None when nothing matches."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        return "preference" if "prompt" in keys else "preference_implicit"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "turns" in keys:
        return "mt_bench"
    if "prompt" in keys:
        return "prompt"
    return None


def describe_unknown(row: dict) -> str:
    keys = ", ".join(sorted(row)[:12]) or "none"
    return ("unrecognised format (columns: " + keys + "); expected one of: messages, conversations (ShareGPT), "
            "instruction/output (Alpaca), prompt/completion, turns (MT-Bench), prompt/chosen/rejected, "
            "chosen/rejected (HH transcripts), prompt")


# ---------------------------------------------------------------------------------------------------- helpers


def _text(loc: Location, value: Any, field: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise loc.error("missing", field)
    if not isinstance(value, str):
        raise loc.error(f"expected text, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise loc.error("empty text", field)
    return value


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
        content = _text(loc, message.get("content"), f"{where}.content", allow_empty=role != "user")
        out.append({"role": role, "content": content})
    return out


def _require_assistant(loc: Location, messages: list[dict], field: str) -> None:
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise loc.error("no assistant message with content to train on", field)
    if not any(m["role"] == "user" for m in messages):
        raise loc.error("no user message", field)


def _turn_list(loc: Location, value: Any, field: str, role: str) -> list[dict]:
    """A string becomes one message of `role`; a list is validated as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(loc, value, field)}]
    return _messages(loc, value, field)


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _parse_hh(loc: Location, text: Any, field: str) -> list[dict]:
    """Anthropic HH transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." → messages."""
    text = _text(loc, text, field)
    if not text.startswith("\n\n"):
        text = "\n\n" + text
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise loc.error("not an HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')", field)
    messages = [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
                for speaker, content in zip(parts[1::2], parts[2::2])]
    if messages[-1]["role"] != "assistant":
        raise loc.error("transcript does not end with an Assistant turn", field)
    return messages


def _split_shared_prefix(loc: Location, chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    """Implicit-prompt preference data: the common leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    prompt, chosen_tail, rejected_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt or prompt[-1]["role"] == "assistant":
        raise loc.error("chosen and rejected share no prompt that ends with a user turn", "chosen")
    for name, tail in (("chosen", chosen_tail), ("rejected", rejected_tail)):
        if any(m["role"] != "assistant" for m in tail):
            raise loc.error("differs from the other completion before the last assistant turn", name)
    return prompt, chosen_tail, rejected_tail


# ---------------------------------------------------------------------------------------------------- normalisers


def _from_messages(loc: Location, row: dict) -> dict:
    messages = _messages(loc, row.get("messages"), "messages")
    _require_assistant(loc, messages, "messages")
    return {"messages": messages}


def _from_sharegpt(loc: Location, row: dict) -> dict:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise loc.error("expected a non-empty list of turns", "conversations")
    messages = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise loc.error("expected a turn object", where)
        if "from" not in turn and "role" in turn:  # already role/content
            turn = {"from": turn["role"], "value": turn.get("content")}
        speaker = turn.get("from")
        if speaker is None:
            raise loc.error("missing", f"{where}.from")
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise loc.error(f"unknown role {speaker!r} (expected human, gpt, system)", f"{where}.from")
        messages.append({"role": role, "content": _text(loc, turn.get("value"), f"{where}.value",
                                                        allow_empty=role != "user")})
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


def _from_prompt_completion(loc: Location, row: dict) -> dict:
    prompt = _turn_list(loc, row.get("prompt"), "prompt", "user")
    completion = _turn_list(loc, row.get("completion"), "completion", "assistant")
    messages = prompt + completion
    _require_assistant(loc, messages, "completion")
    return {"messages": messages}


def _from_preference(loc: Location, row: dict) -> dict:
    prompt = _turn_list(loc, row.get("prompt"), "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise loc.error("prompt ends with an assistant turn", "prompt")
    out = {"prompt": prompt}
    for name in ("chosen", "rejected"):
        completion = _turn_list(loc, row.get(name), name, "assistant")
        if completion[: len(prompt)] == prompt and len(completion) > len(prompt):
            completion = completion[len(prompt):]  # the completion repeated the prompt
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
    "prompt_completion": _from_prompt_completion,
    "preference": _from_preference,
    "preference_implicit": _from_preference_implicit,
    "mt_bench": _from_mt_bench,
    "prompt": _from_prompt,
}


def all_text(record: dict) -> str:
    """Every turn's words, prompt first, system and tool turns included: what a row that declares no language is
    detected by."""
    parts = [m["content"] for key in ("prompt", "messages", "chosen") for m in record.get(key, [])]
    return "\n".join(parts)


def resolve_lang(loc: Location, row: dict, record: dict, default_lang: str | None) -> None:
    """Set record['lang'] from the row's lang/language field, the source's declared language, or detection."""
    for field in ("lang", "language"):
        value = row.get(field)
        if value not in (None, ""):
            try:
                record["lang"] = normalize_lang(value)
            except UnknownLanguage as e:
                raise loc.error(str(e), field) from None
            return
    if default_lang:
        record["lang"] = default_lang
        return
    code, confidence = detect_language(all_text(record))
    if code is None:
        raise loc.error("no language given and none can be detected (no letters); add a 'lang' field", "lang")
    record["lang"] = code
    record["lang_confidence"] = round(confidence, 4)


def normalise_row(loc: Location, row: dict, fmt: str, *, source_name: str, index: int,
                  default_lang: str | None = None) -> dict:
    record = NORMALISERS[fmt](loc, row)
    resolve_lang(loc, row, record, default_lang)
    rid = row.get("id", row.get("question_id"))
    record["id"] = str(rid) if rid not in (None, "") else f"{source_name}-{index}"
    source = row.get("source")
    record["source"] = source if isinstance(source, str) and source else source_name
    for key in PASSTHROUGH:
        if key in row and row[key] is not None:
            record[key] = row[key]
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
