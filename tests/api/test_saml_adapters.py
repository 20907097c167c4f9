"""SAML adapters through the service over HTTP: a stored one serves its user (as the engine
transcribes with it directly), is listed with its method, exports in its own format (not in
PEFT's), imports as strictly as LoRA, counts its users' corrections under its own method, and an
expert bank is no speaker's adapter."""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import func, select

from app.config import MIB, Settings
from app.db.models import Adapter, AdapterBlob
from app.engine.adaptation.files import load_any
from app.engine.adaptation.saml.file import dump_saml
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.audio import decode_audio
from app.engine.text import word_errors
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from app.services.adapters import TENSOR_OVERHEAD_BYTES, ActiveAdapters
from app.state import ServiceState
from tests.api import test_correction_metrics as correction_metrics
from tests.api.test_adapter_transfer import listed, transcribe, upload, weights_path
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.engine.adaptation.saml.test_file import CORPUS
from tests.support.adapters import install_adapter, random_saml
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes
from tests.support.speech import SENTENCES

SERVED = TranscriptionOptions(with_timestamps=False)
"""What the service decodes a plain JSON transcription request with."""


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False},
        max_adapter_bytes=4 * MIB,
    )


@pytest.fixture(scope="module")
def saml(nf4_engine: WhisperEngine) -> SamlWeights:
    """Depthwise routers: the file stays small (conv routers are d x d x 3 per route)."""
    return random_saml(nf4_engine, 5, router="depthwise")


@pytest.fixture(scope="module")
def wav() -> bytes:
    return to_bytes(speech_16k("Please call me back tomorrow morning.", speed=130), 16_000)


def _assert_same_tensors(loaded: SamlWeights, original: SamlWeights) -> None:
    assert loaded.tensors.keys() == original.tensors.keys()
    assert all(torch.equal(loaded.tensors[n], t) for n, t in original.tensors.items())


async def test_a_stored_saml_adapter_serves_its_user_as_the_engine_does_until_deleted(
    client: httpx.AsyncClient,
    state: ServiceState,
    nf4_engine: WhisperEngine,
    saml: SamlWeights,
    wav: bytes,
) -> None:
    alice = await create_user(client, "alice")
    as_alice = bearer(alice["api_key"])
    adapter_id = await install_adapter(state, alice["id"], saml)

    served = await transcribe(client, wav, as_alice)
    assert served.headers["x-adapter-id"] == adapter_id
    base = await transcribe(client, wav, ADMIN)
    direct = nf4_engine.transcribe(decode_audio(wav), SERVED, saml)
    assert served.json()["text"] == direct.text
    assert served.json()["text"] != base.json()["text"], "the test adapter must change the text"

    adapters = await listed(client, alice["id"], as_alice)
    assert (adapters[adapter_id]["method"], adapters[adapter_id]["active"]) == ("saml", True)
    assert adapters[adapter_id]["parameter_count"] == saml.parameter_count

    deleted = await client.delete(f"/v1/users/{alice['id']}/adapters/{adapter_id}", headers=ADMIN)
    assert deleted.status_code == 204
    after = await transcribe(client, wav, as_alice)
    assert after.headers["x-adapter-id"] == "none"
    assert after.json() == base.json()


async def test_the_host_cache_counts_a_saml_adapters_bytes(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine, saml: SamlWeights
) -> None:
    bob = await create_user(client, "bob")
    adapter_id = await install_adapter(state, bob["id"], saml)
    adapters = ActiveAdapters(state.adapter_store, state.engine)
    async with state.sessions() as session:
        resolved = await adapters.resolve(session, bob["id"])
    assert resolved is not None
    assert resolved.id == adapter_id
    data = sum(t.numel() * t.element_size() for t in saml.tensors.values())
    assert adapters.cached_bytes == data + TENSOR_OVERHEAD_BYTES * len(saml.tensors)


async def test_a_saml_adapter_exports_in_its_own_format_and_not_in_peft_s(
    client: httpx.AsyncClient, state: ServiceState, saml: SamlWeights
) -> None:
    carol = await create_user(client, "carol")
    adapter_id = await install_adapter(state, carol["id"], saml)

    exported = await client.get(weights_path(carol["id"], adapter_id), headers=ADMIN)
    assert exported.status_code == 200, exported.text
    assert exported.content == dump_saml(saml)
    loaded = load_any(exported.content)
    assert isinstance(loaded, SamlWeights)
    _assert_same_tensors(loaded, saml)

    peft = await client.get(
        weights_path(carol["id"], adapter_id), params={"format": "peft"}, headers=ADMIN
    )
    error = assert_openai_error(peft, 400)
    assert (error["param"], error["code"]) == ("format", "unsupported_format")
    assert "PEFT has no saml adapters" in str(error["message"])


async def test_a_saml_file_imports_and_serves_the_importer(
    client: httpx.AsyncClient, saml: SamlWeights, wav: bytes
) -> None:
    dave = await create_user(client, "dave")
    as_dave = bearer(dave["api_key"])
    response = await upload(client, dave["id"], dump_saml(saml), as_dave)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["method"], body["source"], body["active"]) == ("saml", "import", True)
    assert body["parameter_count"] == saml.parameter_count
    assert (await transcribe(client, wav, as_dave)).headers["x-adapter-id"] == body["id"]
    again = await client.get(weights_path(dave["id"], body["id"]), headers=as_dave)
    assert again.content == dump_saml(saml)


def _with(weights: SamlWeights, name: str, value: float) -> bytes:
    """The adapter's file with the first entry of tensor `name` set to `value`."""
    tensor = weights.tensors[name].clone()
    tensor.view(-1)[0] = value
    return dump_saml(dataclasses.replace(weights, tensors={**weights.tensors, name: tensor}))


def _first_expert(weights: SamlWeights) -> str:
    return f"{weights.target_modules[0]}.experts_B"


def _a_router(weights: SamlWeights) -> str:
    return next(name for name in sorted(weights.tensors) if name.startswith("routers."))


def _without_routers(weights: SamlWeights) -> bytes:
    kept = {n: t for n, t in weights.tensors.items() if not n.startswith("routers.decoder_self")}
    return dump_saml(dataclasses.replace(weights, tensors=kept))


TINY_EN_REJECTIONS: dict[str, tuple[Callable[[SamlWeights], bytes], str, str]] = {
    "bank": (
        lambda w: dump_saml(dataclasses.replace(w, kind="bank")),
        "it is an expert bank, not a speaker's adapter",
        "invalid_adapter",
    ),
    "other-base-model": (
        lambda w: dump_saml(dataclasses.replace(w, base_fingerprint="0" * 64)),
        "different base model",
        "base_model_mismatch",
    ),
    "expert-nan": (
        lambda w: _with(w, _first_expert(w), float("nan")),
        "holds NaN or infinite values",
        "invalid_adapter",
    ),
    "expert-too-strong": (
        lambda w: _with(w, _first_expert(w), 1e6),
        "times the weight's norm; at most 1 is allowed",
        "invalid_adapter",
    ),
    "router-beyond": (
        lambda w: _with(w, _a_router(w), 1e4),
        "holds values beyond",
        "invalid_adapter",
    ),
    "router-missing": (_without_routers, "is missing", "invalid_adapter"),
    "too-cold": (
        lambda w: dump_saml(dataclasses.replace(w, temperature=1e-3)),
        "at least 0.01 is allowed",
        "invalid_adapter",
    ),
}
CORPUS_CASES = (
    "kind-unknown",
    "method-lora",
    "experts-65",
    "experts-unlike-the-tensors",
    "expert-2d",
    "truncated-in-the-header",
)
"""Files the engine's SAML corpus refuses on their own terms (before any base model)."""


async def _assert_refused(client: httpx.AsyncClient, data: bytes, reason: str, code: str) -> None:
    erin = await create_user(client, "erin")
    as_erin = bearer(erin["api_key"])
    error = assert_openai_error(await upload(client, erin["id"], data, as_erin), 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "file", code)
    assert reason in str(error["message"])
    assert await listed(client, erin["id"], as_erin) == {}


@pytest.mark.parametrize("case", list(TINY_EN_REJECTIONS))
async def test_unfit_saml_files_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, state: ServiceState, saml: SamlWeights, case: str
) -> None:
    make, reason, code = TINY_EN_REJECTIONS[case]
    await _assert_refused(client, make(saml), reason, code)
    async with state.sessions() as session:
        for table in (Adapter, AdapterBlob):
            assert await session.scalar(select(func.count()).select_from(table)) == 0


@pytest.mark.parametrize("case", CORPUS_CASES)
async def test_the_engine_s_hostile_saml_files_are_refused(
    client: httpx.AsyncClient, case: str
) -> None:
    make, reason = CORPUS[case]
    await _assert_refused(client, make(), reason, "invalid_adapter")


async def test_corrections_of_saml_transcripts_count_under_saml(
    client: httpx.AsyncClient, state: ServiceState, saml: SamlWeights
) -> None:
    frank = await create_user(client, "frank")
    await install_adapter(state, frank["id"], saml)
    truth = SENTENCES[1]
    served = await correction_metrics.transcribe(client, frank, truth)
    assert served.headers["x-adapter-id"] != "none"
    await correction_metrics.correct(client, frank, truth, served.headers["x-request-id"])

    errors, words = word_errors(truth, served.json()["text"])
    assert await correction_metrics.correction_counts(client) == {
        ("pqm_correction_words_total", "saml"): float(words),
        ("pqm_correction_word_errors_total", "saml"): float(errors),
    }


async def test_a_saml_adapter_that_goes_non_finite_is_quarantined(
    client: httpx.AsyncClient, state: ServiceState, saml: SamlWeights, wav: bytes
) -> None:
    """Straight into the store and the database (as a hostile row would be): imports refuse it."""
    grace = await create_user(client, "grace")
    as_grace = bearer(grace["api_key"])
    poisoned = await install_adapter(state, grace["id"], dataclasses.replace(saml, alpha=1e38))
    base = await transcribe(client, wav, ADMIN)

    answered = await transcribe(client, wav, as_grace)
    assert answered.headers["x-adapter-id"] == "none"
    assert answered.headers["x-adapter-fallback"] == "adapter_numeric_error"
    assert answered.json() == base.json()
    row = (await listed(client, grace["id"], as_grace))[poisoned]
    assert (row["status"], row["active"]) == ("quarantined", False)
