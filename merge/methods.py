"""Every merge method by name: polyalign's streamed linear, and mergekit's registry for the rest.

SLERP, TIES, DARE-TIES, task arithmetic, model stock, ... run through mergekit's Python API (`MergeConfiguration`,
`MergeOptions`, `run_merge`) from the same config, after polyalign has resolved aliases, merged LoRA adapters and
checked the inputs. mergekit writes into polyalign's temporary directory, which is renamed into place only when
the merge completes, so a failed or killed mergekit run leaves no output either.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from align.errors import ConfigError

from .config import MergeError, MergeSpec

log = logging.getLogger(__name__)


def mergekit_methods() -> dict:
    from mergekit.merge_methods import registered_methods

    return {m.spec.name: m for m in registered_methods()}


def available_methods() -> list[str]:
    return sorted(set(mergekit_methods()) | {"linear"})


def check_method(spec: MergeSpec) -> None:
    """Unknown method → the list of valid ones; a known one → its input contract (number of models, base model)."""
    methods = mergekit_methods()
    method = methods.get(spec.method)
    if method is None:
        raise ConfigError(spec.source, "merge_method",
                          f"unknown merge method '{spec.method}' (valid: {', '.join(available_methods())})")
    if spec.layered:
        return
    inputs = [m.ref for m in spec.inputs()]
    try:
        method.validate_inputs(inputs, spec.base_model, group_name="models")
    except (ValueError, RuntimeError) as e:
        hint = "; set base_model" if "base" in str(e).lower() and not spec.base_model else ""
        raise ConfigError(spec.source, "models", f"{spec.method}: {_one_line(e)}{hint}") from None


def mergekit_config(spec: MergeSpec, paths: dict[str, str]):
    """The user's config with every model reference replaced by the directory polyalign resolved for it (aliases,
    merged adapters), as a mergekit `MergeConfiguration`."""
    from mergekit.config import MergeConfiguration

    raw = copy.deepcopy(spec.raw)
    for key in ("dtype", "out_dtype"):
        if getattr(spec, key):
            raw[key] = getattr(spec, key)  # bf16 → bfloat16: mergekit knows the long names only

    def swap(ref):
        return paths.get(ref, ref) if isinstance(ref, str) else ref

    raw["models"] = [{"model": swap(m["model"] if isinstance(m, dict) else str(m)),
                      **({"parameters": m["parameters"]} if isinstance(m, dict) and m.get("parameters") else {})}
                     for m in raw.get("models") or []] or None
    if raw.get("base_model"):
        raw["base_model"] = swap(raw["base_model"])
    if raw.get("tokenizer_source") not in (None, "base", "union"):
        raw["tokenizer_source"] = swap(raw["tokenizer_source"])
    if isinstance(raw.get("tokenizer"), dict) and raw["tokenizer"].get("source") not in (None, "base", "union"):
        raw["tokenizer"]["source"] = swap(raw["tokenizer"]["source"])
    for slices in [raw.get("slices") or []] + [(m or {}).get("slices") or [] for m in (raw.get("modules") or {}).values()]:
        for s in slices:
            for src in s.get("sources") or []:
                src["model"] = swap(src.get("model"))
    for module in (raw.get("modules") or {}).values():
        for m in (module or {}).get("models") or []:
            if isinstance(m, dict):
                m["model"] = swap(m.get("model"))
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        return MergeConfiguration.model_validate(raw)
    except Exception as e:  # pydantic's ValidationError, or mergekit's own RuntimeError from its validators
        raise ConfigError(spec.source, None, f"not a valid mergekit config: {_one_line(e)}") from None


def run_mergekit(spec: MergeSpec, paths: dict[str, str], out_dir: Path, *, max_shard_bytes: int, seed: int | None,
                 progress: bool, work_dir: Path) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = mergekit_config(spec, paths)
    options = MergeOptions(out_shard_size=max_shard_bytes, random_seed=seed, quiet=not progress,
                           lora_merge_cache=str(work_dir / "mergekit-lora"), copy_tokenizer=True,
                           write_model_card=False, device="auto", safe_serialization=True)
    try:
        run_merge(config, str(out_dir), options=options, config_source=config.to_yaml())
    except (RuntimeError, ValueError, TypeError) as e:
        raise MergeError(f"{spec.method}: mergekit stopped: {_one_line(e)}") from e


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3]) if text else type(error).__name__
