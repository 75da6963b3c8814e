"""Write safetensors shards tensor by tensor, so the output never sits in memory as a whole.

Every output tensor's name, dtype and shape is known before merging starts (they come from the validated input
headers), so the shards are laid out up front: each shard's header is written when the shard is opened and each
tensor's bytes go straight to disk as soon as it is computed. Peak memory is the tensor being written, whatever
the shard size; a shard buffer flushed with `safetensors.torch.save_file` would hold up to a whole shard (5 GB by
default, i.e. all of a small model). The files are plain safetensors (`__metadata__: {format: pt}`, 8-byte aligned
header) that `safe_open`, transformers and mergekit read; `model.safetensors.index.json` is written when there is
more than one shard, with transformers' shard names.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
TORCH_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def plan_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
    """Consecutive tensors fill a shard up to max_shard_bytes; a larger tensor gets a shard of its own."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return [s for s in shards if s]


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def header_bytes(entries: list[Entry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": SAFETENSORS_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header so that the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class ShardWriter:
    """Takes the output tensors in the planned order and streams each into its shard."""

    def __init__(self, directory: str | os.PathLike, entries: list[Entry], max_shard_bytes: int):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors is little-endian; writing it from a big-endian machine is not supported")
        self.directory = Path(directory)
        self.shards = plan_shards(entries, max_shard_bytes)
        self.names = shard_names(len(self.shards))
        self._queue = [(i, e) for i, shard in enumerate(self.shards) for e in shard]
        self._next = 0
        self._file = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._queue):
            raise RuntimeError(f"unexpected tensor {name}: every planned tensor is written")
        shard, entry = self._queue[self._next]
        if name != entry.name or tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(
                f"tensor {name} {tensor.dtype} {list(tensor.shape)} does not match the planned "
                f"{entry.name} {entry.dtype} {list(entry.shape)}"
            )
        if self._file is None:
            self._file = open(self.directory / self.names[shard], "wb")
            self._file.write(header_bytes(self.shards[shard]))
        if tensor.numel():
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            self._file.write(memoryview(data))
        self._next += 1
        if self._next == len(self._queue) or self._queue[self._next][0] != shard:
            self._file.close()
            self._file = None

    def finish(self) -> dict[str, str]:
        """Check that every planned tensor came, write the index when sharded, and return the weight map."""
        if self._next != len(self._queue):
            raise RuntimeError(f"{len(self._queue) - self._next} planned tensors were never written")
        weight_map = {e.name: self.names[i] for i, e in self._queue}
        if len(self.shards) > 1:
            total = sum(e.nbytes for _, e in self._queue)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return weight_map

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
