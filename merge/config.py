"""Merge YAML (mergekit's format) → a typed `MergeSpec`, checked for everything the file alone can tell.

Nothing here opens a model: checkpoints are resolved and compared in `merge.inputs`. Keys are mergekit's
(`merge_method`, `models[].model`, `models[].parameters.weight`, `base_model`, `parameters`, `dtype`, `out_dtype`,
`tokenizer_source`, `tokenizer`, `chat_template`, `slices`, `modules`), so a config runs unchanged under
`mergekit-yaml`; polyalign is stricter only in refusing what mergekit would silently ignore or fail on late.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.config import load_yaml
from align.errors import ConfigError, PolyalignError

KEYS = ("merge_method", "models", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source", "tokenizer",
        "chat_template", "slices", "modules")
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64", "fp64": "float64"}
COMMON_PARAMETERS = ("weight", "normalize", "t", "density", "epsilon", "lambda", "rescale", "int8_mask")
# polyalign's own streamed average takes exactly these parameters; anything else is a typo or a mergekit method.
LINEAR_PARAMETERS = ("weight", "normalize")
# Task-vector methods add weighted (model - base) differences: a negative weight subtracts a task, which is a
# legitimate use (task negation), so only these accept negative weights.
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                       "della", "della_linear")


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
    raw: dict = field(default_factory=dict)
    source: str | None = None

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
        if isinstance(donor, str) and donor not in ("base", "union"):
            refs.append(donor)
        return list(dict.fromkeys(refs))


def load_config(path: str | Path) -> MergeSpec:
    return parse_config(load_yaml(path), str(path))


def parse_config(raw: dict, source: str | None = None) -> MergeSpec:
    source = source or "merge config"  # a dict from the Python API has no file to name
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "expected a mapping of keys to values at the top level")
    for key in raw:
        if key not in KEYS:
            # method parameters at the top level are a common slip: point them to `parameters:`
            candidates = {**{k: k for k in KEYS}, **{k: f"parameters.{k}" for k in COMMON_PARAMETERS}}
            close = difflib.get_close_matches(str(key), list(candidates), n=1)
            hint = f" (did you mean '{candidates[close[0]]}'?)" if close else f" (expected one of {', '.join(KEYS)})"
            raise ConfigError(source, str(key), f"unknown key in a merge config{hint}")
    method = raw.get("merge_method")
    if not isinstance(method, str) or not method:
        raise ConfigError(source, "merge_method", "missing: name a merge method (linear, slerp, ties, ...)")
    layered = bool(raw.get("slices") or raw.get("modules"))
    models_raw = raw.get("models")
    if layered and models_raw:
        raise ConfigError(source, "models", "give either models or slices/modules, not both")
    models = [_model(entry, i, source) for i, entry in enumerate(models_raw or [])]
    if layered:
        models = _slice_models(raw, source)
    if not models:
        raise ConfigError(source, "models", "no input models: list at least one under models")
    spec = MergeSpec(
        method=method.strip(),
        models=models,
        base_model=_reference(raw.get("base_model"), "base_model", source),
        parameters=_parameters(raw.get("parameters"), "parameters", source),
        dtype=_dtype(raw.get("dtype"), "dtype", source),
        out_dtype=_dtype(raw.get("out_dtype"), "out_dtype", source),
        tokenizer_source=_reference(raw.get("tokenizer_source"), "tokenizer_source", source),
        tokenizer=_tokenizer(raw.get("tokenizer"), source),
        chat_template=raw.get("chat_template"),
        layered=layered,
        raw=raw,
        source=source,
    )
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
    return spec


def _model(entry: Any, index: int, source: str | None) -> ModelSpec:
    where = f"models[{index}]"
    if isinstance(entry, (str, Path)):
        entry = {"model": str(entry)}
    if not isinstance(entry, dict):
        raise ConfigError(source, where, "expected {model: PATH, parameters: {weight: W}}")
    unknown = set(entry) - {"model", "parameters"}
    if unknown:
        raise ConfigError(source, f"{where}.{sorted(unknown)[0]}", "unknown key (expected model, parameters)")
    ref = _reference(entry.get("model"), f"{where}.model", source)
    if ref is None:
        raise ConfigError(source, f"{where}.model", "missing: the path of a checkpoint or adapter directory")
    return ModelSpec(ref, _parameters(entry.get("parameters"), f"{where}.parameters", source), where)


def _slice_models(raw: dict, source: str | None) -> list[ModelSpec]:
    """The checkpoints a layer-wise (slices/modules) recipe reads, so they are resolved and checked like models."""
    refs: list[str] = []

    def walk(slices: Any, where: str) -> None:
        for i, s in enumerate(slices or []):
            for j, src in enumerate((s or {}).get("sources") or []):
                ref = _reference((src or {}).get("model"), f"{where}[{i}].sources[{j}].model", source)
                if ref and ref not in refs:
                    refs.append(ref)

    walk(raw.get("slices"), "slices")
    for name, module in (raw.get("modules") or {}).items():
        walk((module or {}).get("slices"), f"modules.{name}.slices")
        for i, m in enumerate((module or {}).get("models") or []):
            spec = _model(m, i, source)
            if spec.ref not in refs:
                refs.append(spec.ref)
    return [ModelSpec(r, {}, "slices") for r in refs]


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
    return dict(value)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_weights(spec: MergeSpec) -> None:
    """Weights must be finite; non-negative except for task-vector methods; and not all zero.

    A weight may also be a mergekit gradient (list) or filtered list: every number in it is checked the same way.
    """
    task_vectors = spec.method in TASK_VECTOR_METHODS
    top = spec.parameters.get("weight")
    if spec.layered:  # weights live on slice sources; mergekit resolves which apply where
        for where, ref, value in _layered_weights(spec.raw):
            _check_numbers(spec, value, where, ref, task_vectors)
        return
    scalars: list[tuple[str, float]] = []
    for model in spec.inputs():
        value, where = model.weight, f"{model.where}.parameters.weight"
        if value is None:
            value, where = top, "parameters.weight"
        if value is None:
            if spec.method == "linear" and model.where == "base_model":
                raise ConfigError(spec.source, "base_model",
                                  f"'{model.ref}' is not among models, so linear averages it as one more input and "
                                  "needs a weight: list it under models with a weight (or set a top-level "
                                  "parameters.weight), or drop base_model")
            if spec.method == "linear":
                raise ConfigError(spec.source, f"{model.where}.parameters.weight",
                                  f"missing for '{model.ref}': linear needs a weight per model "
                                  "(or one top-level parameters.weight for all)")
            continue
        _check_numbers(spec, value, where, model.ref, task_vectors)
        if is_scalar(value) or _float_string(value):
            scalars.append((model.ref, float(value)))
    if scalars and len(scalars) == len(spec.inputs()) and not task_vectors:  # (task vectors may cancel out)
        if math.isclose(sum(w for _, w in scalars), 0.0, abs_tol=1e-12):
            raise ConfigError(spec.source, "models", f"the weights sum to zero ({', '.join(f'{w:g}' for _, w in scalars)}): "
                              "give at least one model a positive weight")


def _check_numbers(spec: MergeSpec, value: Any, where: str, ref: str, task_vectors: bool) -> None:
    for number in _numbers(value, where, spec.source):
        if not math.isfinite(number):
            raise ConfigError(spec.source, where, f"weight of '{ref}' is {number}: weights must be finite")
        if number < 0 and not task_vectors:
            raise ConfigError(spec.source, where,
                              f"weight of '{ref}' is negative ({number}): {spec.method} needs weights >= 0 "
                              f"(negative weights only make sense for {', '.join(TASK_VECTOR_METHODS[:3])}, ...)")


def _layered_weights(raw: dict):
    """(where, model, weight) for every weight given in a slices/modules recipe."""
    def sources(slices, where):
        for i, s in enumerate(slices or []):
            for j, src in enumerate((s or {}).get("sources") or []):
                weight = ((src or {}).get("parameters") or {}).get("weight")
                if weight is not None:
                    yield f"{where}[{i}].sources[{j}].parameters.weight", str(src.get("model")), weight

    yield from sources(raw.get("slices"), "slices")
    for name, module in (raw.get("modules") or {}).items():
        yield from sources((module or {}).get("slices"), f"modules.{name}.slices")


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


def own_linear(spec: MergeSpec) -> bool:
    """Whether polyalign's streamed average runs this config (otherwise mergekit's linear does).

    mergekit keeps what polyalign does not re-implement: layer-wise recipes, per-layer weight gradients or filters,
    and building a new vocabulary (`tokenizer_source: union`, a `tokenizer:` block).
    """
    if spec.method != "linear" or spec.layered or spec.tokenizer is not None or spec.tokenizer_source == "union":
        return False
    weights = [m.weight if m.weight is not None else spec.parameters.get("weight") for m in spec.inputs()]
    return all(is_scalar(w) or _float_string(w) for w in weights)


def check_linear_parameters(spec: MergeSpec) -> None:
    for where, params in [("parameters", spec.parameters)] + [(f"{m.where}.parameters", m.parameters)
                                                             for m in spec.models]:
        for key in params:
            if key not in LINEAR_PARAMETERS:
                raise ConfigError(spec.source, f"{where}.{key}",
                                  f"unknown parameter for linear (expected {', '.join(LINEAR_PARAMETERS)})")


def weight_of(spec: MergeSpec, model: ModelSpec) -> float:
    value = model.weight if model.weight is not None else spec.parameters.get("weight")
    return float(value)


def _float_string(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()) is not None


def parse_size(value: str | int) -> int:
    """'5GB', '500MB', '1.5GiB' or a number of bytes → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ConfigError(None, "max_shard_size", f"expected a size like 5GB, 500MB or a number of bytes, got {value!r}")
        unit = (m.group(2) or "b").lower().rstrip("b") or "b"
        scale = {"b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
        size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise ConfigError(None, "max_shard_size", f"must be positive, got {value!r}")
    return size
