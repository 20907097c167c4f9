"""GET /metrics: Prometheus text with what an operator needs to watch, for the admin only."""

import re

import httpx

from app.engine.whisper import WhisperEngine
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes


def _value(text: str, sample: str) -> float:
    """The value of the sample line that starts with `sample` (name and labels)."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.MULTILINE)
    assert match is not None, f"{sample} missing from /metrics"
    return float(match.group(1))


def _total(text: str, name: str, label: str) -> float:
    """The sum of `name`'s samples that carry `label`."""
    pattern = rf"^{re.escape(name)}{{[^}}]*{re.escape(label)}[^}}]*}} (\S+)$"
    values = [float(value) for value in re.findall(pattern, text, flags=re.MULTILINE)]
    assert values, f"{name} with {label} missing from /metrics"
    return sum(values)


async def test_metrics_report_requests_batches_caches_and_jobs(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    user = await create_user(client, "metered")
    await install_adapter(state, user["id"], random_adapter(nf4_engine, 7))
    wav = to_bytes(speech_16k("Please call me back tomorrow morning."), 16_000)
    for headers in (bearer(user["api_key"]), bearer(user["api_key"]), ADMIN):
        response = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            headers=headers,
        )
        assert response.status_code == 200
    bad = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", b"not audio")},
        data={"model": "whisper-1"},
        headers=ADMIN,
    )
    assert bad.status_code == 400

    response = await client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _value(text, 'pqm_transcriptions_total{outcome="ok",personalised="True"}') == 2
    assert _value(text, 'pqm_transcriptions_total{outcome="ok",personalised="False"}') == 1
    route = 'route="/v1/audio/transcriptions"'
    assert _value(text, f'pqm_http_requests_total{{method="POST",{route},status="200"}}') == 3
    assert _value(text, f'pqm_http_requests_total{{method="POST",{route},status="400"}}') == 1
    assert _value(text, 'pqm_transcription_seconds_count{personalised="True"}') == 2
    assert _value(text, "pqm_batch_size_count") >= 3
    # One 30 s window per request, whatever temperature its decode ended at.
    assert _total(text, "pqm_decoded_windows_total", 'personalised="True"') == 2
    assert _total(text, "pqm_decoded_windows_total", 'personalised="False"') == 1
    assert _value(text, "pqm_queue_wait_seconds_count") == 3
    assert _value(text, 'pqm_adapter_cache_events_total{event="miss",tier="host"}') == 1
    assert _value(text, 'pqm_adapter_cache_events_total{event="hit",tier="host"}') == 1
    assert _value(text, 'pqm_adapter_cache_events_total{event="miss",tier="slots"}') >= 1
    assert _value(text, 'pqm_adapters_resident{tier="host"}') >= 1
    assert _value(text, 'pqm_adapters_resident{tier="slots"}') >= 1
    assert _value(text, 'pqm_adapter_cache_bytes{tier="slots"}') > 0
    assert _value(text, "pqm_adapter_load_seconds_count") == 1
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert _value(text, f'pqm_enrolment_jobs{{status="{status}"}}') == 0
    assert _value(text, "pqm_queue_pending") == 0

    assert_openai_error(await client.get("/metrics", headers=bearer(user["api_key"])), 403)
    assert_openai_error(await client.get("/metrics"), 401)
