"""Text cleaners for chat records: HTML, URLs, emoji, merged multi-turn dialogues, broken list numbering.

Each cleaner is a pure function of text (or of a message list), so `curate` can run them in any number of processes.
Fenced code blocks (```...```) and inline code (`...`) are left untouched by the text cleaners: an answer that
teaches HTML or shows a URL in code keeps it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import regex

# ------------------------------------------------------------------------------------------------ code protection

_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)


def outside_code(text: str, fn) -> str:
    """Apply `fn` to the parts of `text` that are not fenced or inline code."""
    if "`" not in text:
        return fn(text)
    out, last = [], 0
    for match in _CODE.finditer(text):
        out.append(fn(text[last : match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(fn(text[last:]))
    return "".join(out)


def tidy(text: str) -> str:
    """Whitespace a removal leaves behind: runs of spaces, trailing spaces, runs of blank lines."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# ------------------------------------------------------------------------------------------------ HTML

_HTML_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BREAK = re.compile(r"<\s*(?:br|/p|/div|/h[1-6]|/tr|/ul|/ol|hr)\b[^<>]*>", re.I)
_HTML_ITEM = re.compile(r"<\s*li\b[^<>]*>", re.I)
# A real tag: a letter right after '<' (so "a < b" and "x<3" survive), no '<' or '>' inside.
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9:-]*(?:\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")


def strip_html(text: str) -> str:
    """Remove tags (script/style with their content), comments and entities; block tags become line breaks."""
    if "<" not in text and "&" not in text:
        return text

    def clean(part: str) -> str:
        part = _HTML_BLOCKS.sub("", part)
        part = _HTML_COMMENT.sub("", part)
        part = _HTML_BREAK.sub("\n", part)
        part = _HTML_ITEM.sub("\n- ", part)
        part = _HTML_TAG.sub("", part)
        # Entities after tags: "&lt;b&gt;" is text about a tag, not a tag.
        return _ENTITY.sub(lambda m: html.unescape(m.group(0)), part).replace("\xa0", " ")

    return outside_code(text, clean)


# ------------------------------------------------------------------------------------------------ URLs

_MD_LINK = re.compile(r"\[([^\]\n]+)\]\((?:https?://|www\.)[^)\s]+\)")
# Whitespace before a URL goes with it, so "see https://x.org." becomes "see." rather than "see .".
_URL = re.compile(r"[ \t]*(?:https?://|ftp://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}»]", re.I)
_EMPTY_BRACKETS = re.compile(r"[ \t]*(?:\(\s*\)|\[\s*\]|<\s*>)")


def strip_urls(text: str) -> str:
    """Remove URLs; a Markdown link keeps its text. Trailing sentence punctuation stays."""
    if "http" not in text and "www." not in text and "ftp:" not in text:
        return text

    def clean(part: str) -> str:
        part = _MD_LINK.sub(r"\1", part)
        part = _URL.sub("", part)
        return _EMPTY_BRACKETS.sub("", part)

    return outside_code(text, clean)


# ------------------------------------------------------------------------------------------------ emoji

# Emoji by Unicode's own properties: characters shown as emoji by default, text symbols forced to emoji by VS16,
# keycaps and flags, with their skin-tone modifiers, tags and ZWJ sequences. (c), (r), TM, stars and bullets stay.
_EMOJI = regex.compile(
    r"(?:\p{Emoji_Presentation}|\p{Extended_Pictographic}\uFE0F|[#*0-9]\uFE0F?\u20E3|\p{Regional_Indicator})"
    r"(?:\p{Emoji_Modifier}|\uFE0F|[\U000E0020-\U000E007F]"
    r"|\u200D(?:\p{Extended_Pictographic}\uFE0F?|\p{Emoji_Presentation})\p{Emoji_Modifier}?)*"
)


def strip_emoji(text: str) -> str:
    if text.isascii():
        return text
    return outside_code(text, lambda part: _EMOJI.sub("", part))


# ------------------------------------------------------------------------------------------------ list numbering

_ITEM = re.compile(r"^([ \t]*)(\d{1,3})([.)])([ \t]+)(.*)$")


def fix_numbering(text: str) -> str:
    """Renumber ordered lists whose numbers do not count up by one (1. 2. 2. 4. → 1. 2. 3. 4.).

    A list is a run of items with the same indent and delimiter; blank lines and lines indented deeper than the
    items (continuations, nested lists) do not end it, any other line does. The first item's number is kept.
    """
    if not re.search(r"^[ \t]*\d{1,3}[.)][ \t]", text, re.M):
        return text
    return outside_code(text, _renumber)


def _renumber(text: str) -> str:
    lines = text.split("\n")
    runs: list[list[int]] = []  # each run: line indices of its items
    current: list[int] = []
    key = None  # (indent, delimiter) of the current run
    for i, line in enumerate(lines):
        match = _ITEM.match(line)
        if match and (key is None or (match.group(1), match.group(3)) == key):
            key = (match.group(1), match.group(3))
            current.append(i)
            continue
        if key is not None and (not line.strip() or _indent(line) > len(key[0].expandtabs(4))):
            continue  # blank line, continuation or nested content: the list goes on
        if current:
            runs.append(current)
        current, key = [], None
        if match:  # an item of another list (other indent or delimiter) starts a new run
            key = (match.group(1), match.group(3))
            current = [i]
    if current:
        runs.append(current)
    for run in runs:
        numbers = [int(_ITEM.match(lines[i]).group(2)) for i in run]
        expected = list(range(numbers[0], numbers[0] + len(numbers)))
        if len(run) < 2 or numbers == expected:
            continue
        for i, n in zip(run, expected):
            m = _ITEM.match(lines[i])
            lines[i] = f"{m.group(1)}{n}{m.group(3)}{m.group(4)}{m.group(5)}"
    return "\n".join(lines)


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


# ------------------------------------------------------------------------------------------------ merged dialogues

USER_MARKERS = ("User", "Human", "Utilisateur", "Usuario", "Benutzer", "Utente", "Usuário", "Пользователь")
ASSISTANT_MARKERS = ("Assistant", "AI", "Bot", "GPT", "ChatGPT", "Assistent", "Asistente", "Assistente", "Ассистент")


@dataclass
class Markers:
    user: tuple[str, ...] = USER_MARKERS
    assistant: tuple[str, ...] = ASSISTANT_MARKERS
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        names = sorted({*self.user, *self.assistant}, key=len, reverse=True)
        # At a line start: optional Markdown heading or bold around the name, then a colon.
        self.pattern = re.compile(
            r"^[ \t]*(?:#{1,4}[ \t]*)?\**(" + "|".join(map(re.escape, names)) + r")\**[ \t]*:\**[ \t]*", re.M
        )

    def role(self, name: str) -> str:
        return "user" if name in self.user else "assistant"


DEFAULT_MARKERS = Markers()


def find_merged(messages: list[dict], markers: Markers = DEFAULT_MARKERS) -> list[int]:
    """Indices of user/assistant messages that hold embedded turns of the other role ("User: ..." in an answer)."""
    merged = []
    for i, message in enumerate(messages):
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        if ":" not in content:
            continue
        roles = {markers.role(m.group(1)) for m in markers.pattern.finditer(_without_code(content))}
        if roles - {message["role"]}:
            merged.append(i)
    return merged


def _without_code(text: str) -> str:
    return _CODE.sub(lambda m: " " * len(m.group(0)), text) if "`" in text else text


def split_merged(messages: list[dict], markers: Markers = DEFAULT_MARKERS) -> list[dict] | None:
    """Split embedded turns into messages of their own; None when the result is not a user/assistant dialogue.

    Text before the first marker stays with the message's own role; consecutive turns of one role are joined.
    """
    out: list[dict] = []
    merged = set(find_merged(messages, markers))
    for i, message in enumerate(messages):
        if i not in merged:
            _append(out, dict(message))
            continue
        content = message["content"]
        masked = _without_code(content)
        matches = list(markers.pattern.finditer(masked))
        head = content[: matches[0].start()].strip()
        if head:
            _append(out, {"role": message["role"], "content": head})
        for k, match in enumerate(matches):
            end = matches[k + 1].start() if k + 1 < len(matches) else len(content)
            _append(out, {"role": markers.role(match.group(1)), "content": content[match.end() : end].strip()})
    out = [m for m in out if m["content"].strip() or m["role"] == "assistant"]
    dialogue = [m for m in out if m["role"] != "system"]
    if (
        not dialogue
        or dialogue[0]["role"] != "user"
        or dialogue[-1]["role"] != "assistant"
        or not dialogue[-1]["content"].strip()
        or any(a["role"] == b["role"] for a, b in zip(dialogue, dialogue[1:]))
    ):
        return None
    return out


def _append(out: list[dict], message: dict) -> None:
    if out and out[-1]["role"] == message["role"] and message["role"] != "system":
        out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{message['content']}".strip()}
    else:
        out.append(message)


# ------------------------------------------------------------------------------------------------ the cleaner

TEXT_CLEANERS = {"html": strip_html, "urls": strip_urls, "emoji": strip_emoji, "list_numbering": fix_numbering}
MERGED_ACTIONS = ("split", "drop", "keep")


@dataclass
class CleanArgs:
    """The `clean` step: each sub-cleaner on (true) or off (false)."""

    html: bool = True
    urls: bool = True
    emoji: bool = True
    list_numbering: bool = True
    merged_dialogues: str = "split"  # split | drop | keep
    roles: list[str] = field(default_factory=lambda: ["user", "assistant", "system"])  # whose text is cleaned
    user_markers: list[str] | None = None  # names that start a user turn ("User:", "Human:", ...)
    assistant_markers: list[str] | None = None

    def markers(self) -> Markers:
        return Markers(tuple(self.user_markers or USER_MARKERS), tuple(self.assistant_markers or ASSISTANT_MARKERS))


def clean_messages(
    messages: list[dict], args: CleanArgs, markers: Markers = DEFAULT_MARKERS
) -> tuple[list[dict] | None, list[str], str | None]:
    """(cleaned messages or None, names of the cleaners that changed something, drop reason)."""
    changed: list[str] = []
    if args.merged_dialogues != "keep" and find_merged(messages, markers):
        if args.merged_dialogues == "drop":
            return None, changed, "merged_dialogue"
        split = split_merged(messages, markers)
        if split is None:
            return None, changed, "merged_dialogue_unsplittable"
        messages = split
        changed.append("merged_dialogues")
    active = [(name, fn) for name, fn in TEXT_CLEANERS.items() if getattr(args, name)]
    out = []
    for message in messages:
        content = message["content"]
        if message["role"] in args.roles and content:
            before = content
            for name, fn in active:
                after = fn(content)
                if after != content:
                    if name not in changed:
                        changed.append(name)
                    content = after
            if content != before:
                content = tidy(content)
        out.append({**message, "content": content})
    if any(m["role"] == "user" and not m["content"].strip() for m in out) or not any(
        m["role"] == "assistant" and m["content"].strip() for m in out
    ):
        return None, changed, "empty_after_cleaning"
    return out, changed, None
