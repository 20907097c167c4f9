"""A bounded queue in front of the model: work runs on one dedicated thread, in arrival order.

A model forward pass saturates the CPU cores by itself, so running requests one after another
(inside the model each uses all intra-op threads) beats running them side by side. The bound turns
overload into an immediate, explicit refusal instead of unbounded memory and latency.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from app.engine.errors import EngineError

__all__ = ["InferenceQueue", "QueueFullError"]

T = TypeVar("T")


class QueueFullError(EngineError):
    """More work is pending than the queue admits."""


class InferenceQueue:
    def __init__(self, max_pending: int, *, thread_name: str = "pqm-inference") -> None:
        self._max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def max_pending(self) -> int:
        return self._max_pending

    async def run(self, work: Callable[[], T]) -> T:
        """Runs `work` on the inference thread.

        Cancelling the awaiting task (e.g. because the client disconnected) withdraws work that
        has not started yet, so abandoned requests cost nothing. Work counts as pending until it
        has really finished or been withdrawn, not merely until its caller stopped waiting.
        """
        if self._pending >= self._max_pending:
            raise QueueFullError(f"{self._pending} transcriptions are already pending")
        loop = asyncio.get_running_loop()
        self._pending += 1
        future: Future[T] = self._executor.submit(work)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
