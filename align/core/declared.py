"""A stage's keys as they are declared: each field of its Args dataclass, with its type, its default and the comment
written beside it (or on the lines just above it), read from the source. The declaration stays the one place a key
is defined; `polyalign <stage> --help` prints what this reads."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str  # "required" when the field has none
    help: str
    declared_in: str  # the dataclass that declares it: keys group by it

    @property
    def required(self) -> bool:
        return self.default == "required" or self.help.startswith("required")

    @property
    def text(self) -> str:
        """The help without its "required" mark (which `required` reports)."""
        return self.help.removeprefix("required: ").removeprefix("required")


def _comments(cls) -> dict[str, str]:
    """Field name → its comment: the one on its line, else the comment-only lines right above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found, above, line_names = {}, [], {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for k, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and k + 1 < len(tokens) and tokens[k + 1].string == ":" and tok.start[1] == 4:
            line_names[tok.start[0]] = tok.string
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            row = tok.start[0]
            if row in line_names:
                found[line_names[row]] = text
            else:
                above.append((row, text))
    for row, name in line_names.items():
        if name not in found:
            lines = []
            for r in range(row - 1, 0, -1):
                match = next((t for rr, t in above if rr == r), None)
                if match is None:
                    break
                lines.insert(0, match)
            if lines:
                found[name] = " ".join(lines)
    return found


def declared_keys(cls) -> list[Key]:
    """Every key of an Args dataclass (own fields and inherited ones), in declaration order, with its help."""
    owners = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            for f in base.__dict__.get("__dataclass_fields__", {}).values():
                if f.name in getattr(base, "__annotations__", {}):
                    owners[f.name] = base
    keys = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        owner = owners.get(f.name, cls)
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        help_text = f.metadata.get("help") or _comments(owner).get(f.name, "")
        keys.append(Key(f.name, str(f.type), default, help_text, owner.__name__))
    return keys


def trl_fields(trl_cls) -> list[Key]:
    """The fields of a trl config class that pass through a recipe, with trl's defaults and help."""
    keys = []
    for f in dataclasses.fields(trl_cls):
        if f.name.startswith("_"):
            continue
        default = repr(f.default) if f.default is not dataclasses.MISSING else "—"
        text = " ".join(str(f.metadata.get("help", "")).split())
        keys.append(Key(f.name, str(f.type), default, text[:100] + ("…" if len(text) > 100 else ""), trl_cls.__name__))
    return keys
