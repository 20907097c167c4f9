"""The adapter file format: reproducible bytes, and refusal of anything malformed or unfit."""

import json
import math
import pickle
import re
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from app.engine.adaptation.lora.file import (
    ADAPTER_FORMAT,
    MAX_RANK,
    AdapterFileError,
    AdapterWeights,
    BaseModelMismatchError,
    check_compatible,
    dump_adapter,
    load_adapter,
)
from app.engine.adaptation.lora.layer import LoraLinear

FINGERPRINT = "f" * 64
RANK = 2
SHAPES = {"encoder.q_proj": (8, 6), "decoder.fc1": (6, 10)}
"""Module name: (in_features, out_features) of a toy base model."""


def layers() -> dict[str, LoraLinear]:
    return {
        name: LoraLinear(nn.Linear(fan_in, fan_out), fan_in, fan_out)
        for name, (fan_in, fan_out) in SHAPES.items()
    }


def toy_tensors(seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fan_in, fan_out) in SHAPES.items():
        tensors[f"{name}.lora_A"] = torch.randn(RANK, fan_in, generator=generator)
        tensors[f"{name}.lora_B"] = torch.randn(fan_out, RANK, generator=generator)
    return tensors


def toy_adapter(**changes: object) -> AdapterWeights:
    values: dict[str, object] = {
        "tensors": toy_tensors(),
        "rank": RANK,
        "alpha": 4.0,
        "base_fingerprint": FINGERPRINT,
        "extra": {"trainer": "test", "seed": "0"},
        **changes,
    }
    return AdapterWeights(**values)  # type: ignore[arg-type]


def toy_metadata() -> dict[str, str]:
    return {
        "format": ADAPTER_FORMAT,
        "method": "lora",
        "rank": str(RANK),
        "alpha": "4.0",
        "base_fingerprint": FINGERPRINT,
        "encoder_window": "full",
    }


def raw_file(tensors: dict[str, Tensor] | None = None, /, **metadata: str) -> bytes:
    """A safetensors file written without `dump_adapter`'s normalisation."""
    return bytes(
        save_safetensors(tensors or toy_tensors(), metadata={**toy_metadata(), **metadata})
    )


def header_of(data: bytes) -> tuple[str, bytes]:
    length = int.from_bytes(data[:8], "little")
    return data[8 : 8 + length].decode(), data[8 + length :]


def with_header(header: str, payload: bytes) -> bytes:
    encoded = header.encode()
    return len(encoded).to_bytes(8, "little") + encoded + payload


def assert_same(loaded: AdapterWeights, original: AdapterWeights) -> None:
    assert loaded.tensors.keys() == original.tensors.keys()
    for name, tensor in original.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    assert (loaded.rank, loaded.alpha, loaded.base_fingerprint) == (
        original.rank,
        original.alpha,
        original.base_fingerprint,
    )
    assert (loaded.encoder_window, loaded.method, loaded.extra) == (
        original.encoder_window,
        original.method,
        original.extra,
    )


def test_dump_is_byte_reproducible() -> None:
    """safetensors alone writes the metadata in a different order from call to call."""
    adapter = toy_adapter()
    assert len({dump_adapter(adapter) for _ in range(20)}) == 1
    reordered = toy_adapter(
        tensors=dict(reversed(list(toy_tensors().items()))),
        extra={"seed": "0", "trainer": "test"},
    )
    assert dump_adapter(reordered) == dump_adapter(adapter)


def test_dump_writes_a_canonical_header_safetensors_reads() -> None:
    data = dump_adapter(toy_adapter())
    header, _ = header_of(data)
    assert len(header) % 8 == 0
    parsed = json.loads(header)
    assert list(parsed) == sorted(parsed)
    assert list(parsed["__metadata__"]) == sorted(parsed["__metadata__"])
    assert parsed["__metadata__"]["target_modules"] == json.dumps(sorted(SHAPES))
    assert load_safetensors(data).keys() == toy_tensors().keys()


def test_load_round_trips_and_dumps_the_same_bytes_again() -> None:
    adapter = toy_adapter(encoder_window="fit")
    data = dump_adapter(adapter)
    loaded = load_adapter(data)
    assert_same(loaded, adapter)
    assert dump_adapter(loaded) == data
    check_compatible(loaded, FINGERPRINT, layers())


def test_files_from_other_writers_are_read_and_normalised() -> None:
    """No `target_modules`, metadata in safetensors' own order: accepted, dumped canonically."""
    loaded = load_adapter(raw_file())
    assert dump_adapter(loaded) == dump_adapter(toy_adapter(extra={}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a safetensors file"),
        (bytes(range(256)) * 4, "not a safetensors file"),
        (pickle.dumps({"encoder.q_proj.lora_A": [[1.0]]}), "not a safetensors file"),
        (raw_file(format="pqm-lora/0"), "'format' must be"),
        (raw_file(method="dora"), "unknown method 'dora'"),
        (raw_file(rank="3"), "has rank 2, but metadata 'rank' is 3"),
        (raw_file(rank="0"), f"between 1 and {MAX_RANK}"),
        (raw_file(rank=str(MAX_RANK + 1)), f"between 1 and {MAX_RANK}, not {MAX_RANK + 1}"),
        (raw_file(rank="2.0"), "must be a whole number"),
        (raw_file(rank=""), "'rank' is missing"),
        (raw_file(alpha="nan"), "'alpha' must be a positive finite number"),
        (raw_file(alpha="-1"), "'alpha' must be a positive finite number"),
        (raw_file(alpha="big"), "'alpha' must be a positive finite number"),
        (raw_file(base_fingerprint=""), "'base_fingerprint' is missing"),
        (raw_file(encoder_window="half"), "unknown encoder_window 'half'"),
        (raw_file(target_modules='["encoder.q_proj"]'), "'target_modules' does not list"),
        (raw_file(target_modules="not json"), "'target_modules' does not list"),
        (raw_file(**{"bad key!": "x"}), "metadata key 'bad key!' is not a valid name"),
        (raw_file(note="x" * 5000), "metadata 'note' is longer than"),
        (raw_file(**{f"k{i}": "v" for i in range(33)}), "33 extra entries"),
        (
            raw_file({**toy_tensors(), "encoder.q_proj.lora_A": torch.zeros(RANK, 8, 1)}),
            "must be a matrix",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(AdapterFileError, match=re.escape(message)):
        load_adapter(data)


@pytest.mark.parametrize("section", ["metadata", "tensor"])
def test_a_name_given_twice_in_the_header_is_refused(section: str) -> None:
    """safetensors keeps the last of duplicated keys silently; the adapter file does not."""
    header, payload = header_of(raw_file())
    parsed = json.loads(header)
    if section == "metadata":
        duplicate = '"__metadata__":{"rank":"3",'
        text = header.replace('"__metadata__":{', duplicate, 1)
        name = "rank"
    else:
        name = "encoder.q_proj.lora_A"
        entry = json.dumps(parsed[name], separators=(",", ":"))
        text = header.rstrip()[:-1] + f',"{name}":{entry}}}'
    with pytest.raises(AdapterFileError, match=f"names '{re.escape(name)}' twice"):
        load_adapter(with_header(text, payload))


def _replaced(name: str, tensor: Tensor) -> Callable[[dict[str, Tensor]], None]:
    def change(tensors: dict[str, Tensor]) -> None:
        tensors[name] = tensor

    return change


def _removed(name: str) -> Callable[[dict[str, Tensor]], None]:
    def change(tensors: dict[str, Tensor]) -> None:
        del tensors[name]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _replaced("encoder.q_proj.lora_A", torch.zeros(RANK, 7)),
            "'encoder.q_proj.lora_A' has shape (2, 7), expected (2, 8)",
        ),
        (
            _replaced("decoder.fc1.lora_B", torch.zeros(9, RANK)),
            "'decoder.fc1.lora_B' has shape (9, 2), expected (10, 2)",
        ),
        (
            _replaced("encoder.q_proj.lora_A", torch.zeros(RANK, 8, dtype=torch.float16)),
            "'encoder.q_proj.lora_A' must be float32, not torch.float16",
        ),
        (
            _replaced("encoder.q_proj.lora_A", torch.full((RANK, 8), math.nan)),
            "'encoder.q_proj.lora_A' holds NaN or infinite values",
        ),
        (
            _replaced("decoder.fc1.lora_B", torch.full((10, RANK), math.inf)),
            "'decoder.fc1.lora_B' holds NaN or infinite values",
        ),
        (
            _removed("decoder.fc1.lora_B"),
            "'decoder.fc1.lora_A' has no matching 'decoder.fc1.lora_B'",
        ),
        (
            _replaced("encoder.k_proj.lora_A", torch.zeros(RANK, 8)),
            "'encoder.k_proj.lora_A' matches no adaptable layer",
        ),
        (
            _replaced("encoder.q_proj.lora_C", torch.zeros(RANK, 8)),
            "'encoder.q_proj.lora_C' matches no adaptable layer",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_tensors_that_do_not_fit_the_base_model_are_refused(
    change: Callable[[dict[str, Tensor]], None], message: str
) -> None:
    tensors = toy_tensors()
    change(tensors)
    adapter = toy_adapter(tensors=tensors)
    with pytest.raises(AdapterFileError, match=re.escape(message)):
        check_compatible(adapter, FINGERPRINT, layers())


def test_fp16_files_load_but_do_not_fit() -> None:
    tensors = {name: t.half() for name, t in toy_tensors().items()}
    loaded = load_adapter(raw_file(tensors))
    with pytest.raises(AdapterFileError, match=re.escape("must be float32, not torch.float16")):
        check_compatible(loaded, FINGERPRINT, layers())


def test_another_base_model_is_its_own_error() -> None:
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        check_compatible(toy_adapter(), "0" * 64, layers())


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (toy_adapter(tensors={}), "holds no tensors"),
        (toy_adapter(method="dora"), "unknown method 'dora'"),
    ],
)
def test_unusable_adapters_are_refused(adapter: AdapterWeights, message: str) -> None:
    with pytest.raises(AdapterFileError, match=message):
        check_compatible(adapter, FINGERPRINT, layers())
