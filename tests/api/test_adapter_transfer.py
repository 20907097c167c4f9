"""Adapter export and import over HTTP: files round-trip between users, untrusted files are
refused with the reason, and an imported adapter serves the user's next request."""

import dataclasses
import hashlib
import io
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.config import MIB, Settings
from app.db.models import Adapter
from app.engine.adaptation.lora.file import AdapterWeights, dump_adapter, load_adapter
from app.engine.whisper import WhisperEngine
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes

MAX_ADAPTER_BYTES = MIB
"""Above the ~0.6 MB of a rank-4 attention adapter for tiny.en."""
MILD = 0.001
"""Adapters these tests transcribe with barely change the output: which adapter serves is read
from `X-Adapter-Id`, and a strong random adapter makes the model ramble (slow to decode)."""


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_en_dir: Path) -> Settings:
    """The suite's settings with a small adapter limit; `adapter_store` by indirect parameter."""
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False},
        max_adapter_bytes=MAX_ADAPTER_BYTES,
        adapter_store=getattr(request, "param", "sql"),
    )


@pytest.fixture(scope="module")
def weights(nf4_engine: WhisperEngine) -> AdapterWeights:
    return random_adapter(nf4_engine, 11, strength=MILD)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return to_bytes(speech_16k("Please call me back tomorrow morning.", speed=130), 16_000)


def adapters_path(user_id: str) -> str:
    return f"/v1/users/{user_id}/adapters"


def weights_path(user_id: str, adapter_id: str) -> str:
    return f"{adapters_path(user_id)}/{adapter_id}/weights"


async def upload(
    client: httpx.AsyncClient, user_id: str, data: bytes, headers: dict[str, str], **fields: str
) -> httpx.Response:
    return await client.post(
        adapters_path(user_id),
        files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        data=fields,
        headers=headers,
    )


async def listed(
    client: httpx.AsyncClient, user_id: str, headers: dict[str, str]
) -> dict[str, dict[str, Any]]:
    response = await client.get(adapters_path(user_id), headers=headers)
    assert response.status_code == 200, response.text
    return {adapter["id"]: adapter for adapter in response.json()["data"]}


async def transcribe(
    client: httpx.AsyncClient, wav: bytes, headers: dict[str, str]
) -> httpx.Response:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("settings", ["sql", "filesystem"], indirect=True)
async def test_an_adapter_round_trips_between_users_and_serves_the_importer(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights, wav: bytes
) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    as_alice, as_bob = bearer(alice["api_key"]), bearer(bob["api_key"])
    source = await install_adapter(state, alice["id"], weights)

    exported = await client.get(weights_path(alice["id"], source), headers=as_alice)
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/octet-stream"
    assert exported.headers["content-disposition"] == f'attachment; filename="{source}.safetensors"'
    recorded = (await listed(client, alice["id"], as_alice))[source]
    assert hashlib.sha256(exported.content).hexdigest() == recorded["sha256"]
    assert exported.headers["etag"] == f'"{recorded["sha256"]}"'
    in_file = load_adapter(exported.content)
    assert in_file.base_fingerprint == weights.base_fingerprint
    assert in_file.rank == weights.rank
    assert all(torch.equal(in_file.tensors[n], t) for n, t in weights.tensors.items())

    imported = await upload(client, bob["id"], exported.content, as_bob)
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert body["object"] == "adapter"
    assert (body["user_id"], body["source"], body["active"], body["version"]) == (
        bob["id"],
        "import",
        True,
        1,
    )
    assert (body["rank"], body["method"], body["target_modules"]) == (
        weights.rank,
        "lora",
        weights.target_modules,
    )
    assert body["base_fingerprint"] == weights.base_fingerprint
    assert (body["sha256"], body["size_bytes"]) == (recorded["sha256"], len(exported.content))
    assert body["parameter_count"] == weights.parameter_count
    assert body["metrics"] == {}
    listed_for_bob = await listed(client, bob["id"], as_bob)
    assert list(listed_for_bob) == [body["id"]]
    assert {k: v for k, v in listed_for_bob[body["id"]].items() if k != "created_at"} == {
        k: v for k, v in body.items() if k != "created_at"
    }

    again = await client.get(weights_path(bob["id"], body["id"]), headers=as_bob)
    assert again.status_code == 200
    assert again.content == exported.content

    as_importer = await transcribe(client, wav, as_bob)
    assert as_importer.headers["x-adapter-id"] == body["id"]
    as_owner = await transcribe(client, wav, as_alice)
    assert as_owner.headers["x-adapter-id"] == source
    assert as_importer.json() == as_owner.json()


async def test_activate_false_keeps_the_active_adapter_and_true_replaces_it(
    client: httpx.AsyncClient,
    state: ServiceState,
    nf4_engine: WhisperEngine,
    weights: AdapterWeights,
    wav: bytes,
) -> None:
    carol = await create_user(client, "carol")
    as_carol = bearer(carol["api_key"])
    current = await install_adapter(
        state, carol["id"], random_adapter(nf4_engine, 12, strength=MILD)
    )

    kept = await upload(client, carol["id"], dump_adapter(weights), as_carol, activate="false")
    assert kept.status_code == 201, kept.text
    assert kept.json()["active"] is False
    adapters = await listed(client, carol["id"], as_carol)
    assert {i: a["active"] for i, a in adapters.items()} == {
        current: True,
        kept.json()["id"]: False,
    }
    assert (await transcribe(client, wav, as_carol)).headers["x-adapter-id"] == current

    replacing = await upload(client, carol["id"], dump_adapter(weights), ADMIN)
    assert replacing.status_code == 201, replacing.text
    adapters = await listed(client, carol["id"], as_carol)
    assert {i: (a["version"], a["active"]) for i, a in adapters.items()} == {
        current: (1, False),
        kept.json()["id"]: (2, False),
        replacing.json()["id"]: (3, True),
    }


def _resaved(weights: AdapterWeights, change: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    """The adapter's file with its tensors changed, written by safetensors as they are."""
    data = dump_adapter(weights)
    tensors = load_safetensors(data)
    change(tensors)
    return bytes(save_safetensors(tensors, metadata=_metadata(data)))


def _metadata(data: bytes) -> dict[str, str]:
    length = int.from_bytes(data[:8], "little")
    metadata: dict[str, str] = json.loads(data[8 : 8 + length])["__metadata__"]
    return metadata


def _first(weights: AdapterWeights, factor: str) -> str:
    return f"{weights.target_modules[0]}.{factor}"


def _with(weights: AdapterWeights, **tensors: torch.Tensor) -> AdapterWeights:
    return dataclasses.replace(weights, tensors={**weights.tensors, **tensors})


def _random_bytes(_: AdapterWeights) -> bytes:
    return random.Random(0).randbytes(4096)


def _pickle(weights: AdapterWeights) -> bytes:
    return pickle.dumps(weights.tensors)


def _torch_zip(weights: AdapterWeights) -> bytes:
    buffer = io.BytesIO()
    torch.save(weights.tensors, buffer)
    return buffer.getvalue()


def _other_base_model(weights: AdapterWeights) -> bytes:
    return dump_adapter(dataclasses.replace(weights, base_fingerprint="0" * 64))


def _wrong_shape(weights: AdapterWeights) -> bytes:
    name = _first(weights, "lora_A")
    a = weights.tensors[name]
    return dump_adapter(_with(weights, **{name: a[:, :-1]}))


def _wrong_rank_metadata(weights: AdapterWeights) -> bytes:
    return dump_adapter(dataclasses.replace(weights, rank=8))


def _nan(weights: AdapterWeights) -> bytes:
    name = _first(weights, "lora_B")
    b = weights.tensors[name].clone()
    b[0, 0] = float("nan")
    return dump_adapter(_with(weights, **{name: b}))


def _missing_b(weights: AdapterWeights) -> bytes:
    tensors = dict(weights.tensors)
    del tensors[_first(weights, "lora_B")]
    return dump_adapter(dataclasses.replace(weights, tensors=tensors))


def _unknown_module(weights: AdapterWeights) -> bytes:
    module = "model.encoder.layers.9.self_attn.q_proj"
    a, b = weights.tensors[_first(weights, "lora_A")], weights.tensors[_first(weights, "lora_B")]
    return dump_adapter(
        _with(weights, **{f"{module}.lora_A": a.clone(), f"{module}.lora_B": b.clone()})
    )


def _float16(weights: AdapterWeights) -> bytes:
    name = _first(weights, "lora_A")

    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].half()

    return _resaved(weights, change)


def _unknown_method(weights: AdapterWeights) -> bytes:
    return dump_adapter(dataclasses.replace(weights, method="dora"))


REJECTIONS: dict[str, tuple[Callable[[AdapterWeights], bytes], str, str]] = {
    "random-bytes": (_random_bytes, "not a safetensors file", "invalid_adapter"),
    "pickle": (_pickle, "not a safetensors file", "invalid_adapter"),
    "torch-zip": (_torch_zip, "not a safetensors file", "invalid_adapter"),
    "other-base-model": (_other_base_model, "different base model", "base_model_mismatch"),
    "wrong-shape": (_wrong_shape, "has shape (4, 383), expected (4, 384)", "invalid_adapter"),
    "wrong-rank": (_wrong_rank_metadata, "has rank 4, but metadata 'rank' is 8", "invalid_adapter"),
    "nan": (_nan, "holds NaN or infinite values", "invalid_adapter"),
    "missing-b": (_missing_b, "has no matching", "invalid_adapter"),
    "unknown-module": (
        _unknown_module,
        "'model.encoder.layers.9.self_attn.q_proj.lora_A' matches no adaptable layer",
        "invalid_adapter",
    ),
    "float16": (_float16, "must be float32, not torch.float16", "invalid_adapter"),
    "unknown-method": (_unknown_method, "unknown method 'dora'", "invalid_adapter"),
    "empty": (lambda _: b"", "The adapter file is empty.", "invalid_adapter"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_unfit_files_are_refused_with_the_reason(
    client: httpx.AsyncClient, weights: AdapterWeights, case: str
) -> None:
    make, reason, code = REJECTIONS[case]
    dave = await create_user(client, "dave")
    as_dave = bearer(dave["api_key"])
    response = await upload(client, dave["id"], make(weights), as_dave)
    error = assert_openai_error(response, 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "file", code)
    assert reason in str(error["message"])
    assert await listed(client, dave["id"], as_dave) == {}


async def test_a_file_just_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    """The body (file plus multipart framing) passes the body limit; the file itself does not."""
    erin = await create_user(client, "erin")
    data = b"\0" * (MAX_ADAPTER_BYTES + 1)
    error = assert_openai_error(await upload(client, erin["id"], data, ADMIN), 413)
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert f"{MAX_ADAPTER_BYTES} byte limit" in str(error["message"])


async def test_a_body_far_over_the_limit_is_413_before_it_is_read(
    client: httpx.AsyncClient,
) -> None:
    erin = await create_user(client, "erin")
    data = b"\0" * (2 * MAX_ADAPTER_BYTES)
    error = assert_openai_error(await upload(client, erin["id"], data, ADMIN), 413)
    assert error["code"] == "file_too_large"


async def test_other_users_adapters_are_404_both_ways(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    as_alice = bearer(alice["api_key"])
    bobs = await install_adapter(state, bob["id"], weights)

    assert_openai_error(await client.get(weights_path(bob["id"], bobs), headers=as_alice), 404)
    assert_openai_error(await client.get(weights_path(alice["id"], bobs), headers=as_alice), 404)
    assert_openai_error(await upload(client, bob["id"], dump_adapter(weights), as_alice), 404)
    assert list(await listed(client, bob["id"], ADMIN)) == [bobs]
    assert_openai_error(await upload(client, "nobody", dump_adapter(weights), ADMIN), 404)
    assert_openai_error(await client.get(weights_path(bob["id"], bobs)), 401)
    assert (await client.get(weights_path(bob["id"], bobs), headers=ADMIN)).status_code == 200


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
async def test_damaged_weights_are_never_exported(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights, damage: str
) -> None:
    frank = await create_user(client, "frank")
    adapter_id = await install_adapter(state, frank["id"], weights)
    async with state.sessions() as session:
        row = await session.get(Adapter, adapter_id)
        assert row is not None
        key = row.blob_key
    if damage == "corrupt":
        data = bytearray(await state.adapter_store.get(key))
        data[-5] ^= 0xFF
        await state.adapter_store.put(key, bytes(data))  # the store's own checksum now agrees
    else:
        await state.adapter_store.delete(key)
    response = await client.get(weights_path(frank["id"], adapter_id), headers=ADMIN)
    error = assert_openai_error(response, 500)
    assert (error["type"], error["code"]) == ("server_error", f"adapter_weights_{damage}")
    assert adapter_id in str(error["message"])
