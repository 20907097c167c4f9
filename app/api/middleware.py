"""ASGI middleware: request ids, access logs and the last-resort 500; authentication before
the body is read; the body size limit."""

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import PRINCIPAL_SCOPE_KEY, authenticate_header
from app.db.session import database_unreachable
from app.errors import (
    AppError,
    DatabaseUnavailableError,
    UploadTooLarge,
    app_error_body,
    error_body,
    server_error_body,
)
from app.logging import current_request_id
from app.metrics import Metrics
from app.state import ServiceState

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("app.access")


class BodySizeLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413 without buffering them first.

    A declared Content-Length over the limit is refused before reading anything; otherwise the
    bytes are counted as they arrive (this covers chunked uploads with no Content-Length).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        overrides: Sequence[tuple[str, int]] = (),
    ) -> None:
        """`overrides`: (path regex, limit) pairs for routes that take larger bodies."""
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = [(re.compile(pattern), limit) for pattern, limit in overrides]

    def _limit(self, path: str) -> int:
        for pattern, limit in self.overrides:
            if pattern.fullmatch(path):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI lets only HTTP exceptions out of body parsing; the error handler
                    # renders it in the OpenAI shape.
                    raise UploadTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


UNAUTHENTICATED_BODY_BYTES = 2**20
"""How much of a refused request's body is read (and dropped) so that its 401 reaches the client
on an intact connection. Past it the connection is closed with the rest unread, and a client
still sending may see a reset instead of the 401; clients that send `Expect: 100-continue`
(curl does for bodies over 1 MiB) are answered before they send any of it."""


class AuthenticateFirstMiddleware:
    """Authenticates every request that carries a body before anything reads the body.

    FastAPI parses a route's body before it solves the route's dependencies, so the principal
    dependency alone would refuse an unauthenticated upload only after reading all of it. Every
    route that takes a body needs a key, so a body is accepted from no one else; a route that
    must take one without a key would need an exemption here. The principal found is left in the
    scope for the dependency; requests without a body are authenticated by the dependency.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        state: ServiceState = scope["app"].state.pqm
        headers = Headers(scope=scope)
        try:
            principal = await authenticate_header(state, headers.get("authorization", ""))
        except AppError as exc:
            # Nothing is read for a client waiting for 100 Continue: it has sent no body.
            waiting = headers.get("expect", "").lower() == "100-continue"
            ended = not waiting and await _discard_body(receive, UNAUTHENTICATED_BODY_BYTES)
            await send_json(
                send, exc.status_code, app_error_body(exc), headers=exc.headers, close=not ended
            )
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)


async def _discard_body(receive: Receive, max_bytes: int) -> bool:
    """Reads and drops the request body; False once it passes `max_bytes` or the client left."""
    received = 0
    while received <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return False
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return received <= max_bytes
    return False


def _has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return "transfer-encoding" in headers or (_content_length(scope) or 0) > 0


class AccessLogMiddleware:
    """The outermost layer: gives each request an id, logs and counts it, and answers any
    exception nothing inside handled.

    The id is the request's own `X-Request-Id` when it sends a well-formed one (a proxy in
    front passes its id on, so one id names the request in both logs), else a new one. It is
    sent as `X-Request-Id` on every response, written in the access line and set on every log
    record made while the request runs. A database that cannot be reached becomes a 503 with
    `Retry-After` (it passes; the client should come back); any other unhandled exception a
    JSON 500 carrying the id. Neither is re-raised, because the server drops the connection of
    a request whose application raised, even after a complete response.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, retry_after_s: int) -> None:
        self.app = app
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _offered_request_id(scope) or uuid.uuid4().hex[:16]
        context = current_request_id.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Once a response has started it cannot be replaced; left incomplete, the server
            # closes the connection, which is all a client can be told then.
            if database_unreachable(exc):
                logger.warning("database unreachable", extra={"path": scope["path"]})
                if status == 0:
                    await self._send_unavailable(send_with_id)
            else:
                logger.exception("unhandled error", extra={"path": scope["path"]})
                if status == 0:
                    await send_json(send_with_id, 500, server_error_body(request_id))
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)
            current_request_id.reset(context)

    async def _send_unavailable(self, send: Send) -> None:
        error = DatabaseUnavailableError(
            "The service cannot reach its database right now; try again shortly.",
            headers={"Retry-After": str(self.retry_after_s)},
        )
        await send_json(send, error.status_code, app_error_body(error), headers=error.headers)

    def _record(self, scope: Scope, request_id: str, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()
        self.metrics.http_latency.labels(scope["method"], route).observe(elapsed)
        access_logger.info(
            "request",
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
            },
        )


REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
"""What an offered `X-Request-Id` may be: long enough to be unique, nothing a log line or a
header could be confused by."""


def _offered_request_id(scope: Scope) -> str | None:
    offered = Headers(scope=scope).get("x-request-id", "")
    return offered if REQUEST_ID.fullmatch(offered) else None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, limit: int) -> None:
    body = error_body(
        f"Request body exceeds the {limit} byte limit.",
        "invalid_request_error",
        code="file_too_large",
    )
    await send_json(send, 413, body, close=True)


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    close: bool = False,
) -> None:
    """Sends a whole JSON response; `close` for one sent before the request body was read."""
    content = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    if close:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})
