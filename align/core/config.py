"""YAML recipe + command-line overrides → typed stage config.

A recipe is a flat YAML mapping. Keys that belong to polyalign (model, dataset, lora, ...) fill the stage's own
dataclass; every other key must be a field of the trl config the stage trains with (SFTConfig, DPOConfig, ...)
and passes through to it untouched. `--key value` on the command line overrides the file; dotted keys reach into
mappings (`--lora.r 16`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from align.core.errors import ConfigError


class RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans and `1e-4` is a float.

    PyYAML follows YAML 1.1, where `no`, `off`, `yes` and `on` are booleans (so trl's `save_strategy: no` arrived
    as False) and `1e-4` is a string.
    """


RecipeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """Parse recipe text (a file, or one command-line value) with YAML 1.2 scalars."""
    return yaml.load(text, Loader=RecipeLoader)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), None, "no such config file")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raw = path.read_bytes()
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}:{line}", None, f"not UTF-8: byte 0x{raw[e.start]:02x} (save the file as UTF-8)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(where, None, f"invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a mapping of keys to values at the top level")
    return data


def parse_overrides(argv: list[str]) -> dict:
    """`--key value`, `--key=value`, or a bare `--flag` (true). Values are read as YAML scalars or lists."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(None, arg, "expected --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        key = key.replace("-", "_")
        try:
            parsed = parse_yaml(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        set_dotted(out, key, parsed)
        i += 1
    return out


def set_dotted(target: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {} if child in (None, True) else child
            if not isinstance(child, dict):
                raise ConfigError(None, key, f"'{part}' is not a mapping")
        target = child
    target[last] = value


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _allowed(annotation: Any) -> tuple:
    """The runtime types an annotation admits (Optional/Union unpacked)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed(arg))
    if origin is typing.Literal:
        return (str,)
    return (origin or annotation,)


def coerce(value: Any, annotation: Any, key: str, source: str | None) -> Any:
    """Turn command-line strings and YAML's literal quirks ('1e-4' is a string in YAML) into the field's type."""
    allowed = _allowed(annotation)
    if value is None or any(
        isinstance(t, type) and isinstance(value, t) and not (t is int and isinstance(value, bool))
        for t in allowed
        if t is not typing.Any
    ):
        if float in allowed and isinstance(value, int) and not isinstance(value, bool) and int not in allowed:
            return float(value)
        return value
    if typing.Any in allowed:
        return value
    for t in (bool, int, float):
        if t in allowed:
            try:
                if t is bool:
                    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                        return value.lower() in ("true", "yes", "1")
                    continue
                if t is float and isinstance(value, (int, str)) and not isinstance(value, bool):
                    return float(value)
                if t is int and isinstance(value, str):
                    return int(value)
            except ValueError:
                continue
    if str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if list in allowed and isinstance(value, str):
        return [value]
    if str in allowed or any(isinstance(t, type) and issubclass(t, str) for t in allowed):
        return value
    names = ", ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(source, key, f"expected {names}, got {value!r}")


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def unknown_key_error(key: str, known: list[str], source: str | None, what: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(source, key, f"unknown key: not a {what} field{hint}")


def split_known(raw: dict, own_cls, trl_cls, source: str | None) -> tuple[dict, dict]:
    """Split a flat recipe into the stage's own keys and trl config keys, coercing each to its field type."""
    own_types, trl_types = field_types(own_cls), field_types(trl_cls)
    own, trl = {}, {}
    for key, value in raw.items():
        if key in own_types:
            own[key] = coerce(value, own_types[key], key, source)
        elif key in trl_types:
            trl[key] = coerce(value, trl_types[key], key, source)
        else:
            raise unknown_key_error(key, [*own_types, *trl_types], source, f"polyalign or trl {trl_cls.__name__}")
    return own, trl


def build_dataclass(cls, data: dict, source: str | None, prefix: str = ""):
    types_ = field_types(cls)
    values = {}
    for key, value in data.items():
        if key not in types_:
            raise unknown_key_error(f"{prefix}{key}", [f"{prefix}{k}" for k in types_], source, cls.__name__)
        values[key] = coerce(value, types_[key], f"{prefix}{key}", source)
    try:
        return cls(**values)
    except ConfigError as e:  # a dataclass's own check names the key, not the file
        raise e.located(source, prefix) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(source, prefix.rstrip(".") or None, str(e)) from None


def require(args, source: str | None, **missing: str) -> None:
    """Refuse a config that leaves a required key unset: `require(args, source, output_dir="where to write ...")`."""
    for key, help_text in missing.items():
        if getattr(args, key) in (None, ""):
            raise ConfigError(source, key, f"missing: {help_text}")


def dotted_keys(data: dict, prefix: str = "") -> set[str]:
    """Every key path of a nested mapping ("lora", "lora.r"): which keys the command line set."""
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


def read_stage_config(path: str | None, argv: list[str]) -> tuple[dict, str | None]:
    """A stage's recipe and command-line overrides merged, and its source (which remembers what the command line
    set, so that an error names the right place)."""
    from align.core.errors import ConfigSource

    raw = load_yaml(path) if path else {}
    overrides = parse_overrides(argv)
    source = ConfigSource(str(path), dotted_keys(overrides)) if path else None
    return deep_merge(raw, overrides), source


def config_hash(data: dict) -> str:
    """Stable hash of a resolved config: tells a resumed run whether its checkpoints belong to this config."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plain(value: Any) -> Any:
    """Data as a recipe file holds it (mappings, lists, strings, numbers): paths and enums become strings, tuples
    lists, so that the form written, printed and hashed is the one a recipe read back gives."""
    return json.loads(json.dumps(value, default=str))


def resolve_recipe(raw: dict, own_cls, source: str | None = None, trl_cls=None) -> dict:
    """The recipe a stage runs: every key of `own_cls` (its Args dataclass) with its value, the recipe's or the
    declared default, then the trl fields the recipe sets over the trl defaults polyalign changes (`own_cls.
    trl_defaults`). Its hash is the stage's config hash, so a recipe and its resolved form are the same config.

    Of trl's own defaults only those polyalign changes are written: the rest are trl's (`--help --all` lists them),
    and writing all of them would bury the recipe under a hundred keys and tie its hash to fields a trl release adds
    or renames. Nested mappings (`lora`, `dpo`, a step's options) stay as written: their stage reads them."""
    own, trl = raw, {}
    if trl_cls is not None:  # polyalign's trl defaults first, typed as the recipe's values are
        own, trl = split_known({**getattr(own_cls, "trl_defaults", {}), **raw}, own_cls, trl_cls, source)
    args = build_dataclass(own_cls, own, source)  # unknown keys, wrong types and bad values fail as in the stage
    out = {f.name: getattr(args, f.name) for f in dataclasses.fields(own_cls) if f.init and not f.name.startswith("_")}
    return plain(out | trl)


def recipe_hash(recipe: dict) -> str:
    """The config hash of a stage's resolved recipe: `overwrite` says what to do with an old output, not what to
    build, so it is left out."""
    return config_hash({k: v for k, v in recipe.items() if k != "overwrite"})


class RecipeDumper(yaml.SafeDumper):
    """Writes what RecipeLoader reads back unchanged: a string that YAML 1.2 would read as a number (`1e5`) is
    quoted, and keys keep their order."""


RecipeDumper.yaml_implicit_resolvers = RecipeLoader.yaml_implicit_resolvers


def dump_recipe(data: dict) -> str:
    return yaml.dump(data, Dumper=RecipeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
