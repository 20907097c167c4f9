"""The safetensors reader: what safetensors writes reads back exactly, in one buffer; anything
malformed is refused, as the safetensors library refuses it."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from app.engine.adaptation.lora.file import (
    MAX_EXTRA_ENTRIES,
    MAX_EXTRA_VALUE_CHARS,
    AdapterWeights,
    dump_adapter,
)
from app.engine.tensor_file import (
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_NAME_CHARS,
    MAX_TENSORS,
    TensorFileError,
    read_header,
    read_tensors,
)
from tests.support.hostile_tensor_files import (
    HOSTILE,
    empty_entry,
    empty_tensors,
    header_of,
    metadata_entries,
    with_header,
)


def sample_tensors() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=generator),
        "b.half": torch.randn(4, generator=generator).half(),
        "c.bf16": torch.randn(2, 2, generator=generator).bfloat16(),
        "d.ids": torch.arange(7, dtype=torch.int64),
        "e.flags": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
    }


def file_of(header: dict[str, object], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


def split(data: bytes) -> tuple[dict[str, object], bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def test_what_safetensors_writes_reads_back_exactly_with_its_metadata() -> None:
    tensors = sample_tensors()
    data = save_safetensors(tensors, metadata={"note": "x"})
    read, metadata = read_tensors(data)
    assert metadata == {"note": "x"}
    assert read.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype
        assert read[name].shape == tensor.shape
        assert torch.equal(read[name], tensor)


def test_the_tensors_share_one_buffer_that_does_not_alias_the_file() -> None:
    data = bytearray(save_safetensors(sample_tensors()))
    read, _ = read_tensors(bytes(data))
    storages = {t.untyped_storage().data_ptr() for t in read.values() if t.numel()}
    assert len(storages) == 1
    before = read["a.weight"].clone()
    data[-1] ^= 0xFF  # the caller's bytes may go away or change: the tensors are a copy
    assert torch.equal(read["a.weight"], before)


def test_a_misaligned_tensor_is_read_through_its_own_copy() -> None:
    value = torch.tensor([1.5, -2.0])
    header: dict[str, object] = {
        "byte": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "value": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    data = file_of(header, b"\x07" + value.numpy().tobytes())
    read, metadata = read_tensors(data)
    assert metadata == {}
    assert read["byte"].tolist() == [7]
    assert torch.equal(read["value"], value)
    assert torch.equal(load_safetensors(data)["value"], value)


def _shift_second(header: dict[str, object], by: int) -> None:
    entry = header["b"]
    assert isinstance(entry, dict)
    begin, end = entry["data_offsets"]
    entry["data_offsets"] = [begin + by, end + by]


def _edit(change: Callable[[dict[str, object]], None], extra: bytes = b"") -> bytes:
    data = save_safetensors({"a": torch.ones(2), "b": torch.zeros(3)})
    header, payload = split(data)
    change(header)
    return file_of(header, payload + extra)


def _entry(name: str, **fields: object) -> Callable[[dict[str, object]], None]:
    def change(header: dict[str, object]) -> None:
        entry = header[name]
        assert isinstance(entry, dict)
        entry.update(fields)
        for key, value in fields.items():
            if value is None:
                del entry[key]

    return change


MALFORMED = {
    "empty": (b"", "shorter than its header length"),
    "header-past-the-end": ((1000).to_bytes(8, "little") + b"{}", "runs past the end"),
    "header-too-large": (
        (MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}",
        "over the limit",
    ),
    "not-utf8": ((2).to_bytes(8, "little") + b"\xff\xfe", "not valid JSON"),
    "not-json": ((5).to_bytes(8, "little") + b"{nope", "not valid JSON"),
    "a-list": ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    "gap": (_edit(lambda h: _shift_second(h, 4), b"\0" * 4), "does not start where"),
    "overlap": (_edit(lambda h: _shift_second(h, -4)), "does not start where"),
    "trailing-bytes": (_edit(lambda h: None, b"\0" * 4), "the data section 24"),
    "truncated": (save_safetensors({"a": torch.ones(4)})[:-1], "the data section 15"),
    "shape-mismatch": (_edit(_entry("a", shape=[3])), "shape and data_offsets disagree"),
    "negative-shape": (_edit(_entry("a", shape=[-2])), "invalid shape"),
    "reversed-offsets": (_edit(_entry("a", data_offsets=[8, 0])), "invalid data_offsets"),
    "unknown-dtype": (_edit(_entry("a", dtype="F8_E9M9")), "unsupported dtype 'F8_E9M9'"),
    "missing-field": (_edit(_entry("a", shape=None)), "exactly dtype, shape and data_offsets"),
    "metadata-not-strings": (
        _edit(lambda h: h.update({"__metadata__": {"rank": 8}})),
        "metadata must map strings to strings",
    ),
}


@pytest.mark.parametrize(("data", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_refused_as_safetensors_refuses_them(data: bytes, message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        read_tensors(data)
    with pytest.raises((SafetensorError, ValueError, TypeError)):
        load_safetensors(data)


def test_a_name_given_twice_is_refused_where_safetensors_keeps_the_last() -> None:
    header, payload = split(save_safetensors({"a": torch.ones(2)}))
    entry = json.dumps(header["a"])
    text = json.dumps(header)[:-1] + f', "a": {entry}}}'
    data = len(text).to_bytes(8, "little") + text.encode() + payload
    assert load_safetensors(data)["a"].tolist() == [1.0, 1.0]
    with pytest.raises(TensorFileError, match="names 'a' twice"):
        read_tensors(data)


def _mapping_holding(address: int) -> tuple[int, int, str] | None:
    """(start, end, path) of this process's mapping that holds `address`."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(part, 16) for part in fields[0].split("-"))
            if start <= address < end:
                return start, end, fields[5] if len(fields) > 5 else ""
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_buffer_is_its_own_anonymous_mapping_unmapped_with_its_last_view() -> None:
    """Evicted adapters go back to the OS at once, not into a fragmenting heap."""
    tensors, _ = read_tensors(save_safetensors({"big": torch.ones(3 * 2**18)}))  # 3 MiB
    address = tensors["big"].data_ptr()
    found = _mapping_holding(address)
    assert found is not None
    start, end, path = found
    assert path == ""  # anonymous, not the [heap]
    assert start <= address
    assert address + tensors["big"].nbytes <= end
    view = tensors.pop("big")[: 2**18]
    assert _mapping_holding(address) == found  # a view keeps it
    del view
    assert _mapping_holding(address) != found


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_are_refused_from_the_header_alone(case: str) -> None:
    """A 500, a slow parse or a tensor torch cannot make before; refused by `read_header`
    (plain Python, no torch) now, with the reason."""
    make, message = HOSTILE[case]
    with pytest.raises(TensorFileError, match=re.escape(message)):
        read_header(make())


_TRICKY_NAMES = ("a\\", 'b"[[[{{{', '\\"]]]}}}\\\\', "{[")
"""Brackets in strings are no nesting; an escaped backslash before a quote ends the string."""
AT_THE_LIMITS = {
    "header-of-the-largest-size": (
        with_header(b"{" + b" " * (MAX_HEADER_BYTES - 2) + b"}"),
        {},
    ),
    "the-most-tensors": (
        with_header(empty_tensors(MAX_TENSORS)),
        {"t0": (0,), f"t{MAX_TENSORS - 1}": (0,)},
    ),
    "the-most-metadata-entries": (with_header(metadata_entries(MAX_METADATA_ENTRIES)), {}),
    "the-longest-name": (
        with_header(header_of(empty_entry("n" * MAX_NAME_CHARS))),
        {"n" * MAX_NAME_CHARS: (0,)},
    ),
    "the-most-dimensions": (
        with_header(header_of(empty_entry("a", "[" + "1," * (MAX_DIMS - 1) + "0]"))),
        {"a": (1,) * (MAX_DIMS - 1) + (0,)},
    ),
    "the-largest-addressable-zero-size-tensor": (
        with_header(header_of(empty_entry("a", f"[0,{2**63 - 1}]"))),
        {"a": (0, 2**63 - 1)},
    ),
    "brackets-and-escaped-quotes-in-strings": (
        file_of(
            {name: {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for name in _TRICKY_NAMES},
            b"",
        ),
        dict.fromkeys(_TRICKY_NAMES, (0,)),
    ),
    "pretty-printed": (
        with_header(
            json.dumps(
                {"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, indent=4
            ).encode()
        ),
        {"a": (0,)},
    ),
    "a-surrogate-pair": (
        with_header(header_of(empty_entry("\\ud83d\\ude00"))),
        {"\U0001f600": (0,)},
    ),
}


@pytest.mark.parametrize(("data", "shapes"), AT_THE_LIMITS.values(), ids=AT_THE_LIMITS.keys())
def test_headers_at_the_limits_are_read(data: bytes, shapes: dict[str, tuple[int, ...]]) -> None:
    tensors = read_header(data).tensors()
    assert {name: tuple(tensors[name].shape) for name in shapes} == shapes


def _every_projection(layers: int) -> list[str]:
    """Module names of a Whisper of `layers` encoder and decoder layers, every projection."""
    names = []
    for side, blocks in (("encoder", ["self_attn"]), ("decoder", ["self_attn", "encoder_attn"])):
        for layer in range(layers):
            prefix = f"model.{side}.layers.{layer}"
            for block in blocks:
                names += [
                    f"{prefix}.{block}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
                ]
            names += [f"{prefix}.fc1", f"{prefix}.fc2"]
    return names


def test_the_largest_adapter_header_stays_far_within_the_bounds() -> None:
    """large-v3 (32 + 32 layers), every projection, rank 256, the most extra metadata an
    adapter file may carry: its header takes a third of the limit at most, its tensors a
    quarter (a tiny.en adapter's header takes about 13 KB)."""
    tensors = {}
    for module in _every_projection(32):
        tensors[f"{module}.lora_A"] = torch.zeros(256, 1)
        tensors[f"{module}.lora_B"] = torch.zeros(1, 256)
    extra = {f"note{i}": "x" * MAX_EXTRA_VALUE_CHARS for i in range(MAX_EXTRA_ENTRIES)}
    adapter = AdapterWeights(
        tensors=tensors, rank=256, alpha=16.0, base_fingerprint="f" * 64, extra=extra
    )
    data = dump_adapter(adapter)
    header_bytes = int.from_bytes(data[:8], "little")
    file = read_header(data)
    assert len(file.entries) == 1024
    assert 4 * len(file.entries) <= MAX_TENSORS
    assert 3 * header_bytes <= MAX_HEADER_BYTES
    assert len(file.metadata) == MAX_EXTRA_ENTRIES + 7
