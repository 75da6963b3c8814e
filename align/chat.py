"""Tokenise chats with any chat template and mark which tokens the assistant wrote.

trl can mask assistant turns only for templates with `{% generation %}` markers (or the few it knows how to
patch). This works for any template that renders a conversation as the concatenation of its turns
("prefix-preserving": ChatML, Llama 3, Mistral, Gemma, Phi, Zephyr...): the assistant's span of turn i is the
text between the rendering of turns < i with the generation prompt and the rendering of turns <= i. The span
includes the end-of-turn token, so the model learns to stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import PolyalignError

IGNORE_INDEX = -100


class TemplateError(PolyalignError):
    """The chat template does not render a conversation as the concatenation of its turns."""


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False, chat_template=None) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template)


def assistant_char_spans(tokenizer, messages: list[dict], chat_template=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    full = render(tokenizer, messages, chat_template=chat_template)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template)
        through = render(tokenizer, messages[: i + 1], chat_template=chat_template)
        # Templates may close a conversation with something they omit mid-conversation (phi3 appends EOS), so
        # the turn ends where its rendering and the whole conversation's part ways.
        end = len(os.path.commonprefix([through, full]))
        content = message["content"].strip()
        if not full.startswith(before) or content not in full[len(before):end]:
            raise TemplateError(
                "the chat template is not prefix-preserving (the conversation up to assistant turn "
                f"{i} does not render as a prefix of the whole), so assistant tokens cannot be located; use a "
                "template that renders each turn independently, or set assistant_only_loss: false")
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


@dataclass
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenize_chat(tokenizer, messages: list[dict], *, max_length: int | None, assistant_only: bool = True,
                  chat_template=None) -> TokenizedChat:
    """input_ids and labels (IGNORE_INDEX outside assistant turns), cut to `max_length` from the end."""
    text, spans = assistant_char_spans(tokenizer, messages, chat_template)
    # The rendered text already holds the template's special tokens (BOS and friends): add none on top.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoding["input_ids"]
    if assistant_only:
        labels = [IGNORE_INDEX] * len(input_ids)
        span_index = 0
        for t, (start, end) in enumerate(encoding["offset_mapping"]):
            while span_index < len(spans) and start >= spans[span_index][1]:
                span_index += 1
            if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1] and end > start:
                labels[t] = input_ids[t]
    else:
        labels = list(input_ids)
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedChat(input_ids, labels, truncated)
