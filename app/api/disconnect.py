import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from app.errors import ClientDisconnectedError

T = TypeVar("T")

POLL_INTERVAL_S = 0.1


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`, cancelling it if the client goes away first, so nobody computes for no one."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=POLL_INTERVAL_S)
        if not done and await request.is_disconnected():
            task.cancel()
            raise ClientDisconnectedError("The client disconnected before the result was ready.")
    return task.result()
