"""A corpus of hostile adapter files (issue #15): out-of-bounds and non-finite values, lying
metadata, wrong shapes and dtypes, stray or missing tensors, overlapping or out-of-range data,
truncated and foreign files. Each is refused through the real HTTP API with 400
`invalid_adapter` (`base_model_mismatch` for another base model), leaves nothing behind, and
the service goes on serving everyone else as before. (Hostile safetensors headers are the
corpus of tests/support/hostile_tensor_files.py, tried through the API in
test_adapter_headers.py.)"""

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save as save_safetensors

from app.engine.adaptation.files import FORMATS
from app.engine.adaptation.lora.file import (
    MAX_EXTRA_ENTRIES,
    MAX_EXTRA_VALUE_CHARS,
    AdapterWeights,
    dump_adapter,
)
from app.engine.whisper import WhisperEngine
from tests.conftest import bearer, create_user
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k, to_bytes
from tests.support.hostile_tensor_files import with_header

Header = dict[str, Any]


@dataclass(frozen=True)
class Hostile:
    make: Callable[[AdapterWeights], bytes]
    reason: str
    """Part of the refusal's message."""
    code: str = "invalid_adapter"


def _split(data: bytes) -> tuple[Header, bytes]:
    length = int.from_bytes(data[:8], "little")
    header: Header = json.loads(data[8 : 8 + length])
    return header, data[8 + length :]


def _edited(data: bytes, edit: Callable[[Header], None]) -> bytes:
    """The file with its header edited (the data section as it was)."""
    header, payload = _split(data)
    edit(header)
    return with_header(json.dumps(header).encode(), payload)


def _metadata(**changes: str | None) -> Callable[[AdapterWeights], bytes]:
    """A valid file whose metadata entries are replaced (None: removed)."""

    def edit(header: Header) -> None:
        for key, value in changes.items():
            if value is None:
                header["__metadata__"].pop(key)
            else:
                header["__metadata__"][key] = value

    return lambda weights: _edited(dump_adapter(weights), edit)


def _factors(weights: AdapterWeights) -> tuple[str, str]:
    """The first adapted module's lora_A and lora_B names."""
    first = sorted(weights.tensors)[0].rsplit(".", 1)[0]
    return f"{first}.lora_A", f"{first}.lora_B"


def _one_value(kind: int, value: float) -> Callable[[AdapterWeights], bytes]:
    """One entry of the first lora_A (kind 0) or lora_B (kind 1) set to `value`."""

    def make(weights: AdapterWeights) -> bytes:
        name = _factors(weights)[kind]
        poisoned = weights.tensors[name].clone()
        poisoned[0, 0] = value
        return dump_adapter(
            dataclasses.replace(weights, tensors={**weights.tensors, name: poisoned})
        )

    return make


def _every_value(value: float) -> Callable[[AdapterWeights], bytes]:
    def make(weights: AdapterWeights) -> bytes:
        tensors = {name: torch.full_like(t, value) for name, t in weights.tensors.items()}
        return dump_adapter(dataclasses.replace(weights, tensors=tensors))

    return make


def _tensors(
    change: Callable[[dict[str, torch.Tensor], str, str], None],
) -> Callable[[AdapterWeights], bytes]:
    """A file of the weights' tensors after `change(tensors, lora_A name, lora_B name)`, saved
    as they are (any dtype) with the weights' metadata."""

    def make(weights: AdapterWeights) -> bytes:
        tensors = dict(weights.tensors)
        change(tensors, *_factors(weights))
        metadata = _split(dump_adapter(weights))[0]["__metadata__"]
        metadata["target_modules"] = json.dumps(sorted({n.rsplit(".", 1)[0] for n in tensors}))
        return save_safetensors(tensors, metadata=metadata)

    return make


def _set(name_of: int, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., None]:
    def change(tensors: dict[str, torch.Tensor], a: str, b: str) -> None:
        name = (a, b)[name_of]
        tensors[name] = value(tensors[name])

    return change


def _without_a(tensors: dict[str, torch.Tensor], a: str, b: str) -> None:
    del tensors[a]


def _also(name: str) -> Callable[..., None]:
    """Adds a copy of the first lora_A under `name`."""

    def change(tensors: dict[str, torch.Tensor], a: str, b: str) -> None:
        tensors[name] = tensors[a].clone()

    return change


def _entries(edit: Callable[[list[Header]], None]) -> Callable[[AdapterWeights], bytes]:
    """A valid file with its tensor entries (in data order) edited."""

    def make(weights: AdapterWeights) -> bytes:
        def edit_header(header: Header) -> None:
            entries = sorted(
                (value for key, value in header.items() if key != "__metadata__"),
                key=lambda entry: entry["data_offsets"][0],
            )
            edit(entries)

        return _edited(dump_adapter(weights), edit_header)

    return make


def _overlap(entries: list[Header]) -> None:
    entries[1]["data_offsets"] = entries[0]["data_offsets"]


def _a_size_too_long(entries: list[Header]) -> None:
    start, end = entries[-1]["data_offsets"]
    entries[-1]["data_offsets"] = [start, end + 4]


def _reversed(entries: list[Header]) -> None:
    entries[0]["data_offsets"] = entries[0]["data_offsets"][::-1]


def _shape_without_its_bytes(entries: list[Header]) -> None:
    entries[0]["shape"] = [entries[0]["shape"][0] * 2, entries[0]["shape"][1]]


def _truncated(keep: Callable[[bytes], int]) -> Callable[[AdapterWeights], bytes]:
    def make(weights: AdapterWeights) -> bytes:
        data = dump_adapter(weights)
        return data[: keep(data)]

    return make


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _duplicate_metadata_key(weights: AdapterWeights) -> bytes:
    header, payload = _split(dump_adapter(weights))
    text = json.dumps(header)
    return with_header(text.replace('"rank": "4"', '"rank": "4", "rank": "64"').encode(), payload)


def _deep_list(levels: int) -> str:
    return "[" * levels + "]" * levels


NOT_FINITE = "'alpha' must be a positive finite number"
FORMATS_NAMED = ", ".join(FORMATS)
OVER_THE_NORM = "times the norm of the weight it adapts; at most 1 is allowed"
NOT_F32 = "must be float32, not torch."
CORPUS: dict[str, Hostile] = {
    # The probe's cases (imported, then every request of the owner answered 500) and siblings.
    "alpha-1e38": Hostile(_metadata(alpha="1e38"), "'alpha' / 'rank' is 2.5e+37; at most 64"),
    "alpha-nan": Hostile(_metadata(alpha="nan"), NOT_FINITE),
    "alpha-inf": Hostile(_metadata(alpha="inf"), NOT_FINITE),
    "alpha-minus-inf": Hostile(_metadata(alpha="-inf"), NOT_FINITE),
    "alpha-1e999": Hostile(_metadata(alpha="1e999"), NOT_FINITE),
    "alpha-negative": Hostile(_metadata(alpha="-4.0"), NOT_FINITE),
    "alpha-zero": Hostile(_metadata(alpha="0"), NOT_FINITE),
    "alpha-not-a-number": Hostile(_metadata(alpha="four"), NOT_FINITE),
    "alpha-5000-digits": Hostile(_metadata(alpha="9" * 5000), NOT_FINITE),
    "alpha-missing": Hostile(_metadata(alpha=None), "'alpha' is missing"),
    "rank-0": Hostile(_metadata(rank="0"), "'rank' must be between 1 and 256"),
    "rank-negative": Hostile(_metadata(rank="-4"), "'rank' must be a whole number"),
    "rank-100000": Hostile(_metadata(rank="100000"), "'rank' must be between 1 and 256"),
    "rank-2**63": Hostile(_metadata(rank=str(2**63)), "'rank' must be between 1 and 256"),
    "rank-5000-digits": Hostile(_metadata(rank="9" * 5000), "'rank' must be between 1 and 256"),
    "rank-not-whole": Hostile(_metadata(rank="4.0"), "'rank' must be a whole number"),
    "rank-not-the-tensors": Hostile(_metadata(rank="8"), "has rank 4, but metadata 'rank' is 8"),
    "weight-3e38-in-B": Hostile(_one_value(1, 3e38), OVER_THE_NORM),
    "weight-3e38-in-A": Hostile(_one_value(0, 3e38), OVER_THE_NORM),
    "weight-minus-3e38": Hostile(_one_value(1, -3e38), OVER_THE_NORM),
    "weight-nan": Hostile(_one_value(1, float("nan")), "holds NaN or infinite values"),
    "weight-inf": Hostile(_one_value(0, float("inf")), "holds NaN or infinite values"),
    "weight-minus-inf": Hostile(_one_value(1, float("-inf")), "holds NaN or infinite values"),
    "all-weights-1e19": Hostile(_every_value(1e19), OVER_THE_NORM),
    # Metadata that lies or is not this service's.
    "other-base-model": Hostile(
        _metadata(base_fingerprint="0" * 64),
        "trained for a different base model",
        "base_model_mismatch",
    ),
    "base-fingerprint-missing": Hostile(
        _metadata(base_fingerprint=None), "'base_fingerprint' is missing"
    ),
    "format-missing": Hostile(_metadata(format=None), f"'format' must be one of {FORMATS_NAMED}"),
    "format-peft": Hostile(_metadata(format="peft"), f"'format' must be one of {FORMATS_NAMED}"),
    "method-unknown": Hostile(_metadata(method="saml"), "unknown method 'saml'"),
    "encoder-window-unknown": Hostile(
        _metadata(encoder_window="half"), "unknown encoder_window 'half'"
    ),
    "target-modules-lie": Hostile(_metadata(target_modules="[]"), "does not list exactly"),
    "target-modules-not-json": Hostile(_metadata(target_modules="[m"), "does not list exactly"),
    "target-modules-nested-100k-deep": Hostile(
        _metadata(target_modules=_deep_list(100_000)), "does not list exactly"
    ),
    "too-many-extra-metadata": Hostile(
        _metadata(**{f"x{i}": "" for i in range(MAX_EXTRA_ENTRIES + 1)}),
        f"{MAX_EXTRA_ENTRIES + 1} extra entries; at most {MAX_EXTRA_ENTRIES}",
    ),
    "extra-metadata-too-long": Hostile(
        _metadata(note="x" * (MAX_EXTRA_VALUE_CHARS + 1)),
        f"'note' is longer than {MAX_EXTRA_VALUE_CHARS} characters",
    ),
    "duplicate-metadata-key": Hostile(_duplicate_metadata_key, "names 'rank' twice"),
    # Tensors of the wrong shape, dtype or name.
    "lora-A-transposed": Hostile(
        _tensors(_set(0, lambda t: t.T.contiguous())), "has rank 384, but metadata 'rank' is 4"
    ),
    "lora-A-wrong-width": Hostile(
        _tensors(_set(0, lambda t: torch.cat([t, t[:, :1]], dim=1))),
        "has shape (4, 385), expected (4, 384)",
    ),
    "lora-B-a-vector": Hostile(_tensors(_set(1, lambda t: t.flatten())), "must be a matrix"),
    "lora-B-3d": Hostile(_tensors(_set(1, lambda t: t.unsqueeze(0))), "must be a matrix"),
    "lora-B-float16": Hostile(_tensors(_set(1, lambda t: t.half())), NOT_F32),
    "lora-B-float64": Hostile(_tensors(_set(1, lambda t: t.double())), NOT_F32),
    "lora-B-bfloat16": Hostile(_tensors(_set(1, lambda t: t.bfloat16())), NOT_F32),
    "lora-A-int32": Hostile(_tensors(_set(0, lambda t: t.int())), NOT_F32),
    "lora-A-bool": Hostile(_tensors(_set(0, lambda t: t > 0)), NOT_F32),
    "lora-B-without-its-A": Hostile(_tensors(_without_a), "has no matching"),
    "a-non-adaptable-layer": Hostile(
        _tensors(_also("model.encoder.conv1.lora_A")),
        "'model.encoder.conv1.lora_A' matches no adaptable layer",
    ),
    "an-unknown-factor": Hostile(
        _tensors(_also("model.decoder.layers.0.self_attn.q_proj.lora_C")),
        "lora_C' matches no adaptable layer",
    ),
    "a-path-for-a-name": Hostile(
        _tensors(_also("../../etc/passwd.lora_A")),
        "'../../etc/passwd.lora_A' matches no adaptable layer",
    ),
    "no-tensors": Hostile(_tensors(lambda tensors, a, b: tensors.clear()), "holds no tensors"),
    # Data sections that do not add up.
    "offsets-overlapping": Hostile(_entries(_overlap), "does not start where the last ended"),
    "offsets-a-size-too-long": Hostile(
        _entries(_a_size_too_long), "its shape and data_offsets disagree"
    ),
    "offsets-reversed": Hostile(_entries(_reversed), "has invalid data_offsets"),
    "shape-without-its-bytes": Hostile(
        _entries(_shape_without_its_bytes), "its shape and data_offsets disagree"
    ),
    "trailing-bytes": Hostile(
        lambda weights: dump_adapter(weights) + bytes(16),
        "the tensors take",
    ),
    # Truncated files and other files altogether.
    "truncated-to-4-bytes": Hostile(_truncated(lambda data: 4), "shorter than its header length"),
    "truncated-to-its-length-field": Hostile(
        _truncated(lambda data: 8), "the header runs past the end of the file"
    ),
    "truncated-in-the-header": Hostile(
        _truncated(lambda data: _header_end(data) // 2), "the header runs past the end"
    ),
    "truncated-after-the-header": Hostile(_truncated(_header_end), "the data section 0"),
    "truncated-by-one-byte": Hostile(
        _truncated(lambda data: len(data) - 1),
        "the tensors take",
    ),
    "a-wav-file": Hostile(lambda _: to_bytes(speech_16k("Hello."), 16_000), "over the limit"),
    "a-zip-file": Hostile(lambda _: b"PK\x03\x04" + bytes(60), "was refused"),
    "a-json-file": Hostile(lambda _: b'{"rank": 4, "alpha": 4.0}', "over the limit"),
}
"""What each case does, with what its refusal says (rank 4, tiny.en's attention layers)."""


@pytest.fixture(scope="module")
def weights(nf4_engine: WhisperEngine) -> AdapterWeights:
    return random_adapter(nf4_engine, 31)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return to_bytes(speech_16k("The train is late again this morning.", speed=130), 16_000)


async def _upload(
    client: httpx.AsyncClient, user_id: str, headers: dict[str, str], data: bytes
) -> httpx.Response:
    return await client.post(
        f"/v1/users/{user_id}/adapters",
        files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        headers=headers,
    )


async def _transcribe(client: httpx.AsyncClient, wav: bytes, headers: dict[str, str]) -> str:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    text: str = response.json()["text"]
    return text


async def test_every_hostile_adapter_is_refused_and_the_service_serves_on(
    client: httpx.AsyncClient, weights: AdapterWeights, wav: bytes
) -> None:
    mallory, bystander = await create_user(client, "mallory"), await create_user(client, "bob")
    as_mallory, as_bystander = bearer(mallory["api_key"]), bearer(bystander["api_key"])
    before = await _transcribe(client, wav, as_bystander)

    outcomes: dict[str, tuple[int, str | None, str]] = {}
    for case, hostile in CORPUS.items():
        response = await _upload(client, mallory["id"], as_mallory, hostile.make(weights))
        error = response.json().get("error", {})
        outcomes[case] = (
            response.status_code,
            error.get("code"),
            error.get("message", "over the limit of 1048576"),
        )

    wrong = {
        case: outcome
        for case, outcome in outcomes.items()
        if outcome[:2] != (400, CORPUS[case].code) or CORPUS[case].reason not in outcome[2]
    }
    assert wrong == {}
    listed = await client.get(f"/v1/users/{mallory['id']}/adapters", headers=as_mallory)
    assert listed.json()["data"] == []
    assert await _transcribe(client, wav, as_bystander) == before
    assert await _transcribe(client, wav, as_mallory) == before
    valid = await _upload(client, mallory["id"], as_mallory, dump_adapter(weights))
    assert valid.status_code == 201, valid.text
