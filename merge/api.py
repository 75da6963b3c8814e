"""`soup()` and `run()`: validate everything, merge in the stage's partial directory, rename it into place.

Order of work, so that a bad merge fails before anything is written: 1. the output (an existing one is refused
unless overwrite), the config and weights (no file opened), 2. each input's directory, config and safetensors
headers, the engine that merges them, and the inputs' compatibility, 3. tokenizer source and chat template, then
4. in the stage's partial directory (align.core.lifecycle.StageRun, which clears one a dead run left and refuses one a live
run is building): LoRA adapters are merged into their bases, the engine merges, the card is written, and the
partial becomes OUTPUT by one rename.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align.core.errors import ConfigSource
from merge.config import (
    MergeError,
    MergeSpec,
    check_linear_parameters,
    check_weights,
    load_config,
    parse_config,
    parse_size,
)
from merge.engines import Options, Plan, choose_engine
from merge.inputs import Checkpoint, check_compatible, has_tokenizer, merge_adapter, resolve
from merge.methods import check_method
from merge.output import resolve_chat_template, write_record

DEFAULT_SHARD_SIZE = "5GB"


def soup(
    models: Sequence[Any] | dict | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    normalize: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
    method: str = "linear",
    base_model: str | None = None,
    tokenizer_source: str | None = None,
    chat_template: str | None = None,
    out_dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
    seed: int | None = None,
    progress: bool = True,
    command: str | None = None,
    report_to=None,
    run_name: str | None = None,
) -> Path:
    """Merge checkpoints into `output_dir` and return its path.

    `models` is a list of `(path, weight)` pairs (or bare paths, weight 1), a mergekit-format config dict, or the
    path of a merge YAML. With a list, the keywords describe the merge (`normalize`, `dtype`, `method`, ...); a dict
    or YAML carries its own, and giving them again as keywords is refused rather than silently ignored.
    A path may be a checkpoint directory, an embedded alias (`smollm2-135m`) or a LoRA adapter directory.
    `report_to` and `run_name` send the inputs and their weights to trackers (align.core.tracking).
    """
    if isinstance(models, (str, os.PathLike)) or isinstance(models, dict):
        given = {
            k: v
            for k, v in dict(
                normalize=normalize,
                dtype=dtype,
                method=method,
                base_model=base_model,
                tokenizer_source=tokenizer_source,
                chat_template=chat_template,
                out_dtype=out_dtype,
            ).items()
            if v != dict(normalize=True, method="linear").get(k)
        }
        if given:
            raise MergeError(
                f"soup(): '{sorted(given)[0]}' belongs in the config when models is a config; "
                "set it in the config, not as a keyword"
            )
        spec = load_config(models) if not isinstance(models, dict) else parse_config(models, None)
    else:
        entries = []
        for item in models:
            path, weight = (item, 1.0) if isinstance(item, (str, os.PathLike)) else tuple(item)
            entries.append({"model": str(path), "parameters": {"weight": weight}})
        raw: dict = {"merge_method": method, "models": entries}
        if base_model is not None:
            raw["base_model"] = str(base_model)
        if not normalize:
            raw["parameters"] = {"normalize": False}
        for key, value in (
            ("dtype", dtype),
            ("out_dtype", out_dtype),
            ("tokenizer_source", tokenizer_source),
            ("chat_template", chat_template),
        ):
            if value is not None:
                raw[key] = str(value)
        spec = parse_config(raw, None)
    return run(
        spec,
        output_dir,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        seed=seed,
        progress=progress,
        command=command or "merge.soup(...) (polyalign Python API)",
        report_to=report_to,
        run_name=run_name,
    )


def run(
    spec: MergeSpec,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
    seed: int | None = None,
    progress: bool = True,
    command: str = "",
    report_to=None,
    run_name: str | None = None,
) -> Path:
    """Merge a parsed config into `output_dir` (the module docstring's order of work) and return its path."""
    from align.core.lifecycle import StageRun
    from align.core.tracking import Tracker, check_trackers

    check_trackers(report_to, None)
    # output_dir comes from the command line (or soup's argument), not from the merge config
    stage = StageRun(
        Path(output_dir).expanduser(),
        spec.raw,
        stage="merge",
        overwrite=overwrite,
        source=ConfigSource(spec.source, {"output_dir"}),
        resumable=False,
    )
    options = Options(parse_size(max_shard_size), seed, progress)
    _check_config(spec)
    plan = _plan(spec, stage.partial)
    stage.prepare()
    with stage.building():
        _merge_adapters(plan)
        dtype = plan.engine.merge(plan, stage.partial, options)
        inputs = write_record(
            plan, stage.partial, title=stage.final.name, engine=plan.engine.label(), dtype=dtype, command=command
        )
    with Tracker(report_to, run_name, stage.partial) as tracker:
        tracker.log(tracked(inputs))
    return stage.finish(None, drop=("lora", "mergekit-lora"))


def tracked(inputs: list[dict]) -> dict:
    """What a tracker shows of a merge: each input's weight and share of the soup (a linear merge's), by the input's
    directory name (its full reference where two names are the same)."""
    from align.core.io import safe_name

    names = [Path(row["ref"]).name for row in inputs]
    if len(set(names)) < len(names):
        names = [safe_name(row["ref"]) for row in inputs]
    figures = {"merge/inputs": len(inputs)}
    for name, row in zip(names, inputs):
        figures[f"merge/{name}/weight"] = row["weight"]
        figures[f"merge/{name}/share"] = row["share"]
    return figures


def _check_config(spec: MergeSpec) -> None:
    """What the config alone can tell: the method and its parameters, and the weights."""
    if spec.method == "linear":
        check_linear_parameters(spec)
    else:
        check_method(spec)
    check_weights(spec)


def _plan(spec: MergeSpec, work: Path) -> Plan:
    """Resolve every reference from its headers, choose the engine, check the inputs against each other and what
    the engine refuses, and find the tokenizer donor and chat template."""
    ckpts = {ref: resolve(ref) for ref in spec.references()}
    inputs = [ckpts[m.ref] for m in spec.inputs()]
    engine = choose_engine(spec, inputs)
    check_compatible(spec, inputs, allow_vocab_mismatch=engine.aligns_vocab(spec))
    donor_ref = spec.base_model or inputs[0].ref
    plan = Plan(
        spec,
        ckpts,
        work,
        engine,
        donor_ref,
        _tokenizer_donor(spec, ckpts, donor_ref),
        resolve_chat_template(spec, [_tokenizer_dir(c) for c in inputs]),
    )
    engine.check(plan)
    return plan


def _tokenizer_donor(spec: MergeSpec, ckpts: dict, donor_ref: str) -> str | None:
    """The reference of the checkpoint whose tokenizer the output gets: tokenizer_source (base or a path), else the
    base or first model. None when mergekit builds a new tokenizer (union, a `tokenizer:` block)."""
    source = spec.tokenizer_source
    if spec.tokenizer is not None or source == "union":
        return None
    ref = donor_ref if source in (None, "base") else source
    if source is not None and not has_tokenizer(_tokenizer_dir(ckpts[ref])):
        raise MergeError(
            f"tokenizer_source '{source}': {_tokenizer_dir(ckpts[ref])} has no tokenizer "
            "(tokenizer_config.json with tokenizer.json or tokenizer.model)"
        )
    return ref


def _tokenizer_dir(ckpt: Checkpoint) -> Path:
    """An adapter directory that carries a tokenizer (polyalign's SFT saves one) speaks for itself; else its base."""
    if ckpt.adapter is not None and (ckpt.adapter / "tokenizer_config.json").is_file():
        return ckpt.adapter
    return ckpt.path


def _merge_adapters(plan: Plan) -> None:
    """Replace each LoRA input by its adapter merged into the base (in the partial directory), and check the
    merged checkpoints again."""
    for ref, into in plan.adapters.items():
        plan.ckpts[ref] = merge_adapter(plan.ckpts[ref], into)
    if plan.adapters:
        check_compatible(plan.spec, plan.inputs, allow_vocab_mismatch=plan.engine.aligns_vocab(plan.spec))
