"""ASGI middleware: request ids, access logs and the last-resort 500; the body size limit."""

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import UploadTooLarge, error_body, server_error_body
from app.logging import current_request_id
from app.metrics import Metrics

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


class AccessLogMiddleware:
    """The outermost layer: gives each request an id, logs and counts it, and answers any
    exception nothing inside handled.

    The id is sent as `X-Request-Id` on every response, written in the access line and set on
    every log record made while the request runs. An unhandled exception becomes a JSON 500
    carrying the id; it is not re-raised, because the server drops the connection of a request
    whose application raised, even after a complete response.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
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
        except Exception:
            logger.exception("unhandled error", extra={"path": scope["path"]})
            # Once a response has started it cannot be replaced; left incomplete, the server
            # closes the connection, which is all a client can be told then.
            if status == 0:
                await send_json(send_with_id, 500, server_error_body(request_id))
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)
            current_request_id.reset(context)

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
