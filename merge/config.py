"""Merge YAML (mergekit's format) → a typed `MergeSpec`, checked for everything the file alone can tell.

Nothing here opens a model: checkpoints are resolved and compared in `merge.inputs`. Keys are mergekit's
(`merge_method`, `models[].model`, `models[].parameters.weight`, `base_model`, `parameters`, `dtype`, `out_dtype`,
`tokenizer_source`, `tokenizer`, `chat_template`, `slices`, `modules`), so a config runs unchanged under
`mergekit-yaml`; polyalign is stricter only in refusing what mergekit would silently ignore or fail on late.

One module over 400 lines: one short check per mergekit key, so that a bad file fails before any model opens.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.core.config import load_yaml
from align.core.errors import ConfigError, PolyalignError

KEYS = (
    "merge_method",
    "models",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "slices",
    "modules",
)
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float64": "float64",
    "fp64": "float64",
}
COMMON_PARAMETERS = ("weight", "normalize", "t", "density", "epsilon", "lambda", "rescale", "int8_mask")
# mergekit's linear takes exactly these parameters (and so does polyalign's streamed one): anything else is a typo
# or another method's.
LINEAR_PARAMETERS = ("weight", "normalize")
# Task-vector methods add weighted (model - base) differences: a negative weight subtracts a task, which is a
# legitimate use (task negation), so only these accept negative weights.
TASK_VECTOR_METHODS = (
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
)
TOKENIZER_KEYWORDS = ("base", "union")  # tokenizer sources that name no checkpoint


class MergeError(PolyalignError):
    """A merge that cannot run as asked: names the checkpoint (or config key) and what to change."""


@dataclass
class ModelSpec:
    """One input as written in the config: a path, an alias, an adapter directory or mergekit's `base+adapter`."""

    ref: str
    parameters: dict = field(default_factory=dict)
    where: str = "models"

    @property
    def weight(self) -> Any:
        return self.parameters.get("weight")


Site = tuple  # where a model reference is written in the config: ("slices", 0, "sources", 1, "model")


@dataclass
class MergeSpec:
    method: str
    models: list[ModelSpec]
    base_model: str | None = None
    parameters: dict = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict | None = None
    chat_template: str | None = None
    layered: bool = False  # `slices` or `modules`: layer-wise recipes that only mergekit runs
    raw: dict = field(default_factory=dict)  # the config as given, paths as strings, `models` entries as mappings
    source: str | None = None
    sites: list[tuple[Site, str]] = field(default_factory=list)  # every model reference and where it is written
    layered_weights: list[tuple[str, str, Any]] = field(default_factory=list)  # (key, model, weight) of a recipe

    @property
    def normalize(self) -> Any:
        return self.parameters.get("normalize", True)

    def inputs(self) -> list[ModelSpec]:
        """Every checkpoint the merge reads, in order: the models, then base_model when it is not among them
        (mergekit merges a base that is not listed as one more input)."""
        out = list(self.models)
        if self.base_model and self.base_model not in {m.ref for m in self.models}:
            out.append(ModelSpec(self.base_model, {}, "base_model"))
        return out

    def references(self) -> list[str]:
        """Every model reference the config names, once each (tokenizer donors included)."""
        refs = [m.ref for m in self.inputs()]
        donor = self.tokenizer_source if self.tokenizer is None else (self.tokenizer or {}).get("source")
        if isinstance(donor, str) and donor not in TOKENIZER_KEYWORDS:
            refs.append(donor)
        return list(dict.fromkeys(refs))

    def weight(self, model: ModelSpec) -> Any:
        """A model's weight as written: its own, else the top-level parameters.weight."""
        return model.weight if model.weight is not None else self.parameters.get("weight")

    def scalar_weights(self) -> list[float] | None:
        """One number per input, in inputs() order; None when any weight is missing, a gradient or a filter list."""
        weights = [self.weight(m) for m in self.inputs()]
        if not all(is_scalar(w) or _float_string(w) for w in weights):
            return None
        return [float(w) for w in weights]

    def to_yaml(self) -> str:
        """The config as given, which `polyalign merge` and `mergekit-yaml` both accept."""
        return yaml.safe_dump(self.raw, sort_keys=False, allow_unicode=True)


def load_config(path: str | Path) -> MergeSpec:
    return parse_config(load_yaml(path), str(path))


def parse_config(raw: dict, source: str | None = None) -> MergeSpec:
    source = source or "merge config"  # a dict from the Python API has no file to name
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "expected a mapping of keys to values at the top level")
    _check_keys(raw, source)
    method = raw.get("merge_method")
    if not isinstance(method, str) or not method:
        raise ConfigError(source, "merge_method", "missing: name a merge method (linear, slerp, ties, ...)")
    raw = json.loads(json.dumps(raw, default=str))  # a copy the walk may tidy, paths as strings
    walk = _Walk(source)
    walk.inputs(raw)
    tokenizer = _tokenizer(raw.get("tokenizer"), source)
    if isinstance((tokenizer or {}).get("source"), str):
        walk.reference(tokenizer, ("tokenizer", "source"))
    spec = MergeSpec(
        method=method.strip(),
        models=walk.models,
        base_model=walk.reference(raw, ("base_model",)),
        parameters=_parameters(raw.get("parameters"), "parameters", source),
        dtype=_dtype(raw.get("dtype"), "dtype", source),
        out_dtype=_dtype(raw.get("out_dtype"), "out_dtype", source),
        tokenizer_source=walk.reference(raw, ("tokenizer_source",)),
        tokenizer=tokenizer,
        chat_template=raw.get("chat_template"),
        layered=walk.layered,
        raw=raw,
        source=source,
        sites=walk.sites,
        layered_weights=walk.weights,
    )
    _check_spec(spec)
    return spec


def _check_keys(raw: dict, source: str) -> None:
    for key in raw:
        if key not in KEYS:
            # method parameters at the top level are a common slip: point them to `parameters:`
            candidates = {**{k: k for k in KEYS}, **{k: f"parameters.{k}" for k in COMMON_PARAMETERS}}
            close = difflib.get_close_matches(str(key), list(candidates), n=1)
            hint = f" (did you mean '{candidates[close[0]]}'?)" if close else f" (expected one of {', '.join(KEYS)})"
            raise ConfigError(source, str(key), f"unknown key in a merge config{hint}")


def _check_spec(spec: MergeSpec) -> None:
    source = spec.source
    if not spec.models:
        raise ConfigError(source, "models", "no input models: list at least one under models")
    if spec.tokenizer is not None and spec.tokenizer_source is not None:
        raise ConfigError(source, "tokenizer", "give tokenizer_source or tokenizer, not both")
    if spec.chat_template is not None and not isinstance(spec.chat_template, str):
        raise ConfigError(source, "chat_template", "expected 'auto', a template name or a Jinja template string")
    if spec.tokenizer_source == "base" and not spec.base_model:
        raise ConfigError(source, "tokenizer_source", "'base' needs a base_model")
    normalize = spec.parameters.get("normalize", True)
    if not isinstance(normalize, bool):
        raise ConfigError(source, "parameters.normalize", f"expected true or false, got {normalize!r}")
    refs = [m.ref for m in spec.models]
    duplicate = next((r for r in refs if refs.count(r) > 1), None)
    if duplicate is not None:
        raise ConfigError(source, "models", f"'{duplicate}' is listed twice: give it once with the summed weight")


def key_of(site: Site) -> str:
    """("slices", 0, "sources", 1, "model") → 'slices[0].sources[1].model', as errors name a key."""
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(site))


@dataclass
class _Walk:
    """The one pass over a config's model references: the checkpoints the merge reads (`models`), every place a
    reference is written (`sites`, swapped for the resolved directory before mergekit runs), and the weights of a
    layer-wise recipe (checked like models' weights)."""

    source: str
    models: list[ModelSpec] = field(default_factory=list)
    sites: list[tuple[Site, str]] = field(default_factory=list)
    weights: list[tuple[str, str, Any]] = field(default_factory=list)
    layered: bool = False

    def inputs(self, raw: dict) -> None:
        self.layered = bool(raw.get("slices") or raw.get("modules"))
        if not self.layered:
            self.entries(raw, ("models",))
            return
        if raw.get("models"):
            raise ConfigError(self.source, "models", "give either models or slices/modules, not both")
        groups = [(raw, ())]
        modules = self.mapping(raw.get("modules"), ("modules",))
        groups += [(self.mapping(modules[name], ("modules", name)), ("modules", name)) for name in modules]
        for parent, prefix in groups:
            site = (*prefix, "slices")
            for i, piece in enumerate(self.sequence(parent, site)):
                piece = self.mapping(piece, (*site, i))
                if piece.get("base_model") is not None:
                    self.add(self.reference(piece, (*site, i, "base_model")))
                self.entries(piece, (*site, i, "sources"))
            if prefix:
                self.entries(parent, (*prefix, "models"))

    def entries(self, parent: dict, site: Site) -> None:
        """A `models` list or a slice's `sources`: {model, parameters} each (a bare path stands for {model})."""
        entries = self.sequence(parent, site)
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = entries[i] = {"model": entry}
            if not isinstance(entry, dict):
                raise ConfigError(self.source, key_of((*site, i)), "expected {model: PATH, parameters: {weight: W}}")
            unknown = sorted(set(entry) - {"model", "parameters"})
            if unknown and site[-1] == "models":  # (slice sources also have layer_range)
                raise ConfigError(
                    self.source, key_of((*site, i, unknown[0])), "unknown key (expected model, parameters)"
                )
            ref = self.reference(entry, (*site, i, "model"))
            if ref is None:
                raise ConfigError(
                    self.source, key_of((*site, i, "model")), "missing: the path of a checkpoint or adapter directory"
                )
            parameters = _parameters(entry.get("parameters"), key_of((*site, i, "parameters")), self.source)
            if not self.layered:
                self.models.append(ModelSpec(ref, parameters, key_of((*site, i))))
                continue
            self.add(ref)
            if parameters.get("weight") is not None:
                self.weights.append((key_of((*site, i, "parameters", "weight")), ref, parameters["weight"]))

    def add(self, ref: str) -> None:
        """A checkpoint of a layer-wise recipe, read (and checked) once however many slices name it."""
        if ref not in {m.ref for m in self.models}:
            self.models.append(ModelSpec(ref, {}, "slices"))

    def reference(self, parent: dict, site: Site) -> str | None:
        ref = _reference(parent.get(site[-1]), key_of(site), self.source)
        if ref is not None:
            parent[site[-1]] = ref
            if not (site[-1] in ("tokenizer_source", "source") and ref in TOKENIZER_KEYWORDS):
                self.sites.append((site, ref))
        return ref

    def sequence(self, parent: dict, site: Site) -> list:
        value = parent.get(site[-1])
        if value is not None and not isinstance(value, list):
            raise ConfigError(self.source, key_of(site), f"expected a list, got {value!r}")
        return value or []

    def mapping(self, value: Any, site: Site) -> dict:
        if value is not None and not isinstance(value, dict):
            raise ConfigError(self.source, key_of(site), f"expected a mapping, got {value!r}")
        return value or {}


def _reference(value: Any, key: str, source: str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, key, f"expected a path or model name, got {value!r}")
    return value.strip()


def _parameters(value: Any, key: str, source: str | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"expected a mapping of parameter names to values, got {value!r}")
    return dict(value)


def _dtype(value: Any, key: str, source: str | None) -> str | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(source, key, f"unknown dtype {value!r} (expected bfloat16, float16, float32 or float64)")
    return DTYPES[name]


def _tokenizer(value: Any, source: str | None) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(source, "tokenizer", "expected a mapping (source, tokens, pad_to_multiple_of)")
    return value


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_weights(spec: MergeSpec) -> None:
    """Weights must be finite; non-negative except for task-vector methods; and not all zero.

    A weight may also be a mergekit gradient (list) or filtered list: every number in it is checked the same way.
    """
    task_vectors = spec.method in TASK_VECTOR_METHODS
    top = spec.parameters.get("weight")
    if spec.layered:  # weights live on slice sources; mergekit resolves which apply where
        for where, ref, value in spec.layered_weights:
            _check_numbers(spec, value, where, ref, task_vectors)
        return
    for model in spec.inputs():
        value, where = model.weight, f"{model.where}.parameters.weight"
        if value is None:
            value, where = top, "parameters.weight"
        if value is None:
            if spec.method == "linear" and model.where == "base_model":
                raise ConfigError(
                    spec.source,
                    "base_model",
                    f"'{model.ref}' is not among models, so linear averages it as one more input and "
                    "needs a weight: list it under models with a weight (or set a top-level "
                    "parameters.weight), or drop base_model",
                )
            if spec.method == "linear":
                raise ConfigError(
                    spec.source,
                    f"{model.where}.parameters.weight",
                    f"missing for '{model.ref}': linear needs a weight per model "
                    "(or one top-level parameters.weight for all)",
                )
            continue
        _check_numbers(spec, value, where, model.ref, task_vectors)
    weights = spec.scalar_weights()
    if weights and not task_vectors and math.isclose(sum(weights), 0.0, abs_tol=1e-12):  # task vectors may cancel
        raise ConfigError(
            spec.source,
            "models",
            f"the weights sum to zero ({', '.join(f'{w:g}' for w in weights)}): "
            "give at least one model a positive weight",
        )


def _check_numbers(spec: MergeSpec, value: Any, where: str, ref: str, task_vectors: bool) -> None:
    for number in _numbers(value, where, spec.source):
        if not math.isfinite(number):
            raise ConfigError(spec.source, where, f"weight of '{ref}' is {number}: weights must be finite")
        if number < 0 and not task_vectors:
            raise ConfigError(
                spec.source,
                where,
                f"weight of '{ref}' is negative ({number}): {spec.method} needs weights >= 0 "
                f"(negative weights only make sense for {', '.join(TASK_VECTOR_METHODS[:3])}, ...)",
            )


def _numbers(value: Any, key: str, source: str | None) -> list[float]:
    """The numbers in a parameter value: a scalar, a gradient list, or a list of {filter, value} entries."""
    if is_scalar(value):
        return [float(value)]
    if isinstance(value, str):
        try:
            return [float(value)]  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if isinstance(value, list) and value:
        out = []
        for item in value:
            out += _numbers(item.get("value") if isinstance(item, dict) else item, key, source)
        return out
    if isinstance(value, dict) and "value" in value:
        return _numbers(value["value"], key, source)
    raise ConfigError(source, key, f"expected a number, got {value!r}")


def check_linear_parameters(spec: MergeSpec) -> None:
    for where, params in [("parameters", spec.parameters)] + [
        (f"{m.where}.parameters", m.parameters) for m in spec.models
    ]:
        for key in params:
            if key not in LINEAR_PARAMETERS:
                raise ConfigError(
                    spec.source,
                    f"{where}.{key}",
                    f"unknown parameter for linear (expected {', '.join(LINEAR_PARAMETERS)})",
                )


def _float_string(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()) is not None


def parse_size(value: str | int) -> int:
    """'5GB', '500MB', '1.5GiB' or a number of bytes → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ConfigError(
                None, "max_shard_size", f"expected a size like 5GB, 500MB or a number of bytes, got {value!r}"
            )
        unit = (m.group(2) or "b").lower().rstrip("b") or "b"
        scale = {
            "b": 1,
            "k": 10**3,
            "m": 10**6,
            "g": 10**9,
            "t": 10**12,
            "ki": 2**10,
            "mi": 2**20,
            "gi": 2**30,
            "ti": 2**40,
        }[unit]
        size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise ConfigError(None, "max_shard_size", f"must be positive, got {value!r}")
    return size
