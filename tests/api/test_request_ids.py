"""Over a real socket: every response carries `X-Request-Id`, log records carry it too, and an
unexpected failure is a JSON 500 that leaves the keep-alive connection usable."""

import http.client
import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.engine.whisper import WhisperEngine
from app.logging import configure_logging
from app.main import create_app
from app.services import users as users_service
from tests.conftest import ADMIN, ADMIN_KEY
from tests.support.audio import speech_16k, to_bytes
from tests.support.live import LiveApp

REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def _fail(*_: object) -> None:
    raise RuntimeError("a bug nobody anticipated")


@pytest.fixture
def live(settings: Settings, nf4_engine: WhisperEngine) -> Iterator[LiveApp]:
    with LiveApp(create_app(settings, recognizer=nf4_engine)) as server:
        yield server


class OneConnection:
    """Requests over one keep-alive connection; it fails if the socket is ever replaced."""

    def __init__(self, port: int) -> None:
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._http.connect()
        self.socket = self._http.sock

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._http.sock is self.socket, "the connection was dropped"
        self._http.request(method, path, body=body, headers=headers or {})
        response = self._http.getresponse()
        content = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, content

    def send_headers_only(self, method: str, path: str, headers: dict[str, str]) -> int:
        """Announces a body and sends none: for refusals made from the headers alone."""
        self._http.putrequest(method, path)
        for name, value in headers.items():
            self._http.putheader(name, value)
        self._http.endheaders()
        response = self._http.getresponse()
        assert REQUEST_ID.fullmatch(response.getheader("x-request-id") or "")
        response.read()
        return response.status

    def close(self) -> None:
        self._http.close()


def test_server_error_is_json_500_and_the_connection_serves_the_next_request(
    live: LiveApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(users_service, "get_speaker", _fail)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    json_admin = {**admin, "Content-Type": "application/json"}
    connection = OneConnection(live.port)
    exchanges = [
        (200, "GET", "/healthz", None, {}),
        (401, "GET", "/v1/models", None, {}),
        (422, "POST", "/v1/users", b'{"name": ""}', json_admin),
        (500, "GET", "/v1/users/0123", None, admin),
        (200, "GET", "/v1/models", None, admin),
        (500, "GET", "/v1/users/0123", None, admin),
        (404, "GET", "/no/such/route", None, {}),
        (405, "DELETE", "/healthz", None, {}),
        (201, "POST", "/v1/users", b'{"name": "alice"}', json_admin),
    ]
    ids = []
    for status, method, path, body, headers in exchanges:
        got, response_headers, content = connection.request(method, path, body, headers)
        assert got == status, (path, content)
        request_id = response_headers["x-request-id"]
        assert REQUEST_ID.fullmatch(request_id)
        ids.append(request_id)
        if status == 500:
            error = json.loads(content)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "server_error"
            assert request_id in error["message"]
            assert "nobody anticipated" not in error["message"]
    assert len(set(ids)) == len(ids)
    too_large = {**admin, "Content-Type": "audio/wav", "Content-Length": str(26 * 2**20)}
    assert connection.send_headers_only("POST", "/v1/audio/transcriptions", too_large) == 413
    connection.close()


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The service's own log set-up (JSON lines on stderr, caught here), restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("info", json_lines=True)

    def records() -> list[dict[str, Any]]:
        lines = stderr.getvalue().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    yield records
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_records_of_a_request_carry_its_id(
    live: LiveApp,
    json_logs: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wav = to_bytes(speech_16k("The quick brown fox.", voice="en-us", speed=120), 16_000)
    with httpx.Client(base_url=live.url, timeout=120) as client:
        transcribed = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            headers=ADMIN,
        )
        assert transcribed.status_code == 200
        monkeypatch.setattr(users_service, "get_speaker", _fail)
        failed = client.get("/v1/users/0123", headers=ADMIN)
        assert failed.status_code == 500
    transcribed_id = transcribed.headers["x-request-id"]
    failed_id = failed.headers["x-request-id"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in json_logs():
        by_id.setdefault(record.get("request_id", ""), []).append(record)

    assert [r["msg"] for r in by_id[transcribed_id]] == ["transcribed", "request"]
    assert by_id[transcribed_id][-1]["status"] == 200
    unhandled, access = by_id[failed_id]
    assert unhandled["msg"] == "unhandled error"
    assert "a bug nobody anticipated" in unhandled["exc"]
    assert (access["msg"], access["status"]) == ("request", 500)
