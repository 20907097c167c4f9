"""A poisoned adapter hurts nobody: files out of bounds are refused at import (and trained ones
are never activated), and one that reaches the engine anyway (a hostile database row, or one
stored by an older version) is quarantined on its first request, which the base model answers,
saying so."""

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.db.models import AdapterStatus
from app.engine.adaptation.lora.file import MAX_SCALE, AdapterWeights, dump_adapter
from app.engine.whisper import WhisperEngine
from app.metrics import Metrics
from app.services.adapters import ActiveAdapters
from app.state import ServiceState
from tests.conftest import bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes

MILD = 0.001
"""Barely changes the output (as in test_adapter_transfer): which adapter served is read from
`X-Adapter-Id`."""


@pytest.fixture(scope="module")
def weights(nf4_engine: WhisperEngine) -> AdapterWeights:
    return random_adapter(nf4_engine, 21, strength=MILD)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return to_bytes(speech_16k("Please call me back tomorrow morning.", speed=130), 16_000)


def _huge_alpha(weights: AdapterWeights) -> AdapterWeights:
    return dataclasses.replace(weights, alpha=1e38)


def _huge_weight(weights: AdapterWeights) -> AdapterWeights:
    name = next(name for name in sorted(weights.tensors) if name.endswith("lora_B"))
    poisoned = weights.tensors[name].clone()
    poisoned[0, 0] = 3e38
    return dataclasses.replace(weights, tensors={**weights.tensors, name: poisoned})


def _over_the_norm_bound(weights: AdapterWeights) -> AdapterWeights:
    """Every entry finite and modest (B about 0.02), yet each update outweighs its weight."""
    scaled = {
        name: tensor * 20 if name.endswith("lora_B") else tensor
        for name, tensor in weights.tensors.items()
    }
    return dataclasses.replace(weights, tensors=scaled)


def _large_scale(weights: AdapterWeights) -> AdapterWeights:
    return dataclasses.replace(weights, alpha=2 * MAX_SCALE * weights.rank)


def _huge_rank(weights: AdapterWeights) -> bytes:
    return dump_adapter(dataclasses.replace(weights, rank=100_000))


OUT_OF_BOUNDS: dict[str, tuple[Callable[[AdapterWeights], AdapterWeights], str]] = {
    "alpha-1e38": (_huge_alpha, "'alpha' / 'rank' is 2.5e+37; at most 64"),
    "weight-3e38": (_huge_weight, "times the norm of the weight it adapts; at most 1"),
    "norm-ratio": (_over_the_norm_bound, "times the norm of the weight it adapts; at most 1"),
    "alpha-over-rank": (_large_scale, "'alpha' / 'rank' is 128; at most 64"),
}


def adapters_path(user_id: str) -> str:
    return f"/v1/users/{user_id}/adapters"


async def upload(
    client: httpx.AsyncClient, user_id: str, data: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(
        adapters_path(user_id),
        files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        headers=headers,
    )


async def listed(
    client: httpx.AsyncClient, user_id: str, headers: dict[str, str]
) -> dict[str, dict[str, Any]]:
    response = await client.get(adapters_path(user_id), headers=headers)
    assert response.status_code == 200, response.text
    return {adapter["id"]: adapter for adapter in response.json()["data"]}


async def transcribe(
    client: httpx.AsyncClient, wav: bytes, headers: dict[str, str], **fields: str
) -> httpx.Response:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1", **fields},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("case", list(OUT_OF_BOUNDS))
async def test_adapters_out_of_bounds_are_refused_at_import(
    client: httpx.AsyncClient, weights: AdapterWeights, case: str
) -> None:
    poison, reason = OUT_OF_BOUNDS[case]
    dave = await create_user(client, "dave")
    as_dave = bearer(dave["api_key"])

    response = await upload(client, dave["id"], dump_adapter(poison(weights)), as_dave)

    error = assert_openai_error(response, 400)
    assert (error["param"], error["code"]) == ("file", "invalid_adapter")
    assert reason in str(error["message"])
    assert await listed(client, dave["id"], as_dave) == {}


async def test_a_huge_rank_is_refused_at_import(
    client: httpx.AsyncClient, weights: AdapterWeights
) -> None:
    dave = await create_user(client, "dave")
    response = await upload(client, dave["id"], _huge_rank(weights), bearer(dave["api_key"]))
    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_adapter"
    assert "'rank' must be between 1 and 256" in str(error["message"])


async def test_an_adapter_within_the_bounds_imports(
    client: httpx.AsyncClient, nf4_engine: WhisperEngine
) -> None:
    """Five times stronger than the mild test adapters is accepted (trained adapters sit far
    below the bound: docs/benchmarks/adapter_bounds.json)."""
    strong = random_adapter(nf4_engine, 22, strength=5 * MILD)
    erin = await create_user(client, "erin")
    response = await upload(client, erin["id"], dump_adapter(strong), bearer(erin["api_key"]))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == AdapterStatus.READY


@pytest.mark.slow
async def test_an_adapter_that_goes_non_finite_is_quarantined_and_the_base_model_answers(
    client: httpx.AsyncClient,
    state: ServiceState,
    nf4_engine: WhisperEngine,
    weights: AdapterWeights,
    wav: bytes,
) -> None:
    alice = await create_user(client, "alice")
    as_alice = bearer(alice["api_key"])
    # Straight into the store and the database, as a hostile row or an older version would
    # leave it: the import's bounds never saw it.
    poisoned = await install_adapter(state, alice["id"], _huge_alpha(weights))
    healthy = await install_adapter(state, alice["id"], weights, active=False)
    base = await transcribe(client, wav, as_alice, personalise="false")

    answered = await transcribe(client, wav, as_alice)

    assert answered.headers["x-adapter-id"] == "none"
    assert answered.headers["x-adapter-fallback"] == "adapter_numeric_error"
    assert answered.json() == base.json()
    adapters = await listed(client, alice["id"], as_alice)
    assert adapters[poisoned]["status"] == "quarantined"
    assert adapters[poisoned]["active"] is False
    assert "NaN or infinity" in adapters[poisoned]["note"]
    assert adapters[healthy]["status"] == "ready"

    again = await transcribe(client, wav, as_alice)
    assert again.headers["x-adapter-id"] == "none"
    assert "x-adapter-fallback" not in again.headers
    assert again.json() == base.json()

    refused = await client.post(
        f"{adapters_path(alice['id'])}/{poisoned}/activate", headers=as_alice
    )
    assert assert_openai_error(refused, 409)["code"] == "adapter_quarantined"
    activated = await client.post(
        f"{adapters_path(alice['id'])}/{healthy}/activate", headers=as_alice
    )
    assert activated.status_code == 200, activated.text
    assert (await transcribe(client, wav, as_alice)).headers["x-adapter-id"] == healthy


@pytest.mark.slow
async def test_a_request_beside_the_poisoned_one_is_untouched(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights, wav: bytes
) -> None:
    """Another user's request in the same batch gets its own adapter and its own transcript."""
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    as_alice, as_bob = bearer(alice["api_key"]), bearer(bob["api_key"])
    await install_adapter(state, alice["id"], _huge_weight(weights))
    bobs = await install_adapter(state, bob["id"], weights)
    alone = await transcribe(client, wav, as_bob)

    answers = await asyncio.gather(
        *(transcribe(client, wav, headers) for headers in (as_alice, as_bob, as_bob))
    )

    assert answers[0].headers["x-adapter-fallback"] == "adapter_numeric_error"
    for answer in answers[1:]:
        assert answer.headers["x-adapter-id"] == bobs
        assert "x-adapter-fallback" not in answer.headers
        assert answer.json() == alone.json()


async def test_a_quarantined_adapter_leaves_the_host_tier(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    user = await create_user(client, "carol")
    adapter_id = await install_adapter(state, user["id"], random_adapter(nf4_engine, 23))
    adapters = ActiveAdapters(state.adapter_store, state.engine, metrics=Metrics())
    async with state.sessions() as session:
        resolved = await adapters.resolve(session, user["id"])
    assert resolved is not None
    assert adapters.cached_bytes > 0

    async with state.sessions() as session, session.begin():
        await adapters.quarantine(session, adapter_id, "quarantined: a test")

    assert adapters.cached_bytes == 0
    async with state.sessions() as session:
        assert await adapters.resolve(session, user["id"]) is None
