"""Chat templates for models that have none (base models as students): a known name, a Jinja file, or the template
text itself, applied to the tokenizer with the special tokens it needs, its end-of-turn token as EOS (so that the
model learns to stop and generation stops there), and the embeddings grown to match. The trained output saves the
tokenizer with its template, so every later stage, and any HF user, loads it as it was trained.
"""

from __future__ import annotations

import re
from pathlib import Path

from align.core.errors import ConfigError

# polyalign's own, for the names mergekit does not ship (mergekit's: chatml, llama3, mistral, alpaca, exaone).
GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
OWN = {"gemma": GEMMA}
# The token that closes an assistant turn, per named template (for a file, the last special token of the template).
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>|<start_of_turn>|<end_of_turn>")


def builtin_templates() -> dict[str, Path]:
    """mergekit's named chat templates (chatml, llama3, mistral, alpaca, exaone)."""
    from importlib.resources import files

    folder = files("mergekit._data").joinpath("chat_templates")
    return {p.name.removesuffix(".jinja"): p for p in folder.iterdir() if p.name.endswith(".jinja")}


def known_templates() -> dict[str, str]:
    return {**{name: path.read_text(encoding="utf-8") for name, path in builtin_templates().items()}, **OWN}


def resolve(value: str, key: str = "chat_template") -> tuple[str, str | None]:
    """(template text, its name when it is a known one) of a recipe's `chat_template`."""
    known = known_templates()
    if value in known:
        return known[value], value
    if "{" in value:
        return value, None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8"), None
    raise ConfigError(
        None,
        key,
        f"{value!r} is neither a known template ({', '.join(sorted(known))}), a Jinja file, nor template text",
    )


def apply(tokenizer, value: str) -> list[str]:
    """Give `tokenizer` the template; returns the special tokens that had to be added (the model's embeddings must
    then grow to `len(tokenizer)`: `align.models.loading.match_embeddings`)."""
    text, name = resolve(value)
    needed = list(dict.fromkeys(_SPECIAL.findall(text)))
    vocab = tokenizer.get_vocab()
    added = [t for t in needed if t not in vocab]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    tokenizer.chat_template = text
    end = END_OF_TURN.get(name) or (needed[-1] if needed else None)
    if end is not None:
        tokenizer.eos_token = end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added
