"""`BatchScheduler`: batches concurrent requests, lets finished ones leave, bounds the queue."""

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from app.engine.adaptation.residency import AnyAdapter
from app.engine.audio import SAMPLE_RATE, DecodedAudio
from app.engine.batching import BatchScheduler, QueueFullError
from app.engine.types import Transcription, TranscriptionOptions

OPTIONS = TranscriptionOptions()


@dataclass
class FakeTask:
    name: str
    rounds_left: int
    fail_in_round: bool = False
    result: Transcription | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def outcome(self) -> Transcription:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class FakeEngine:
    """Each request's audio encodes its name (its length) and how many rounds it needs."""

    round_s: float = 0.005
    rounds: list[list[str]] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    free_slots: int = 1_000
    tidies: int = 0
    idle_tidies: int = 0

    def open(
        self,
        audio: np.ndarray | DecodedAudio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> FakeTask | None:
        if isinstance(audio, DecodedAudio):
            audio = audio.read(0, len(audio))
        name = f"r{len(audio)}"
        if name.startswith("r9"):
            raise ValueError("cannot open r9*")
        if self.free_slots <= 0:
            return None
        self.free_slots -= 1
        self.opened.append(name)
        rounds = int(audio[0]) if len(audio) else 1
        return FakeTask(name, rounds, fail_in_round=name == "r7")

    def tidy(self, *, idle: bool) -> None:
        self.tidies += 1
        self.idle_tidies += idle

    def run_round(self, tasks: list[FakeTask]) -> None:
        self.gate.wait(10)
        self.rounds.append([task.name for task in tasks])
        time.sleep(self.round_s)
        for task in tasks:
            if task.fail_in_round:
                task.error = RuntimeError("decode failed")
                continue
            task.rounds_left -= 1
            if task.rounds_left == 0:
                task.result = Transcription(text=task.name, language="en", duration=0.0)
                self.free_slots += 1


def request(length: int, rounds: int = 1) -> np.ndarray:
    return np.full(length, rounds, dtype=np.float32)


@dataclass
class Observer:
    sizes: list[int] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def batch(self, size: int) -> None:
        self.sizes.append(size)

    def started(self, waited_s: float) -> None:
        self.waits.append(waited_s)


@pytest.fixture
def engine() -> FakeEngine:
    fake = FakeEngine()
    fake.gate.set()
    return fake


@pytest.fixture
def scheduler(engine: FakeEngine) -> Iterator[BatchScheduler[FakeTask]]:
    batches = BatchScheduler(engine, max_batch_size=4, max_wait_s=0.05, max_pending=8)
    yield batches
    batches.shutdown()


async def test_concurrent_requests_share_a_round(
    engine: FakeEngine, scheduler: BatchScheduler[FakeTask]
) -> None:
    results = await asyncio.gather(*(scheduler.transcribe(request(n), OPTIONS) for n in (1, 2, 3)))

    assert [r.text for r in results] == ["r1", "r2", "r3"]
    assert engine.rounds == [["r1", "r2", "r3"]]
    assert scheduler.pending == 0


async def test_batches_are_capped_and_the_rest_join_later(engine: FakeEngine) -> None:
    observer = Observer()
    scheduler = BatchScheduler(
        engine, max_batch_size=2, max_wait_s=0.05, max_pending=8, observer=observer
    )
    try:
        results = await asyncio.gather(
            *(scheduler.transcribe(request(n), OPTIONS) for n in range(1, 6))
        )
    finally:
        scheduler.shutdown()

    assert [r.text for r in results] == [f"r{n}" for n in range(1, 6)]
    assert max(observer.sizes) == 2
    assert sorted(name for batch in engine.rounds for name in batch) == [
        f"r{n}" for n in range(1, 6)
    ]
    assert len(observer.waits) == 5


async def test_a_finished_request_leaves_without_waiting_for_a_long_one(
    engine: FakeEngine, scheduler: BatchScheduler[FakeTask]
) -> None:
    finished: list[str] = []

    async def run(length: int, rounds: int) -> None:
        result = await scheduler.transcribe(request(length, rounds), OPTIONS)
        finished.append(result.text)

    await asyncio.gather(run(1, 6), run(2, 1))

    assert finished == ["r2", "r1"]
    assert engine.rounds[0] == ["r1", "r2"]
    assert all(batch == ["r1"] for batch in engine.rounds[1:]), "r2 left after its round"


async def test_newcomers_join_a_running_batch_between_rounds(
    engine: FakeEngine, scheduler: BatchScheduler[FakeTask]
) -> None:
    long_request = asyncio.create_task(scheduler.transcribe(request(1, 8), OPTIONS))
    await asyncio.sleep(0.08)
    await scheduler.transcribe(request(2), OPTIONS)
    await long_request

    joined = [batch for batch in engine.rounds if "r2" in batch]
    assert joined == [["r1", "r2"]]


async def test_a_full_queue_refuses_at_once(engine: FakeEngine) -> None:
    engine.gate.clear()
    scheduler = BatchScheduler(engine, max_batch_size=1, max_wait_s=0.0, max_pending=2)
    try:
        first = asyncio.create_task(scheduler.transcribe(request(1), OPTIONS))
        second = asyncio.create_task(scheduler.transcribe(request(2), OPTIONS))
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFullError):
            await scheduler.transcribe(request(3), OPTIONS)
        engine.gate.set()
        await asyncio.gather(first, second)
    finally:
        engine.gate.set()
        scheduler.shutdown()
    assert scheduler.pending == 0


async def test_a_withdrawn_request_is_never_computed(engine: FakeEngine) -> None:
    engine.gate.clear()
    scheduler = BatchScheduler(engine, max_batch_size=1, max_wait_s=0.0, max_pending=4)
    try:
        running = asyncio.create_task(scheduler.transcribe(request(1), OPTIONS))
        await asyncio.sleep(0.02)
        withdrawn = asyncio.create_task(scheduler.transcribe(request(2), OPTIONS))
        await asyncio.sleep(0.01)
        withdrawn.cancel()
        engine.gate.set()
        await running
        await asyncio.sleep(0.05)
    finally:
        engine.gate.set()
        scheduler.shutdown()
    assert "r2" not in engine.opened
    assert scheduler.pending == 0


async def test_one_failing_request_does_not_fail_its_neighbours(
    engine: FakeEngine, scheduler: BatchScheduler[FakeTask]
) -> None:
    results = await asyncio.gather(
        scheduler.transcribe(request(1), OPTIONS),
        scheduler.transcribe(request(7), OPTIONS),
        scheduler.transcribe(request(91), OPTIONS),
        return_exceptions=True,
    )

    assert isinstance(results[0], Transcription)
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], ValueError)
    assert scheduler.pending == 0


async def test_requests_wait_for_a_free_adapter_slot(engine: FakeEngine) -> None:
    engine.free_slots = 1
    scheduler = BatchScheduler(engine, max_batch_size=4, max_wait_s=0.02, max_pending=8)
    try:
        results = await asyncio.gather(
            scheduler.transcribe(request(1, 2), OPTIONS),
            scheduler.transcribe(request(2), OPTIONS),
        )
    finally:
        scheduler.shutdown()

    assert [r.text for r in results] == ["r1", "r2"]
    assert all(len(batch) == 1 for batch in engine.rounds)


async def test_engine_work_runs_on_the_inference_thread(
    scheduler: BatchScheduler[FakeTask],
) -> None:
    assert await scheduler.run(lambda: threading.current_thread().name) == "pqm-inference"

    def broken() -> None:
        raise ValueError("bad adapter")

    with pytest.raises(ValueError, match="bad adapter"):
        await scheduler.run(broken)
    results = await asyncio.gather(
        scheduler.transcribe(request(1, 3), OPTIONS), scheduler.run(lambda: "between rounds")
    )
    assert results[1] == "between rounds"


async def test_the_engine_tidies_up_when_idle_and_now_and_then_when_busy(
    engine: FakeEngine,
) -> None:
    scheduler = BatchScheduler(
        engine, max_batch_size=2, max_wait_s=0.0, idle_after_s=0.05, tidy_every_s=0.1
    )
    try:
        await scheduler.transcribe(request(1), OPTIONS)
        assert engine.tidies == 0
        await asyncio.sleep(0.2)
        assert engine.tidies == engine.idle_tidies == 1, "once per quiet spell, not per timeout"
        await scheduler.transcribe(request(2), OPTIONS)
        await asyncio.sleep(0.2)
        assert engine.tidies == engine.idle_tidies == 2
        engine.round_s = 0.02
        await scheduler.transcribe(request(3, rounds=20), OPTIONS)  # busy for ~0.4 s
        assert engine.tidies >= 5, "busy: tidied every 0.1 s between rounds"
        assert engine.idle_tidies == 2, "busy tidies keep what makes the engine fast"
    finally:
        scheduler.shutdown()


def test_the_queue_is_bounded_by_pending_audio_seconds(engine: FakeEngine) -> None:
    engine.gate.clear()
    scheduler = BatchScheduler(
        engine, max_batch_size=1, max_wait_s=0.0, max_pending=8, max_pending_audio_s=3.0
    )
    second = SAMPLE_RATE
    try:
        running = [scheduler.submit(request(2 * second), OPTIONS)]
        running.append(scheduler.submit(DecodedAudio.from_array(request(second)), OPTIONS))
        assert scheduler.pending_audio_s == 3.0  # exactly at the bound
        with pytest.raises(QueueFullError, match="3 s of audio are already pending"):
            scheduler.submit(request(second // 2), OPTIONS)
        assert scheduler.pending == 2
        engine.gate.set()
        assert [future.result(timeout=10).text for future in running] == ["r32000", "r16000"]
    finally:
        engine.gate.set()
        scheduler.shutdown()
    assert scheduler.pending_audio_s == 0.0
    assert scheduler.pending == 0


def test_a_request_alone_is_admitted_whatever_its_length(engine: FakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_pending=8, max_pending_audio_s=1.0)
    try:
        future = scheduler.submit(request(5 * SAMPLE_RATE), OPTIONS)
        assert future.result(timeout=10).text == "r80000"
    finally:
        scheduler.shutdown()
    assert scheduler.pending_audio_s == 0.0


def test_max_pending_audio_must_be_positive(engine: FakeEngine) -> None:
    with pytest.raises(ValueError, match="max_pending_audio_s"):
        BatchScheduler(engine, max_pending_audio_s=0.0)
