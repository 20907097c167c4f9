"""`InferenceQueue`: one inference thread, arrival order, a hard bound, cancellable waiting."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from app.engine.errors import EngineError
from app.engine.scheduler import InferenceQueue, QueueFullError

BLOCK_TIMEOUT_S = 10.0


@pytest.fixture
def queue() -> Iterator[InferenceQueue]:
    inference = InferenceQueue(max_pending=3, thread_name="pqm-test-inference")
    yield inference
    inference.shutdown()


class Gate:
    """A job that blocks the inference thread until `open()` (or a safety timeout)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def job(self) -> str:
        self.started.set()
        if not self.release.wait(BLOCK_TIMEOUT_S):
            raise TimeoutError("gate never opened")
        return "gate"

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, BLOCK_TIMEOUT_S)

    def open(self) -> None:
        self.release.set()


async def until_pending(queue: InferenceQueue, count: int) -> None:
    deadline = time.monotonic() + BLOCK_TIMEOUT_S
    while queue.pending != count:
        assert time.monotonic() < deadline, f"pending stayed {queue.pending}, wanted {count}"
        await asyncio.sleep(0.001)


async def test_runs_work_on_one_thread_in_order() -> None:
    queue = InferenceQueue(max_pending=20, thread_name="pqm-test-inference")
    calls: list[tuple[int, int, str]] = []

    def work(index: int) -> Callable[[], int]:
        def run() -> int:
            thread = threading.current_thread()
            calls.append((index, thread.ident or 0, thread.name))
            time.sleep(0.002)
            return index * 10

        return run

    try:
        results = await asyncio.gather(*(queue.run(work(index)) for index in range(12)))
    finally:
        queue.shutdown()

    assert results == [index * 10 for index in range(12)]
    assert [index for index, _, _ in calls] == list(range(12))
    assert len({ident for _, ident, _ in calls}) == 1, "all work shares one thread"
    assert calls[0][1] != threading.main_thread().ident
    assert calls[0][2].startswith("pqm-test-inference")


async def test_work_never_overlaps(queue: InferenceQueue) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.005)
        with lock:
            running -= 1

    for _ in range(3):
        await asyncio.gather(*(queue.run(work) for _ in range(3)))

    assert most == 1


async def test_full_queue_refuses_immediately(queue: InferenceQueue) -> None:
    gate = Gate()
    waiting: list[asyncio.Task[str]] = []
    blocked = asyncio.create_task(queue.run(gate.job))
    try:
        await gate.wait_started()
        waiting += [asyncio.create_task(queue.run(lambda: "queued")) for _ in range(2)]
        await until_pending(queue, queue.max_pending)

        started = time.monotonic()
        with pytest.raises(QueueFullError):
            await queue.run(lambda: "refused")
        assert time.monotonic() - started < 0.5
        assert issubclass(QueueFullError, EngineError)
        assert queue.pending == queue.max_pending, "a refusal must not count as pending"
    finally:
        gate.open()
    assert await blocked == "gate"
    assert await asyncio.gather(*waiting) == ["queued", "queued"]
    assert queue.pending == 0

    assert await queue.run(lambda: "admitted again") == "admitted again"


async def test_cancelling_a_waiting_task_withdraws_its_work(queue: InferenceQueue) -> None:
    gate = Gate()
    ran: list[str] = []
    blocked = asyncio.create_task(queue.run(gate.job))
    try:
        await gate.wait_started()
        abandoned = asyncio.create_task(queue.run(lambda: ran.append("abandoned")))
        kept = asyncio.create_task(queue.run(lambda: ran.append("kept")))
        await until_pending(queue, 3)

        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert queue.pending == 2
    finally:
        gate.open()
    assert await blocked == "gate"
    await kept
    # Anything still queued would have run before this.
    await queue.run(lambda: None)

    assert ran == ["kept"]
    assert queue.pending == 0


async def test_pending_returns_to_zero_after_success(queue: InferenceQueue) -> None:
    assert queue.pending == 0
    seen: list[int] = []

    await asyncio.gather(*(queue.run(lambda: seen.append(queue.pending)) for _ in range(3)))

    assert len(seen) == 3
    assert all(1 <= count <= 3 for count in seen), "each running job counts as pending"
    assert queue.pending == 0


async def test_exceptions_propagate_and_free_their_slot(queue: InferenceQueue) -> None:
    def boom() -> None:
        raise ValueError("model exploded")

    for _ in range(queue.max_pending + 2):
        with pytest.raises(ValueError, match="model exploded"):
            await queue.run(boom)
    assert queue.pending == 0

    results = await asyncio.gather(
        queue.run(boom), queue.run(lambda: "fine"), queue.run(boom), return_exceptions=True
    )

    assert isinstance(results[0], ValueError)
    assert results[1] == "fine"
    assert isinstance(results[2], ValueError)
    assert queue.pending == 0
    assert await queue.run(lambda: 42) == 42
