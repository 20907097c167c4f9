"""Waiting on a condition with a deadline, never on time alone."""

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], Awaitable[bool]], within_s: float, what: str = "the condition"
) -> None:
    """Returns once `check()` is true; fails when it is still false after `within_s`."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within_s} s")
        await asyncio.sleep(0.05)
