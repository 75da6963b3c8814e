"""`soup()` and `run()`: validate everything, merge in a hidden sibling of the output, rename it into place.

Order of work, so that a bad merge fails before anything is written and a killed one leaves no output:
1. the config and weights (no file opened), 2. each input's directory, config and safetensors headers, and their
compatibility, 3. tokenizer source and chat template, then 4. LoRA adapters are merged into their bases, the
merge runs (polyalign's streamed linear, or mergekit) and the extras are written, all inside `.OUTPUT.partial`,
which becomes OUTPUT by one rename. A partial directory left by a killed run is removed by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import yaml

from align.io import partial_dir, promote

from .config import (MergeError, MergeSpec, check_linear_parameters, check_weights, load_config, own_linear,
                     parse_config, parse_size, weight_of)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = "5GB"


def soup(models: Sequence[Any] | dict | str | os.PathLike, output_dir: str | os.PathLike, *, normalize: bool = True,
         dtype: str | None = None, overwrite: bool = False, method: str = "linear", base_model: str | None = None,
         tokenizer_source: str | None = None, chat_template: str | None = None, out_dtype: str | None = None,
         max_shard_size: str | int = DEFAULT_SHARD_SIZE, seed: int | None = None, progress: bool = True,
         command: str | None = None) -> Path:
    """Merge checkpoints into `output_dir` and return its path.

    `models` is a list of `(path, weight)` pairs (or bare paths, weight 1), a mergekit-format config dict, or the
    path of a merge YAML. With a list, the keywords describe the merge (`normalize`, `dtype`, `method`, ...); a dict
    or YAML carries its own, and giving them again as keywords is refused rather than silently ignored.
    A path may be a checkpoint directory, an embedded alias (`smollm2-135m`) or a LoRA adapter directory.
    """
    if isinstance(models, (str, os.PathLike)) or isinstance(models, dict):
        given = {k: v for k, v in dict(normalize=normalize, dtype=dtype, method=method, base_model=base_model,
                                       tokenizer_source=tokenizer_source, chat_template=chat_template,
                                       out_dtype=out_dtype).items()
                 if v != dict(normalize=True, method="linear").get(k)}
        if given:
            raise MergeError(f"soup(): '{sorted(given)[0]}' belongs in the config when models is a config; "
                             "set it in the config, not as a keyword")
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
        for key, value in (("dtype", dtype), ("out_dtype", out_dtype), ("tokenizer_source", tokenizer_source),
                           ("chat_template", chat_template)):
            if value is not None:
                raw[key] = str(value)
        spec = parse_config(raw, None)
    return run(spec, output_dir, overwrite=overwrite, max_shard_size=max_shard_size, seed=seed, progress=progress,
               command=command or "merge.soup(...) (polyalign Python API)")


def run(spec: MergeSpec, output_dir: str | os.PathLike, *, overwrite: bool = False,
        max_shard_size: str | int = DEFAULT_SHARD_SIZE, seed: int | None = None, progress: bool = True,
        command: str = "") -> Path:
    from .inputs import check_compatible, resolve

    output = Path(output_dir).expanduser()
    max_shard_bytes = parse_size(max_shard_size)
    # 1. The config alone.
    if output.exists() and not output.is_dir():
        raise MergeError(f"{output} exists and is a file; give a directory for the merged model")
    if output.exists() and not overwrite:
        raise MergeError(f"{output} already exists: pass --overwrite (overwrite=True) to replace it")
    own = own_linear(spec)
    if own:
        check_linear_parameters(spec)
    else:
        _check_method(spec)
    check_weights(spec)
    # 2. The checkpoints, from their headers.
    ckpts = {ref: resolve(ref) for ref in spec.references()}
    inputs = [ckpts[m.ref] for m in spec.inputs()]
    vocab_differs = len({c.vocab_size for c in inputs}) > 1
    if own and vocab_differs and spec.tokenizer_source is not None:
        own = False  # mergekit re-maps each embedding onto the chosen tokenizer
        _check_method(spec)
    aligns_vocab = not own and (spec.tokenizer is not None or spec.tokenizer_source is not None)
    check_compatible(spec, inputs, allow_vocab_mismatch=aligns_vocab)
    # 3. Tokenizer and chat template.
    from .output import resolve_chat_template

    donor_ref = spec.base_model or inputs[0].ref
    tokenizer_ref = _tokenizer_donor(spec, ckpts, donor_ref)
    template = resolve_chat_template(spec, [_tokenizer_dir(c) for c in inputs])
    # 4. The merge, in a hidden sibling renamed into place at the end.
    partial = partial_dir(output)
    _claim(partial, output)
    try:
        model_dir = partial / "model"
        model_dir.mkdir()
        if _merge_adapters(ckpts, partial / "lora"):
            inputs = [ckpts[m.ref] for m in spec.inputs()]
            check_compatible(spec, inputs, allow_vocab_mismatch=aligns_vocab)
        donor = ckpts[donor_ref]
        if own:
            dtype = _run_linear(spec, inputs, model_dir, max_shard_bytes, progress, donor,
                                ckpts[tokenizer_ref] if tokenizer_ref else None, template)
            engine = "polyalign's streamed linear average"
        else:
            dtype = _run_mergekit(spec, ckpts, model_dir, max_shard_bytes, seed, progress, partial, donor, template)
            engine = f"mergekit {_mergekit_version()}"
        tokenizer_from = tokenizer_ref or str(spec.tokenizer_source or (spec.tokenizer or {}).get("source"))
        _write_record(spec, inputs, model_dir, title=output.name, engine=engine, dtype=dtype, donor=donor,
                      tokenizer_from=tokenizer_from, command=command)
        promote(model_dir, output, overwrite=overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output


def _check_method(spec: MergeSpec) -> None:
    from .methods import check_method

    check_method(spec)


def _tokenizer_donor(spec: MergeSpec, ckpts: dict, donor_ref: str) -> str | None:
    """The reference of the checkpoint whose tokenizer the output gets: tokenizer_source (base or a path), else the
    base or first model. None when mergekit builds a new tokenizer (union, a `tokenizer:` block)."""
    from .inputs import has_tokenizer

    source = spec.tokenizer_source
    if spec.tokenizer is not None or source == "union":
        return None
    ref = donor_ref if source in (None, "base") else source
    if source is not None and not has_tokenizer(_tokenizer_dir(ckpts[ref])):
        raise MergeError(f"tokenizer_source '{source}': {_tokenizer_dir(ckpts[ref])} has no tokenizer "
                         "(tokenizer_config.json with tokenizer.json or tokenizer.model)")
    return ref


def _tokenizer_dir(ckpt) -> Path:
    """An adapter directory that carries a tokenizer (polyalign's SFT saves one) speaks for itself; else its base."""
    if ckpt.adapter is not None and (ckpt.adapter / "tokenizer_config.json").is_file():
        return ckpt.adapter
    return ckpt.path


def _claim(partial: Path, output: Path) -> None:
    """Create the partial directory, clearing one that a killed run left; refuse one that a live run is using."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.mkdir()
    except FileExistsError:
        try:
            pid = int((partial / ".pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid and pid != os.getpid() and _alive(pid):
            raise MergeError(f"another merge into {output} is running (pid {pid}); wait for it, or stop it and "
                             f"remove {partial}") from None
        log.warning("removing %s, left by an interrupted merge", partial)
        shutil.rmtree(partial)
        partial.mkdir()
    (partial / ".pid").write_text(str(os.getpid()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _merge_adapters(ckpts: dict, work: Path) -> bool:
    """Replace each LoRA input by its adapter merged into the base (in the partial directory); True if any."""
    from .inputs import merge_adapter

    merged = False
    for i, (ref, ckpt) in enumerate(list(ckpts.items())):
        if ckpt.adapter is not None:
            ckpts[ref] = merge_adapter(ckpt, work / f"{i}-{ckpt.adapter.name}")
            merged = True
    return merged


def _run_linear(spec, inputs, model_dir, max_shard_bytes, progress, donor, tokenizer_ckpt, template) -> str | None:
    from .inputs import copy_tokenizer
    from .linear import merge_linear
    from .output import copy_generation_config, write_chat_template, write_config

    weights = [weight_of(spec, m) for m in spec.inputs()]
    result = merge_linear(inputs, weights, model_dir, normalize=spec.normalize, dtype=spec.dtype,
                          out_dtype=spec.out_dtype, max_shard_bytes=max_shard_bytes, progress=progress)
    write_config(donor.path, model_dir, dtype=result["dtype"], tied=result["tied"])
    copy_generation_config(donor.path, model_dir)
    if tokenizer_ckpt is not None:
        copy_tokenizer(tokenizer_ckpt.path, model_dir)
    if template is not None:
        write_chat_template(model_dir, template)
    return result["dtype"]


def _run_mergekit(spec, ckpts, model_dir, max_shard_bytes, seed, progress, partial, donor, template) -> str | None:
    from collections import Counter

    from .inputs import read_headers, tie_names
    from .methods import run_mergekit
    from .output import copy_generation_config, fix_config, write_chat_template

    paths = {ref: str(c.path) for ref, c in ckpts.items()}
    run_mergekit(spec, paths, model_dir, max_shard_bytes=max_shard_bytes, seed=seed, progress=progress,
                 work_dir=partial)
    written = read_headers(model_dir, "merged output")
    floating = Counter(t.dtype for t in written.values() if t.dtype in ("F64", "F32", "F16", "BF16"))
    dtype = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
        floating.most_common(1)[0][0]) if floating else None
    # mergekit copies the donor's config as is: when it wrote an output embedding, the model must not be tied.
    untied = any(head in written for head in tie_names(donor.config))
    fix_config(model_dir, dtype=dtype, tied=False if untied else None)
    copy_generation_config(donor.path, model_dir)
    if template is not None and (model_dir / "tokenizer_config.json").is_file():
        write_chat_template(model_dir, template)
    return dtype


def _write_record(spec: MergeSpec, inputs, model_dir: Path, *, title: str, engine: str, dtype, donor,
                  tokenizer_from: str, command: str) -> None:
    from .output import write_card

    rows = []
    scalar = spec.method == "linear" and all(_scalar_weight(spec, m) for m in spec.inputs())
    weights = [weight_of(spec, m) for m in spec.inputs()] if scalar else None
    total = sum(weights) if weights else None
    for i, (model, ckpt) in enumerate(zip(spec.inputs(), inputs)):
        notes = []
        if model.where == "base_model" or model.ref == spec.base_model:
            notes.append("base model")
        if ckpt.adapter is not None:
            notes.append(f"LoRA adapter merged into its base `{ckpt.base_ref}` (peft merge_and_unload) before merging")
        elif str(ckpt.path) != model.ref:
            notes.append(f"`{ckpt.path}`")
        weight = model.weight if model.weight is not None else spec.parameters.get("weight")
        share = None
        if weights:
            share = weights[i] / total if spec.normalize else weights[i]
        rows.append({"ref": model.ref, "weight": weight, "share": share, "note": "; ".join(notes)})
    write_card(model_dir, spec, rows, title=title, engine=engine, dtype=dtype, tokenizer_from=tokenizer_from,
               config_from=donor.ref, command=command, config_text=config_yaml(spec))
    (model_dir / "merge_config.yaml").write_text(config_yaml(spec), encoding="utf-8")


def config_yaml(spec: MergeSpec) -> str:
    """The config as given (paths as strings), which `polyalign merge` and `mergekit-yaml` both accept."""
    return yaml.safe_dump(json.loads(json.dumps(spec.raw, default=str)), sort_keys=False, allow_unicode=True)


def _scalar_weight(spec: MergeSpec, model) -> bool:
    try:
        weight_of(spec, model)
        return True
    except (TypeError, ValueError):
        return False


def _mergekit_version() -> str:
    from importlib.metadata import version

    return version("mergekit")
