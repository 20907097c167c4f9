"""Reads a safetensors file held in memory into one buffer, checked as strictly as safetensors.

`safetensors.torch.load` gives every tensor its own copy, so a load holds the file, those
copies and, once they are packed together (see `read_tensors`), a third copy at its peak.
This reader checks the header by the format's own rules (the same the safetensors library
enforces, and duplicate names refused too), then copies the data section once into a single
buffer the tensors are views of: a load holds two copies of an adapter at most, and a cache
churning through thousands of adapters keeps one memory mapping per adapter, not one heap
block per tensor, and hands it back to the OS when the adapter is evicted.
"""

import json
import math
import mmap
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_HEADER_BYTES", "TensorFileError", "read_tensors"]

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own limit on the header."""
_LENGTH_BYTES = 8
_METADATA = "__metadata__"
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


class TensorFileError(ValueError):
    """The bytes are not a well-formed safetensors file."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_tensors(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The file's tensors (views of one buffer) and its `__metadata__`."""
    header, data_start = _header(data)
    metadata = _metadata(header.pop(_METADATA, None))
    entries = sorted(
        (_entry(name, value) for name, value in header.items()), key=lambda e: (e.begin, e.end)
    )
    _check_layout(entries, len(data) - data_start)
    buffer = _own_mapping(len(data) - data_start)
    buffer.numpy()[:] = np.frombuffer(data, dtype=np.uint8, offset=data_start)
    return {entry.name: _view(buffer, entry) for entry in entries}, metadata


def _own_mapping(size: int) -> Tensor:
    """A buffer in its own anonymous memory mapping, unmapped when its last view goes: a cache
    churning through adapters returns each evicted one to the OS at once, where heap blocks of
    this size (past glibc's raised mmap threshold) would be kept and fragment the heap."""
    if size == 0:  # mmap refuses empty mappings
        return torch.empty(0, dtype=torch.uint8)
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mapping, dtype=torch.uint8)


def _header(data: bytes) -> tuple[dict[str, object], int]:
    if len(data) < _LENGTH_BYTES:
        raise TensorFileError("the file is shorter than its header length")
    length = int.from_bytes(data[:_LENGTH_BYTES], "little")
    if length > MAX_HEADER_BYTES:
        raise TensorFileError(f"the header claims {length} bytes, over the limit")
    start = _LENGTH_BYTES + length
    if start > len(data):
        raise TensorFileError("the header runs past the end of the file")
    try:
        text = data[_LENGTH_BYTES:start].decode("utf-8")
        if not text.startswith("{"):
            raise TensorFileError("the header is not a JSON object")
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"the header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TensorFileError("the header is not a JSON object")
    return header, start


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Duplicate names are refused: safetensors would keep the last one silently."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise TensorFileError(f"the header names {key!r} twice")
        seen[key] = value
    return seen


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TensorFileError("metadata must map strings to strings")
    return dict(value)


def _entry(name: str, value: object) -> _Entry:
    if not isinstance(value, dict) or set(value) != _ENTRY_FIELDS:
        raise TensorFileError(f"tensor {name!r} must give exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(value["dtype"]) if isinstance(value["dtype"], str) else None
    if dtype is None:
        raise TensorFileError(f"tensor {name!r} has an unsupported dtype {value['dtype']!r}")
    shape, offsets = value["shape"], value["data_offsets"]
    if not _naturals(shape):
        raise TensorFileError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise TensorFileError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    entry = _Entry(name, dtype, tuple(shape), offsets[0], offsets[1])
    itemsize = torch.empty((), dtype=dtype).element_size()
    if math.prod(entry.shape) * itemsize != entry.end - entry.begin:
        raise TensorFileError(f"tensor {name!r}: its shape and data_offsets disagree")
    return entry


def _naturals(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    )


def _check_layout(entries: list[_Entry], data_bytes: int) -> None:
    """The tensors tile the data section: no gap, no overlap, nothing after the last."""
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise TensorFileError(f"tensor {entry.name!r} does not start where the last ended")
        position = entry.end
    if position != data_bytes:
        raise TensorFileError(f"the tensors take {position} bytes, the data section {data_bytes}")


def _view(buffer: Tensor, entry: _Entry) -> Tensor:
    raw = buffer[entry.begin : entry.end]
    itemsize = torch.empty((), dtype=entry.dtype).element_size()
    if entry.begin % itemsize:  # a misaligned tensor cannot be a typed view: its own copy
        raw = raw.clone()
    return raw.view(entry.dtype).view(entry.shape)
