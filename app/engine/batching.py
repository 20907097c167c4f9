"""Dynamic batching in front of the shared model: concurrent requests are decoded together.

Requests queue up (bounded: beyond `max_pending` requests, or beyond `max_pending_audio_s`
seconds of audio, they are refused at once). One inference thread
admits up to `max_batch_size` of them, waiting at most `max_wait_s` after the first for others
to join, and advances all admitted requests one window per round, each with its own adapter.
A request that finishes leaves at once; newcomers join at the next round boundary. A model
forward pass saturates the CPU cores by itself, so one thread running batches beats several
running requests side by side.

The inference thread is also the only thread that computes with torch (`call` runs other
engine work there, between rounds). With OpenMP (torch's CPU threading), every thread that
runs a parallel region keeps a pool of workers for the life of the thread; once the process
holds more such workers than there are cores, libgomp stops letting idle workers spin, and
every one of the thousands of small parallel regions of a decode pays a wake-up: measured here
as a 50% slower transcription. One computing thread keeps the pool within the cores.
"""

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from app.engine.adaptation.residency import AnyAdapter
from app.engine.audio import SAMPLE_RATE, DecodedAudio
from app.engine.errors import EngineError
from app.engine.types import Transcription, TranscriptionOptions

__all__ = [
    "BatchObserver",
    "BatchScheduler",
    "BatchingEngine",
    "QueueFullError",
]

logger = logging.getLogger(__name__)


class QueueFullError(EngineError):
    """More work is pending than the queue admits."""


class BatchTask(Protocol):
    @property
    def done(self) -> bool: ...

    def outcome(self) -> Transcription: ...


TaskT = TypeVar("TaskT", bound=BatchTask)
T = TypeVar("T")
Audio = np.ndarray | DecodedAudio
"""16 kHz mono float32 samples, in memory or spooled (`audio.decode_audio_spooled`)."""


class BatchingEngine(Protocol[TaskT]):
    """What the scheduler needs of an engine (`WhisperEngine` is one)."""

    def open(
        self,
        audio: Audio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> TaskT | None: ...

    def run_round(self, tasks: list[TaskT]) -> None: ...

    def tidy(self, *, idle: bool) -> None:
        """Called on the inference thread between rounds now and then (`idle` False), and once
        nothing has run for a while (`idle` True): give back free memory, and when idle also
        what is only kept to be fast while busy (compute weights)."""
        ...


class BatchObserver(Protocol):
    def batch(self, size: int) -> None: ...

    def started(self, waited_s: float) -> None: ...


@dataclass(slots=True)
class _Request:
    audio: Audio
    options: TranscriptionOptions
    adapter: AnyAdapter | None
    future: Future[Transcription]
    submitted: float = field(default_factory=time.perf_counter)
    started: bool = False
    """Marked running (it can no longer be withdrawn); it may still wait for an adapter slot."""


@dataclass(slots=True)
class _Running(Generic[TaskT]):
    request: _Request
    task: TaskT


class BatchScheduler(Generic[TaskT]):
    def __init__(
        self,
        engine: BatchingEngine[TaskT],
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_pending: int = 32,
        max_pending_audio_s: float | None = None,
        observer: BatchObserver | None = None,
        thread_name: str = "pqm-inference",
        idle_after_s: float = 1.0,
        tidy_every_s: float = 0.25,
    ) -> None:
        if max_batch_size < 1 or max_pending < 1:
            raise ValueError("max_batch_size and max_pending must be >= 1")
        if max_pending_audio_s is not None and not max_pending_audio_s > 0:
            raise ValueError("max_pending_audio_s must be positive")
        self._engine = engine
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._max_pending = max_pending
        self._max_pending_samples = (
            None if max_pending_audio_s is None else round(max_pending_audio_s * SAMPLE_RATE)
        )
        self._observer = observer
        self._idle_after = idle_after_s
        self._tidy_every = tidy_every_s
        self._tidied = time.monotonic()
        self._waiting: deque[_Request] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._pending = 0
        self._pending_samples = 0
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=thread_name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        return self._pending

    @property
    def max_pending(self) -> int:
        return self._max_pending

    @property
    def pending_audio_s(self) -> float:
        """Seconds of audio in the requests waiting or running."""
        return self._pending_samples / SAMPLE_RATE

    async def transcribe(
        self,
        audio: Audio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> Transcription:
        """Queues a request and waits for its transcript.

        Cancelling the awaiting task (e.g. because the client disconnected) withdraws a request
        that has not started, so abandoned requests cost nothing. A request counts as pending
        until it has really finished or been withdrawn, not merely until its caller stopped
        waiting.
        """
        future = self.submit(audio, options, adapter)
        loop = asyncio.get_running_loop()
        return await asyncio.wrap_future(future, loop=loop)

    def submit(
        self,
        audio: Audio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> Future[Transcription]:
        """Queues a request; raises `QueueFullError` when `max_pending` requests are pending, or
        when its audio would take the pending audio over `max_pending_audio_s` (a request alone
        is always admitted: its length is bounded where it is decoded)."""
        samples = len(audio)
        with self._lock:
            if self._stopping:
                raise QueueFullError("the inference queue is shutting down")
            if self._pending >= self._max_pending:
                raise QueueFullError(f"{self._pending} transcriptions are already pending")
            limit = self._max_pending_samples
            if self._pending and limit is not None and self._pending_samples + samples > limit:
                raise QueueFullError(f"{self.pending_audio_s:.0f} s of audio are already pending")
            future: Future[Transcription] = Future()
            self._pending += 1
            self._pending_samples += samples
            future.add_done_callback(functools.partial(self._release, samples))
            self._waiting.append(_Request(audio, options, adapter, future))
            self._lock.notify()
            return future

    def call(self, function: Callable[[], T]) -> Future[T]:
        """Runs `function` on the inference thread, between rounds (see the module docstring:
        engine work that computes with torch belongs there)."""
        future: Future[T] = Future()
        with self._lock:
            if self._stopping:
                raise QueueFullError("the inference queue is shutting down")
            self._calls.append((function, future))
            self._lock.notify()
        return future

    async def run(self, function: Callable[[], T]) -> T:
        """`call`, awaited."""
        return await asyncio.wrap_future(self.call(function), loop=asyncio.get_running_loop())

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                function, future = self._calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def _release(self, samples: int, _: Future[Transcription]) -> None:
        with self._lock:
            self._pending -= 1
            self._pending_samples -= samples

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            for request in self._waiting:
                request.future.cancel()
            self._waiting.clear()
            for _, future in self._calls:
                future.cancel()
            self._calls.clear()
            self._lock.notify()
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        running: list[_Running[TaskT]] = []
        while True:
            if not running and not self._wait_for_work():
                return
            try:
                self._run_calls()
                running.extend(self._admit(len(running)))
                if not running:  # every adapter slot is pinned elsewhere: let it drain
                    time.sleep(0.001)
                if self._stopping:
                    self._fail(running, QueueFullError("the inference queue is shutting down"))
                    return
                if running:
                    self._round(running)
                    running = self._settle(running)
                if time.monotonic() - self._tidied > self._tidy_every:
                    self._tidy(idle=False)
            except Exception as exc:  # a scheduler bug must not leave requests waiting forever
                logger.exception("inference round failed", extra={"batch": len(running)})
                self._fail(running, exc)
                running = []

    def _tidy(self, *, idle: bool) -> None:
        self._tidied = time.monotonic()
        try:
            self._engine.tidy(idle=idle)
        except Exception:
            logger.exception("engine tidy-up failed")

    def _has_work(self) -> bool:
        return bool(self._waiting or self._calls or self._stopping)

    @staticmethod
    def _fail(running: list[_Running[TaskT]], error: BaseException) -> None:
        for item in running:
            if not item.request.future.done():
                item.request.future.set_exception(error)

    def _wait_for_work(self) -> bool:
        """Blocks until a request arrives, then gives others `max_wait_s` to join it. Lets the
        engine tidy up once nothing has arrived for `idle_after_s`."""
        with self._lock:
            if not self._lock.wait_for(self._has_work, timeout=self._idle_after):
                self._lock.release()
                try:
                    self._tidy(idle=True)
                finally:
                    self._lock.acquire()
            self._lock.wait_for(self._has_work)
            self._tidied = time.monotonic()  # the busy spell starts now
            if self._stopping:
                return False
            if not self._waiting:
                return True  # only calls to run
            deadline = self._waiting[0].submitted + self._max_wait
            while len(self._waiting) < self._max_batch and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return True

    def _admit(self, running: int) -> list[_Running[TaskT]]:
        admitted: list[_Running[TaskT]] = []
        while running + len(admitted) < self._max_batch:
            with self._lock:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            if not request.started:
                if not request.future.set_running_or_notify_cancel():
                    continue  # withdrawn before it started
                request.started = True
                if self._observer is not None:
                    self._observer.started(time.perf_counter() - request.submitted)
            try:
                task = self._engine.open(request.audio, request.options, request.adapter)
            except Exception as exc:
                request.future.set_exception(exc)
                continue
            if task is None:  # every adapter slot is busy: retry after this round
                with self._lock:
                    self._waiting.appendleft(request)
                break
            admitted.append(_Running(request, task))
        return admitted

    def _round(self, running: list[_Running[TaskT]]) -> None:
        unfinished = [item.task for item in running if not item.task.done]
        if not unfinished:
            return
        if self._observer is not None:
            self._observer.batch(len(unfinished))
        self._engine.run_round(unfinished)

    @staticmethod
    def _settle(running: list[_Running[TaskT]]) -> list[_Running[TaskT]]:
        still: list[_Running[TaskT]] = []
        for item in running:
            if not item.task.done:
                still.append(item)
                continue
            try:
                item.request.future.set_result(item.task.outcome())
            except Exception as exc:
                item.request.future.set_exception(exc)
        return still
