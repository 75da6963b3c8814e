"""polyalign's own linear merge: a weighted average streamed tensor by tensor from the inputs' safetensors.

For each output tensor it reads the tensor from one input at a time (`safe_open(...).get_tensor`), adds
weight × tensor into an accumulator, divides by the summed weights (normalize), casts, and streams the result into
its shard. Peak memory is the accumulator, one input tensor and the cast result, never a whole model.

The arithmetic is mergekit's linear, step for step, so the two agree to the last bit in practice: inputs cast to
`dtype` when one is given (else to their common dtype), fp32 accumulation (fp64 for fp64 inputs) with `addcmul_`,
one division by the summed weights, the result cast back to the inputs' dtype and then to `out_dtype`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from merge.config import MergeError
from merge.inputs import Checkpoint, Layout, layout
from merge.writer import TORCH_DTYPES, Entry, ShardWriter


@dataclass(frozen=True)
class Step:
    """One output tensor: what is written, the tensor read from each input, and the dtype they are cast to."""

    entry: Entry
    sources: list[str]
    aligned: torch.dtype
    floating: bool


def merge_linear(
    ckpts: list[Checkpoint],
    weights: list[float],
    out_dir: Path,
    *,
    normalize: bool = True,
    dtype: str | None = None,
    out_dtype: str | None = None,
    max_shard_bytes: int = 5 * 10**9,
    progress: bool = True,
) -> dict:
    """Write the weighted average of `ckpts` as safetensors shards into `out_dir`.

    Returns {"dtype": the output's floating dtype name, "weight_map": tensor → shard file, "shards": count,
    "tied": the output's tie_word_embeddings, or None to keep the donor's}.
    """
    if len(weights) != len(ckpts):
        raise ValueError("one weight per checkpoint")
    tensors = layout(ckpts)
    steps = plan_steps(ckpts, tensors, dtype, out_dtype)
    average = Averager(ckpts, weights, normalize, max((math.prod(s.entry.shape) for s in steps), default=0))
    writer = ShardWriter(out_dir, [s.entry for s in steps], max_shard_bytes)
    try:
        for step in tqdm(steps, desc="linear merge", unit="tensor", disable=not progress):
            if step.floating:
                writer.write(step.entry.name, average(step))
            else:
                writer.write(step.entry.name, _same_everywhere(step.entry.name, ckpts, step.sources))
        weight_map = writer.finish()
    finally:
        writer.close()
    counts = Counter(s.entry.dtype for s in steps if s.floating)
    out_name = str(counts.most_common(1)[0][0]).removeprefix("torch.") if counts else None
    return {"dtype": out_name, "weight_map": weight_map, "shards": len(writer.shards), "tied": tensors.tied}


def plan_steps(ckpts: list[Checkpoint], tensors: Layout, dtype: str | None, out_dtype: str | None) -> list[Step]:
    """Each output tensor's dtypes, from the headers: inputs promoted to a common dtype (or cast to `dtype`), the
    result cast to `out_dtype`; non-floating tensors keep theirs."""
    cast = getattr(torch, dtype) if dtype else None
    final = getattr(torch, out_dtype) if out_dtype else None
    steps = []
    for name in tensors.names:
        sources = [s[name] for s in tensors.sources]
        aligned = functools.reduce(
            torch.promote_types, [TORCH_DTYPES[c.tensors[s].dtype] for c, s in zip(ckpts, sources)]
        )
        floating = aligned.is_floating_point
        if floating and cast is not None:
            aligned = cast
        out = (final or aligned) if floating else aligned
        steps.append(Step(Entry(name, out, ckpts[0].tensors[sources[0]].shape), sources, aligned, floating))
    return steps


class Averager:
    """The weighted average of one floating tensor across the inputs, read one input at a time.

    One accumulator buffer per accumulation dtype, sized for the largest tensor and reused, so that each tensor
    does not allocate (and page-fault) a fresh one; the writer is done with a result before the next tensor starts.
    """

    def __init__(self, ckpts: list[Checkpoint], weights: list[float], normalize: bool, largest: int):
        self.ckpts, self.normalize, self.largest = ckpts, normalize, largest
        self.coefficients = {d: torch.tensor(weights, dtype=d) for d in (torch.float32, torch.float64)}
        self.scratch: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, step: Step) -> torch.Tensor:
        acc_dtype = torch.float64 if step.aligned == torch.float64 else torch.float32
        w = self.coefficients[acc_dtype]
        if acc_dtype not in self.scratch:
            self.scratch[acc_dtype] = torch.empty(self.largest, dtype=acc_dtype)
        acc = self.scratch[acc_dtype][: math.prod(step.entry.shape)].view(step.entry.shape).zero_()
        for i, (ckpt, source) in enumerate(zip(self.ckpts, step.sources)):
            tensor = read_tensor(ckpt, source)
            if tensor.dtype != step.aligned:
                tensor = tensor.to(step.aligned)
            acc.addcmul_(tensor, w[i])
            del tensor
        if self.normalize:
            acc.div_(w.sum())
        return acc.to(step.aligned).to(step.entry.dtype)


def read_tensor(ckpt: Checkpoint, name: str) -> torch.Tensor:
    """One tensor, through a `safe_open` handle opened for this read only.

    A handle maps its whole file, and every page read through it stays in this process's resident memory until the
    handle closes; a handle per read keeps resident only the tensor being read, for the cost of parsing the header
    again (BENCHMARKS.md, merging).
    """
    from safetensors import safe_open

    with safe_open(str(ckpt.tensors[name].file), framework="pt") as f:
        return f.get_tensor(name)


def _same_everywhere(name: str, ckpts: list[Checkpoint], sources: list[str]) -> torch.Tensor:
    """A non-floating tensor (an index buffer, a mask) cannot be averaged: it must be equal in every input."""
    first = read_tensor(ckpts[0], sources[0])
    for ckpt, source in zip(ckpts[1:], sources[1:]):
        if not torch.equal(first, read_tensor(ckpt, source)):
            raise MergeError(
                f"{name} is a {first.dtype} tensor that differs between '{ckpts[0].name}' and "
                f"'{ckpt.name}': integer tensors cannot be averaged"
            )
    return first
