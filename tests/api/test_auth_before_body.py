"""Over a real socket: a request without a valid key is refused before its body is read."""

import asyncio
import contextlib
import re
from collections.abc import Iterator

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import UNAUTHENTICATED_BODY_BYTES
from app.config import Settings
from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN_KEY
from tests.support.live import LiveApp

UPLOAD_BYTES = 32 * 2**20
CHUNK = b"\0" * 2**20


class BodyCounter:
    """Wraps the service and counts the request-body bytes it takes in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


@pytest.fixture
def counted(settings: Settings, nf4_engine: WhisperEngine) -> Iterator[tuple[LiveApp, BodyCounter]]:
    counter = BodyCounter(create_app(settings, recognizer=nf4_engine))
    with LiveApp(counter) as server:
        yield server, counter


async def _request_head(
    port: int, path: str, authorization: str | None, *extra: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: multipart/form-data; boundary=xyz",
        *extra,
    ]
    if authorization is not None:
        head.append(f"Authorization: {authorization}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


PATHS = [
    "/v1/users/someone/enrolments",
    "/v1/users/someone/adapters",
    "/v1/audio/transcriptions",
    "/v1/users",
]
NOT_A_KEY = [None, "Bearer pqm-wrong-key", f"Basic {ADMIN_KEY}"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("authorization", NOT_A_KEY)
async def test_a_client_expecting_100_continue_is_refused_before_it_sends_the_body(
    counted: tuple[LiveApp, BodyCounter], path: str, authorization: str | None
) -> None:
    server, counter = counted
    reader, writer = await _request_head(
        server.port,
        path,
        authorization,
        f"Content-Length: {UPLOAD_BYTES}",
        "Expect: 100-continue",
    )

    status_line = await reader.readline()

    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert counter.body_bytes == 0


async def test_a_small_refused_body_leaves_the_connection_usable(
    counted: tuple[LiveApp, BodyCounter],
) -> None:
    server, counter = counted
    body = b"--xyz--\r\n" + b"\0" * 4096
    reader, writer = await _request_head(
        server.port, "/v1/audio/transcriptions", None, f"Content-Length: {len(body)}"
    )
    writer.write(body)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()

    first = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", first, re.IGNORECASE)
    assert length is not None, first
    await reader.readexactly(int(length[1]))
    second = await reader.readline()

    writer.close()
    assert first.startswith(b"HTTP/1.1 401 "), first
    assert b"connection: close" not in first.lower()
    assert second.startswith(b"HTTP/1.1 200 "), second
    assert counter.body_bytes == len(body)


async def test_a_large_unauthenticated_body_is_left_unread(
    counted: tuple[LiveApp, BodyCounter],
) -> None:
    """Without `Expect`, at most UNAUTHENTICATED_BODY_BYTES are taken in before the answer; the
    client sees the 401 or, when it was still sending, a reset."""
    server, counter = counted
    reader, writer = await _request_head(
        server.port, "/v1/users/someone/enrolments", None, "Transfer-Encoding: chunked"
    )
    with contextlib.suppress(ConnectionError):
        for _ in range(UPLOAD_BYTES // len(CHUNK)):
            writer.write(b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK))
            await writer.drain()
    with contextlib.suppress(ConnectionError):
        status_line = await reader.readline()
        assert status_line in (b"", b"HTTP/1.1 401 Unauthorized\r\n"), status_line

    writer.close()
    assert counter.body_bytes <= UNAUTHENTICATED_BODY_BYTES + len(CHUNK)
