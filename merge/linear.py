"""polyalign's own linear merge: a weighted average streamed tensor by tensor from the inputs' safetensors.

For each output tensor it reads the tensor from one input at a time (`safe_open(...).get_tensor`), adds
weight × tensor into an accumulator, divides by the summed weights (normalize), casts, and streams the result into
its shard. Peak memory is the accumulator, one input tensor and the cast result, never a whole model.

The arithmetic is mergekit's linear, step for step, so the two agree to the last bit in practice: inputs cast to
`dtype` when one is given (else to their common dtype), fp32 accumulation (fp64 for fp64 inputs) with `addcmul_`,
one division by the summed weights, the result cast back to the inputs' dtype and then to `out_dtype`.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import MergeError
from .inputs import Checkpoint, layout
from .writer import TORCH_DTYPES, Entry, ShardWriter


def merge_linear(ckpts: list[Checkpoint], weights: list[float], out_dir: Path, *, normalize: bool = True,
                 dtype: str | None = None, out_dtype: str | None = None, max_shard_bytes: int = 5 * 10**9,
                 progress: bool = True) -> dict:
    """Write the weighted average of `ckpts` as safetensors shards into `out_dir`.

    Returns {"dtype": the output's floating dtype name, "weight_map": tensor → shard file, "shards": count,
    "tied": the output's tie_word_embeddings, or None to keep the donor's}.
    """
    if len(weights) != len(ckpts):
        raise ValueError("one weight per checkpoint")
    cast = getattr(torch, dtype) if dtype else None
    final = getattr(torch, out_dtype) if out_dtype else None
    tensors = layout(ckpts)
    plan = []
    for name in tensors.names:
        sources = [s[name] for s in tensors.sources]
        in_dtypes = [TORCH_DTYPES[c.tensors[s].dtype] for c, s in zip(ckpts, sources)]
        aligned = in_dtypes[0]
        for d in in_dtypes[1:]:
            aligned = torch.promote_types(aligned, d)
        floating = aligned.is_floating_point
        if floating and cast is not None:
            aligned = cast
        out = (final or aligned) if floating else aligned
        plan.append((Entry(name, out, ckpts[0].tensors[sources[0]].shape), sources, aligned, floating))

    coefficients = {d: torch.tensor(weights, dtype=d) for d in (torch.float32, torch.float64)}
    writer = ShardWriter(out_dir, [p[0] for p in plan], max_shard_bytes)
    # One accumulator buffer, sized for the largest tensor and reused: allocating (and page-faulting) a fresh one
    # per tensor cost more than the arithmetic. The writer is done with a result before the next tensor starts.
    scratch: dict[torch.dtype, torch.Tensor] = {}
    try:
        for entry, sources, aligned, floating in tqdm(plan, desc="linear merge", unit="tensor", disable=not progress):
            if not floating:
                writer.write(entry.name, _same_everywhere(entry.name, ckpts, sources))
                continue
            acc_dtype = torch.float64 if aligned == torch.float64 else torch.float32
            w = coefficients[acc_dtype]
            numel = math.prod(entry.shape)
            if acc_dtype not in scratch:
                scratch[acc_dtype] = torch.empty(max(math.prod(e.shape) for e, *_ in plan), dtype=acc_dtype)
            acc = scratch[acc_dtype][:numel].view(entry.shape).zero_()
            for i, (ckpt, source) in enumerate(zip(ckpts, sources)):
                tensor = read_tensor(ckpt, source)
                if tensor.dtype != aligned:
                    tensor = tensor.to(aligned)
                acc.addcmul_(tensor, w[i])
                del tensor
            if normalize:
                acc.div_(w.sum())
            result = acc.to(aligned).to(entry.dtype)
            del acc
            writer.write(entry.name, result)
            del result
        weight_map = writer.finish()
    finally:
        writer.close()
    counts = Counter(e.dtype for e, _, _, floating in plan if floating)
    out_name = str(counts.most_common(1)[0][0]).removeprefix("torch.") if counts else None
    return {"dtype": out_name, "weight_map": weight_map, "shards": len(writer.shards), "tied": tensors.tied}


def read_tensor(ckpt: Checkpoint, name: str) -> torch.Tensor:
    """One tensor, through a `safe_open` handle opened for this read only.

    A handle maps its whole file, and every page a tensor read through it touched stays in this process's resident
    memory until the handle closes: with handles kept open for the whole merge, the peak grew by the size of every
    input (1.6 GB for three 135M fp32 models). Reopening costs a header parse (microseconds) per read.
    """
    from safetensors import safe_open

    with safe_open(str(ckpt.tensors[name].file), framework="pt") as f:
        return f.get_tensor(name)


def _same_everywhere(name: str, ckpts: list[Checkpoint], sources: list[str]) -> torch.Tensor:
    """A non-floating tensor (an index buffer, a mask) cannot be averaged: it must be equal in every input."""
    first = read_tensor(ckpts[0], sources[0])
    for ckpt, source in zip(ckpts[1:], sources[1:]):
        if not torch.equal(first, read_tensor(ckpt, source)):
            raise MergeError(f"{name} is a {first.dtype} tensor that differs between '{ckpts[0].name}' and "
                             f"'{ckpt.name}': integer tensors cannot be averaged")
    return first
