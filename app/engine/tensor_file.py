"""Reads a safetensors file held in memory into one buffer, checked as strictly as safetensors.

Reading is two steps. `read_header` checks the header by the format's own rules (the same the
safetensors library enforces, duplicate names refused too) in plain Python, without torch, so
that a hostile file is refused off the inference thread: the header is bounded in size, depth,
entry count and number lengths before and while it is parsed, whatever its bytes. Then
`TensorFile.tensors` copies the data section once into a single buffer the tensors are views
of, in time proportional to the tensor data and a bounded number of entries: a load holds two
copies of an adapter at most (`safetensors.torch.load` gives every tensor its own copy, a third
at its peak once packed), and a cache churning through thousands of adapters keeps one memory
mapping per adapter, not one heap block per tensor, and hands it back to the OS at eviction.
"""

import json
import math
import mmap
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_METADATA_ENTRIES",
    "MAX_NAME_CHARS",
    "MAX_TENSORS",
    "TensorEntry",
    "TensorFile",
    "TensorFileError",
    "read_header",
    "read_tensors",
]

MAX_HEADER_BYTES = 2**20
"""Adapter headers measure 13 KB (tiny.en, attention, rank 4) to 16 KB (every projection);
large-v3 with every projection and the most extra metadata an adapter may carry would take
about 0.3 MB. (The safetensors library allows 100 MB, which takes seconds to parse.)"""
MAX_TENSORS = 4096
"""Four times the 1,024 factors of a large-v3 adapter of every projection."""
MAX_METADATA_ENTRIES = 1024
MAX_NAME_CHARS = 1024
"""For tensor names and metadata keys (a large-v3 factor's name has about 50 characters)."""
MAX_DIMS = 8
_MAX_DEPTH = 3
"""The header object, a tensor entry (or the metadata) in it, a shape or data_offsets in that."""
_MAX_INT_CHARS = 20
"""Enough for any 64-bit size; longer numbers are refused before Python converts them (a
conversion slow in their length: CVE-2020-10735)."""
_MAX_ELEMENTS = 2**63 - 1
"""torch's limit on the product of the dimensions (zero-size ones counted as 1: the strides)."""
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
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENING, _CLOSING = np.frombuffer(b"{[", np.uint8), np.frombuffer(b"}]", np.uint8)


class TensorFileError(ValueError):
    """The bytes are not a well-formed safetensors file."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class TensorFile:
    """A file whose header has been checked; `tensors` makes its tensors (torch work)."""

    data: bytes
    data_start: int
    entries: tuple[TensorEntry, ...]
    """In file order: they tile the data section."""
    metadata: dict[str, str]

    def tensors(self) -> dict[str, Tensor]:
        """The tensors, views of one buffer that is a copy of the data section."""
        buffer = _own_mapping(len(self.data) - self.data_start)
        buffer.numpy()[:] = np.frombuffer(self.data, dtype=np.uint8, offset=self.data_start)
        return {entry.name: _view(buffer, entry) for entry in self.entries}


def read_tensors(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The file's tensors (views of one buffer) and its `__metadata__`."""
    file = read_header(data)
    return file.tensors(), file.metadata


def read_header(data: bytes) -> TensorFile:
    """Checks everything but the tensors' values, in plain Python (no torch)."""
    header, data_start = _header(data)
    metadata = _metadata(header.pop(_METADATA, None))
    if len(header) > MAX_TENSORS:
        raise TensorFileError(f"the header lists {len(header)} tensors; at most {MAX_TENSORS}")
    entries = sorted(
        (_entry(name, value) for name, value in header.items()), key=lambda e: (e.begin, e.end)
    )
    _check_layout(entries, len(data) - data_start)
    return TensorFile(data, data_start, tuple(entries), metadata)


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
        raise TensorFileError(
            f"the header claims {length} bytes, over the limit of {MAX_HEADER_BYTES}"
        )
    start = _LENGTH_BYTES + length
    if start > len(data):
        raise TensorFileError("the header runs past the end of the file")
    raw = data[_LENGTH_BYTES:start]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TensorFileError(f"the header is not valid JSON: {exc}") from exc
    if not text.startswith("{"):
        raise TensorFileError("the header is not a JSON object")
    _check_depth(raw)
    try:
        header = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except json.JSONDecodeError as exc:
        raise TensorFileError(f"the header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TensorFileError("the header is not a JSON object")
    return header, start


def _check_depth(raw: bytes) -> None:
    """Refuses nesting deeper than the format's before parsing (Python's parser recurses):
    brackets counted outside strings, vectorised, in linear time whatever the bytes. (Outside
    strings a backslash is invalid JSON, refused by the parser where it stands.)"""
    chars = np.frombuffer(raw, dtype=np.uint8)
    positions = np.arange(chars.size)
    last_plain = np.maximum.accumulate(np.where(chars != _BACKSLASH, positions, -1))
    backslashes_before = np.concatenate(([0], (positions - last_plain)[:-1]))
    quotes = (chars == _QUOTE) & (backslashes_before % 2 == 0)
    outside = np.cumsum(quotes) % 2 == 0
    steps = np.isin(chars, _OPENING).astype(np.int64) - np.isin(chars, _CLOSING)
    if int(np.cumsum(steps * outside).max()) > _MAX_DEPTH:
        raise TensorFileError(f"the header nests deeper than {_MAX_DEPTH} levels")


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise TensorFileError(f"the header holds a number of {len(text)} digits")
    return int(text)


def _no_float(text: str) -> float:
    raise TensorFileError(f"the header holds a number that is not an integer: {text[:32]!r}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Duplicate names are refused: safetensors would keep the last one silently."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise TensorFileError(f"the header names {_short(key)} twice")
        seen[key] = value
    return seen


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorFileError("metadata must map strings to strings")
    if len(value) > MAX_METADATA_ENTRIES:
        raise TensorFileError(
            f"metadata holds {len(value)} entries; at most {MAX_METADATA_ENTRIES}"
        )
    for key, text in value.items():
        if not isinstance(text, str):
            raise TensorFileError("metadata must map strings to strings")
        _check_name(key, "metadata key")
        _check_text(text, f"metadata {_short(key)}")
    return dict(value)


def _check_name(name: str, what: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise TensorFileError(f"a {what} is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    _check_text(name, f"{what} {_short(name)}")


def _check_text(text: str, what: str) -> None:
    """Escapes can spell lone surrogates, which are no text (safetensors refuses them too)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TensorFileError(f"{what} is not valid Unicode") from exc


def _entry(name: str, value: object) -> TensorEntry:
    _check_name(name, "tensor name")
    label = f"tensor {_short(name)}"
    if not isinstance(value, dict) or set(value) != _ENTRY_FIELDS:
        raise TensorFileError(f"{label} must give exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(value["dtype"]) if isinstance(value["dtype"], str) else None
    if dtype is None:
        raise TensorFileError(f"{label} has an unsupported dtype {_short(value['dtype'])}")
    shape, offsets = value["shape"], value["data_offsets"]
    if not _naturals(shape) or len(shape) > MAX_DIMS:
        raise TensorFileError(f"{label} has an invalid shape {_short(shape)}")
    if math.prod(max(size, 1) for size in shape) > _MAX_ELEMENTS:
        raise TensorFileError(f"{label} has a shape too large to address: {shape}")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise TensorFileError(f"{label} has invalid data_offsets {_short(offsets)}")
    if math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0]:
        raise TensorFileError(f"{label}: its shape and data_offsets disagree")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _naturals(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    )


def _short(value: object) -> str:
    """`repr`, cut to a readable length: names and values come from an untrusted file."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _check_layout(entries: list[TensorEntry], data_bytes: int) -> None:
    """The tensors tile the data section: no gap, no overlap, nothing after the last."""
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise TensorFileError(
                f"tensor {_short(entry.name)} does not start where the last ended"
            )
        position = entry.end
    if position != data_bytes:
        raise TensorFileError(f"the tensors take {position} bytes, the data section {data_bytes}")


def _view(buffer: Tensor, entry: TensorEntry) -> Tensor:
    raw = buffer[entry.begin : entry.end]
    if entry.begin % entry.dtype.itemsize:  # a misaligned tensor cannot be a typed view
        raw = raw.clone()
    return raw.view(entry.dtype).view(entry.shape)
