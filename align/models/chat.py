"""Tokenise chats with any chat template and mark which tokens the assistant wrote.

trl can mask assistant turns only for templates with `{% generation %}` markers (or the few it knows how to
patch). This works for any template that can render the conversation ending at each assistant turn. An assistant
turn's span is the text after what the conversation before it renders with the generation prompt, up to the end of
the conversation ending with it; the span includes the end-of-turn token, so the model learns to stop.

Most templates render a conversation as the concatenation of its turns (ChatML, Llama 3, Mistral, Gemma, Phi), and
one rendering labels every turn. Templates of reasoning models rewrite history (Qwen3 and DeepSeek-R1 strip the
reasoning of earlier turns, some mark the final turn differently): there an earlier turn is labelled in the
rendering that ends with it, one training example per such turn, its context as the template shows it. A model so
trained sees each turn exactly as it will be prompted at inference.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from align.core.errors import PolyalignError

IGNORE_INDEX = -100


class TemplateError(PolyalignError):
    """The chat template cannot render a conversation, or renders it without the assistant's words."""


def render(
    tokenizer,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    chat_template=None,
    tools: list[dict] | None = None,
) -> str:
    """The template's text for `messages`. Without tools a template gets `tools=None`, as at inference; one that
    iterates over `tools` unguarded gets an empty list instead."""
    if not messages:
        return ""
    from jinja2 import TemplateError as JinjaError

    def apply(tool_list):
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            tools=tool_list,
        )

    try:
        try:
            return apply(tools)
        except TypeError as e:
            if tools is not None or "NoneType" not in str(e):
                raise
            return apply([])
    except (JinjaError, TypeError, ValueError) as e:
        raise TemplateError(f"the chat template cannot render this conversation: {e}") from None


def _answer(message: dict) -> list[str]:
    """What of an assistant message must appear in its span: its visible answer (templates may drop reasoning that
    is written inline before `</think>`) and the names of the tools it calls."""
    content = (message.get("content") or "").split("</think>")[-1].strip()
    calls = [call["function"]["name"] for call in message.get("tool_calls") or []]
    return [piece for piece in (content, *calls) if piece]


def _holds(text: str, answer: list[str]) -> bool:
    return all(piece in text for piece in answer)


def _closes(span: str, answer: list[str]) -> bool:
    """Whether a turn's span holds its answer and then the end-of-turn: where a template marks the final turn
    differently, the whole conversation and the one ending at the turn part ways right after the answer."""
    ends = [span.find(piece) + len(piece) for piece in answer]
    return _holds(span, answer) and bool(span[max(ends, default=0) :].strip())


def _check_tools(text: str, messages: list[dict], tools: list[dict] | None) -> None:
    """A template without tool support renders tool calls and definitions as nothing: training on that would
    teach the model answers to questions it never saw."""
    names = [c["function"]["name"] for m in messages for c in m.get("tool_calls") or []]
    names += [t["function"]["name"] for t in tools or []]
    missing = sorted({n for n in names if n not in text})
    if missing:
        raise TemplateError(
            f"the chat template has no tool support: it does not render the tool calls or "
            f"definitions {', '.join(missing)}"
        )


@dataclass
class Rendering:
    """One training example's text and the [start, end) character spans of the assistant turns labelled in it."""

    text: str
    spans: list[tuple[int, int]]


def assistant_renderings(
    tokenizer, messages: list[dict], chat_template=None, tools: list[dict] | None = None
) -> list[Rendering]:
    """The renderings that label every assistant turn once: the whole conversation, holding the turns it renders as
    they render at the end of a conversation, last; before it one rendering per turn it shows otherwise."""
    full = render(tokenizer, messages, chat_template=chat_template, tools=tools)
    _check_tools(full, messages, tools)
    # Where two renderings part ways inside a token ("<|im_end|>" against "<|endoftext|>" share "<|"), they part at
    # that token's start.
    boundaries = sorted(
        {e for _, e in tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]} | {0}
    )
    own, spans = [], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template, tools=tools)
        through = render(tokenizer, messages[: i + 1], chat_template=chat_template, tools=tools)
        # A generation prompt may open what the rendered turn does not (DeepSeek-R1's "<think>\n"): the turn starts
        # where the two part ways.
        start = len(os.path.commonprefix([before, through]))
        if start < len(
            os.path.commonprefix([before, render(tokenizer, messages[:i], chat_template=chat_template, tools=tools)])
        ):
            raise TemplateError(
                f"the chat template renders the conversation before assistant turn {i} differently "
                "when the turn follows it, so where the turn starts is unknown; use another template, "
                "or set assistant_only_loss: false"
            )
        answer = _answer(message)
        # Templates may close a conversation with something they omit mid-conversation (phi3 appends EOS), so in
        # the whole conversation the turn ends where its rendering and the whole part ways.
        end = len(os.path.commonprefix([through, full]))
        whole_tokens = boundaries[bisect.bisect_right(boundaries, end) - 1]
        if full.startswith(through[:start]) and _closes(full[start:whole_tokens], answer):
            spans.append((start, end))
        elif _holds(through[start:], answer):
            own.append(Rendering(through, [(start, len(through))]))
        else:
            raise TemplateError(
                f"the chat template does not render assistant turn {i} after its conversation (its "
                "words are missing from the rendering that ends with it), so its tokens cannot be "
                "located; use another template, or set assistant_only_loss: false"
            )
    return [*own, Rendering(full, spans)]


@dataclass
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _labels(tokenizer, rendering: Rendering, assistant_only: bool) -> tuple[list[int], list[int]]:
    # The rendered text already holds the template's special tokens (BOS and friends): add none on top.
    encoding = tokenizer(rendering.text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoding["input_ids"]
    if not assistant_only:
        return input_ids, list(input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    spans, span_index = rendering.spans, 0
    for t, (start, end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1] and end > start:
            labels[t] = input_ids[t]
    return input_ids, labels


def tokenize_chat(
    tokenizer,
    messages: list[dict],
    *,
    max_length: int | None,
    assistant_only: bool = True,
    chat_template=None,
    tools: list[dict] | None = None,
) -> list[TokenizedChat]:
    """The training examples of one conversation (one for most templates; see the module docstring), with labels
    IGNORE_INDEX outside assistant turns, each cut to `max_length` from the end. The whole conversation is last."""
    if assistant_only:
        renderings = assistant_renderings(tokenizer, messages, chat_template, tools)
    else:
        full = render(tokenizer, messages, chat_template=chat_template, tools=tools)
        _check_tools(full, messages, tools)
        renderings = [Rendering(full, [])]
    out = []
    for rendering in renderings:
        input_ids, labels = _labels(tokenizer, rendering, assistant_only)
        truncated = max_length is not None and len(input_ids) > max_length
        if truncated:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        out.append(TokenizedChat(input_ids, labels, truncated))
    return out
