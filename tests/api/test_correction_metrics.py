"""A correction naming the transcription it corrects (its X-Request-Id) counts, in /metrics, the
words and the word errors of what was served, per method (base, lora)."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.engine.text import word_errors
from app.engine.whisper import WhisperEngine
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.speech import SENTENCES, wav_of


async def transcribe(
    client: httpx.AsyncClient, user: dict[str, str], text: str, **fields: str
) -> httpx.Response:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_of(text))},
        data={"model": "whisper-1", **fields},
        headers=bearer(user["api_key"]),
    )
    assert response.status_code == 200, response.text
    return response


async def correct(
    client: httpx.AsyncClient, user: dict[str, str], text: str, request_id: str
) -> None:
    response = await client.post(
        f"/v1/users/{user['id']}/recordings",
        files={"file": ("a.wav", wav_of(text))},
        data={"transcript": text, "request_id": request_id},
        headers=bearer(user["api_key"]),
    )
    assert response.status_code == 201, response.text


async def correction_counts(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    text = (await client.get("/metrics", headers=ADMIN)).text
    return {
        (sample.name, sample.labels["method"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("pqm_correction_") and sample.name.endswith("_total")
    }


async def test_corrections_count_word_errors_per_method(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    truth = SENTENCES[1]
    base = await transcribe(client, alice, truth)
    assert base.headers["x-adapter-id"] == "none"
    await install_adapter(state, alice["id"], random_adapter(nf4_engine, 1))
    adapted = await transcribe(client, alice, truth)
    assert adapted.headers["x-adapter-id"] != "none"
    forced_base = await transcribe(client, alice, truth, personalise="false")
    bobs = await transcribe(client, bob, truth)

    for served in (base, adapted, forced_base):
        await correct(client, alice, truth, served.headers["x-request-id"])
    await correct(client, alice, truth, base.headers["x-request-id"])  # counted once
    await correct(client, alice, truth, bobs.headers["x-request-id"])  # not Alice's
    await correct(client, alice, truth, "never-served")

    base_errors = [word_errors(truth, r.json()["text"]) for r in (base, forced_base)]
    lora_errors, words = word_errors(truth, adapted.json()["text"])
    assert await correction_counts(client) == {
        ("pqm_correction_words_total", "base"): 2.0 * words,
        ("pqm_correction_word_errors_total", "base"): float(sum(e for e, _ in base_errors)),
        ("pqm_correction_words_total", "lora"): float(words),
        ("pqm_correction_word_errors_total", "lora"): float(lora_errors),
    }
