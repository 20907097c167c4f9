"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis).

The app runs in-process as an ASGI application, on the real tiny.en and a real SQLite database,
its lifespan started once for the module. Each generated request, schema-valid or not, is sent
with the admin key or a user's key in turn, its path aimed at existing resources half of the
time, so that operations are reached beyond 401 and 404. Checked: no 5xx, and status code,
content type, headers and body as the schema declares them (every error response included);
invalid input is refused. Examples are bounded and derandomised: the same requests on every run
of the same code (Hypothesis also draws on constants it finds in the code).
"""

import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.schemas import PRINTABLE_NAME_PATTERN, UserCreate
from app.engine.adaptation.lora.file import dump_adapter
from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN, ADMIN_KEY, bearer, make_settings
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k, to_bytes

MAX_EXAMPLES = 100
"""Per operation and generation mode (valid and invalid input): about a minute for the module
on a 2-core machine, most of it real decoding."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
ACCEPTED_FOR_VALID_INPUT = ["2xx", "400", "401", "403", "404", "409", "413", "503"]
"""What a request the schema calls valid may get: 400 is a refusal of content no schema can
describe (audio that does not decode, an adapter file out of bounds); never 422, which this
service answers only for input outside the schema."""
FuzzCase = schemathesis.Case[Any]  # generic in the operation type, which the test never reads
ENROLMENT_SENTENCES = ["Good morning to you.", "The train is late.", "Please sit down."] * 2


@dataclass(frozen=True)
class FuzzTarget:
    client: asgi.ASGIClient
    """Reaches the app in-process; its lifespan runs while the module's tests do."""
    alice_key: str
    existing: dict[str, str]
    """Path parameter name -> an id that exists (Alice's user, adapter, enrolment job,
    recording and invite link)."""
    doomed_user_id: str
    """Bob, whom `DELETE /v1/users/{user_id}` may delete (and whose key `POST .../key` may
    rotate) without starving the other operations."""
    recordings: list[bytes]
    """Real speech, one recording per enrolment sentence."""
    adapter_file: bytes
    """A valid adapter for the served model."""


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> Iterator[FuzzTarget]:
    settings_ = make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4},
    )
    app = create_app(settings_, recognizer=nf4_engine)
    try:
        # FastAPI types its ASGI callable with mutable mappings, schemathesis with dicts.
        with asgi.get_client(cast("asgi.ASGIApp", app)) as client:
            yield _populated(client, nf4_engine)
    finally:
        asgi.shutdown_lifespans()


def _populated(client: asgi.ASGIClient, engine: WhisperEngine) -> FuzzTarget:
    alice = _created(client.post("/v1/users", json={"name": "alice"}, headers=ADMIN))
    bob = _created(client.post("/v1/users", json={"name": "bob"}, headers=ADMIN))
    as_alice = bearer(alice["api_key"])
    adapter_file = dump_adapter(random_adapter(engine, 5))
    recordings = [to_bytes(speech_16k(text), 16_000) for text in ENROLMENT_SENTENCES]
    adapter = _created(
        client.post(
            f"/v1/users/{alice['id']}/adapters",
            files={"file": ("a.safetensors", adapter_file)},
            headers=as_alice,
        )
    )
    job = _created(
        client.post(
            f"/v1/users/{alice['id']}/enrolments",
            files=[("files", (f"{i}.wav", wav)) for i, wav in enumerate(recordings)],
            data={"transcripts": ENROLMENT_SENTENCES},
            headers=as_alice,
        )
    )
    recording = _created(
        client.post(
            f"/v1/users/{alice['id']}/recordings",
            files={"file": ("c.wav", recordings[0])},
            data={"transcript": ENROLMENT_SENTENCES[0]},
            headers=as_alice,
        )
    )
    link = _created(client.post(f"/v1/users/{alice['id']}/links", json={}, headers=ADMIN))
    return FuzzTarget(
        client=client,
        alice_key=alice["api_key"],
        existing={
            "user_id": alice["id"],
            "adapter_id": adapter["id"],
            "job_id": job["id"],
            "recording_id": recording["id"],
            "link_id": link["id"],
        },
        doomed_user_id=bob["id"],
        recordings=recordings,
        adapter_file=adapter_file,
    )


def _created(response: requests.Response) -> dict[str, str]:
    assert response.status_code in (201, 202), response.text
    body: dict[str, str] = response.json()
    return body


def _served_schema() -> dict[str, object]:
    """The schema the service publishes at /openapi.json (building the app starts nothing)."""
    schema: dict[str, object] = create_app(make_settings(Path("unused"))).openapi()
    return schema


# Loaded at import, so that each operation is a test of its own.
fuzzed = schemathesis.openapi.from_dict(
    _served_schema(),
    config=SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_FOR_VALID_INPUT}}}
    ),
)
_keys = itertools.cycle(["admin", "alice"])
_real_content = itertools.cycle([True, False])


def _aim_at_existing(case: FuzzCase, target: FuzzTarget) -> None:
    """Replaces generated ids by existing ones for about half of the cases (deterministically)."""
    parameters = case.path_parameters or {}
    for name, value in parameters.items():
        if name not in target.existing or len(str(value)) % 2:
            continue
        doomed = (case.method.upper(), case.path) in {
            ("DELETE", "/v1/users/{user_id}"),
            ("POST", "/v1/users/{user_id}/key"),
        }
        if doomed:
            parameters[name] = target.doomed_user_id
        else:
            parameters[name] = target.existing[name]


def _aim_at_real_content(case: FuzzCase, target: FuzzTarget) -> None:
    """Puts real speech (or a valid adapter file) in place of the generated bytes of every other
    valid upload, so that requests reach decoding and import, not only the refusal of bytes
    that decode to nothing. Invalid cases are left as generated: filling them in could make
    them valid."""
    meta = case.meta
    if not (meta and meta.generation.mode.is_positive and isinstance(case.body, dict)):
        return
    body: dict[str, Any] = case.body  # a multipart form: its files may be bytes
    if not next(_real_content):
        return
    if "model" in body:  # a transcription
        body.update(file=target.recordings[0], model="whisper-1")
    elif "transcripts" in body:  # an enrolment
        body["files"] = list(
            itertools.islice(itertools.cycle(target.recordings), len(body.get("files", [])))
        )
    elif "transcript" in body:  # a recording
        body["file"] = target.recordings[0]
    elif "file" in body:  # an adapter's import
        body["file"] = target.adapter_file


@pytest.mark.slow
@fuzzed.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_its_schema_says(case: FuzzCase, target: FuzzTarget) -> None:
    _aim_at_existing(case, target)
    _aim_at_real_content(case, target)
    key = ADMIN_KEY if next(_keys) == "admin" else target.alice_key
    case.call_and_validate(session=target.client, headers=bearer(key), checks=CHECKS, timeout=120)


def _accepted_as_name(text: str) -> bool:
    try:
        UserCreate(name=text)
    except ValidationError:
        return False
    return True


def test_the_name_pattern_says_what_the_name_rule_accepts() -> None:
    """The schema's pattern for user names (it informs; the validator decides) agrees with the
    validator on every character, alone and after a letter, but the lone surrogates it leaves
    out."""
    pattern = re.compile(PRINTABLE_NAME_PATTERN)
    disagreements = [
        text
        for code in range(sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF
        for text in (chr(code), f"a{chr(code)}")
        if (pattern.fullmatch(text) is not None) != _accepted_as_name(text)
    ]
    assert disagreements == []


@pytest.mark.parametrize("temperature", ["1e-40", "5e-324", "1e-7"])
async def test_a_tiny_temperature_samples_as_greedy_decoding_picks(
    client: httpx.AsyncClient, temperature: str
) -> None:
    """Found by the fuzzer: logits / 1e-40 overflowed, and the sampling's NaN was a 500."""
    wav = to_bytes(speech_16k("Hello."), 16_000)
    answers = [
        await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1", "temperature": value},
            headers=ADMIN,
        )
        for value in (temperature, "0")
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
