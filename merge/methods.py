"""Every merge method by name: polyalign's streamed linear, and mergekit's registry for the rest.

SLERP, TIES, DARE-TIES, task arithmetic, model stock, ... run through mergekit's Python API (`MergeConfiguration`,
`MergeOptions`, `run_merge`) from the same config, after polyalign has resolved aliases, merged LoRA adapters and
checked the inputs. mergekit writes into the stage's partial directory, which is renamed into place only when the
merge completes, so a failed or killed mergekit run leaves no output either.
"""

from __future__ import annotations

import copy
import functools
import operator
import re
from pathlib import Path

from align.core.errors import ConfigError
from merge.config import MergeError, MergeSpec, key_of


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
        raise ConfigError(
            spec.source,
            "merge_method",
            f"unknown merge method '{spec.method}' (valid: {', '.join(available_methods())})",
        )
    if spec.layered:
        return
    inputs = [m.ref for m in spec.inputs()]
    try:
        method.validate_inputs(inputs, spec.base_model, group_name="models")
    except (ValueError, RuntimeError) as e:
        hint = "; set base_model" if "base" in str(e).lower() and not spec.base_model else ""
        raise ConfigError(spec.source, "models", f"{spec.method}: {_one_line(e)}{hint}") from None


def mergekit_config(spec: MergeSpec, paths: dict[str, str]):
    """The config with every model reference replaced by the directory polyalign resolved for it (aliases, merged
    adapters), validated by mergekit's `MergeConfiguration`: the one place mergekit reads the config."""
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    raw = copy.deepcopy(spec.raw)
    for key in ("dtype", "out_dtype"):
        if getattr(spec, key):
            raw[key] = getattr(spec, key)  # bf16 → bfloat16: mergekit knows the long names only
    for site, ref in spec.sites:
        functools.reduce(operator.getitem, site[:-1], raw)[site[-1]] = paths.get(ref, ref)
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        return MergeConfiguration.model_validate(raw)
    except ValidationError as e:
        error = e.errors()[0]
        key = key_of(tuple(p for p in error["loc"] if isinstance(p, int) or re.fullmatch(r"\w+", p)))
        raise ConfigError(spec.source, key or None, f"not a valid mergekit config: {error['msg']}") from None
    except (ValueError, RuntimeError) as e:  # mergekit's own validators raise RuntimeError
        raise ConfigError(spec.source, None, f"not a valid mergekit config: {_one_line(e)}") from None


def run_mergekit(spec: MergeSpec, config, out_dir: Path, options, *, work_dir: Path) -> None:
    """Run a validated MergeConfiguration into out_dir (adapters that mergekit merges itself go to work_dir)."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    mergekit_options = MergeOptions(
        out_shard_size=options.max_shard_bytes,
        random_seed=options.seed,
        quiet=not options.progress,
        lora_merge_cache=str(work_dir / "mergekit-lora"),
        copy_tokenizer=True,
        write_model_card=False,
        device="auto",
        safe_serialization=True,
    )
    try:
        run_merge(config, str(out_dir), options=mergekit_options)
    except (RuntimeError, ValueError, TypeError) as e:
        raise MergeError(f"{spec.method}: mergekit stopped: {_one_line(e)}") from e


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3]) if text else type(error).__name__
