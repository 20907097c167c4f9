"""The expert-bank worker against real SQLite and PostgreSQL databases, with the build replaced
by a stand-in: which recordings a build learns from, a contributor withdrawing or the bank
deleted while it builds, and a build whose worker stopped."""

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.config import Settings
from app.db.base import utcnow
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import AdapterBlob, ExpertBank, ExpertBankContributor, RecordingOrigin, User
from app.db.repositories.expert_banks import ExpertBankRepository
from app.db.repositories.recordings import RecordingRepository
from app.db.repositories.users import UserRepository
from app.db.session import transaction
from app.engine.training import TrainingResult
from app.engine.training.process import BankRequest
from app.engine.whisper import WhisperEngine
from app.services import expert_bank_worker
from app.services.expert_bank_worker import ExpertBankWorker
from app.services.expert_banks import BankBuild, record_bank, withdraw_contributor
from app.services.job_worker import WorkerContext
from app.services.recording_checks import CheckedRecording
from app.services.recordings import store_recordings
from tests.conftest import make_settings
from tests.support.adapters import random_saml
from tests.support.audio import speech_16k

pytestmark = pytest.mark.postgres

S = EnrolmentStatus
TEXTS = ("the cat sat on the mat", "seven green apples", "open the door")


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    # A heartbeat far apart: the only one a stand-in build sees is the one after it ends.
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "heartbeat_interval_s": 3600, "max_attempts": 2},
    )


async def _contributor(context: WorkerContext, name: str, recordings: int) -> str:
    """A user who contributes, with `recordings` stored (oldest first: TEXTS in order)."""
    async with transaction(context.sessions) as session:
        user = User(
            name=name,
            api_key_hash=name.ljust(64, "0"),
            api_key_prefix="pqm-0",
            contribute_recordings=True,
        )
        user_id = (await UserRepository(session).add(user)).id
        checked = [
            CheckedRecording(audio=speech_16k(text), transcript=text) for text in TEXTS[:recordings]
        ]
        store = context.store.bind(session)
        for recording in await store_recordings(
            store, user_id, checked, RecordingOrigin.CORRECTION
        ):
            await RecordingRepository(session).add(recording)
        return user_id


async def _queued_bank(
    context: WorkerContext, counted: dict[str, int], fingerprint: str | None = None
) -> str:
    """A build queued for the base model with `fingerprint` (None: the served one), learning
    from `counted` (user id -> recordings)."""
    contributors = [
        ExpertBankContributor(user_id=user_id, recordings=count, withdrawn=False)
        for user_id, count in counted.items()
    ]
    build = BankBuild(experts=2, epochs=1, expert_epochs=1)
    async with transaction(context.sessions) as session:
        fingerprint = fingerprint or context.engine.info.fingerprint
        return (await record_bank(session, fingerprint, build, contributors)).id


async def _stored(context: WorkerContext, bank_id: str) -> ExpertBank | None:
    async with context.sessions() as session:
        return await ExpertBankRepository(session).get(bank_id)


async def _blobs(context: WorkerContext) -> int:
    async with context.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(AdapterBlob)) or 0)


def _build_runs(
    monkeypatch: pytest.MonkeyPatch,
    engine: WhisperEngine,
    meanwhile: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> list[BankRequest]:
    """A stand-in build that lets `meanwhile` run on the event loop to its end, then returns a
    bank; the requests it was given."""
    loop = asyncio.get_running_loop()
    requests: list[BankRequest] = []

    def build(request: BankRequest, *_: object) -> TrainingResult:
        requests.append(request)
        if meanwhile is not None:
            asyncio.run_coroutine_threadsafe(meanwhile(), loop).result()
        bank = dataclasses.replace(random_saml(engine, 3, experts=2), kind="bank")
        return TrainingResult(adapter=bank, metrics={"speakers": "2"})

    monkeypatch.setattr(expert_bank_worker, "run_in_subprocess", build)
    return requests


async def test_a_build_learns_from_the_recordings_counted_when_it_was_asked_for(
    context: WorkerContext, nf4_engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await _contributor(context, "alice", 3)
    bob = await _contributor(context, "bob", 2)
    bank_id = await _queued_bank(context, {alice: 2, bob: 2})
    await _contributor(context, "carol", 3)  # contributing only after the build was asked for
    requests = _build_runs(monkeypatch, nf4_engine)

    assert await ExpertBankWorker(context, "worker-1").run_once()
    [request] = requests
    learned = {speaker.name: [u.text for u in speaker.utterances] for speaker in request.speakers}
    assert learned == {alice: list(TEXTS[:2]), bob: list(TEXTS[:2])}
    assert (request.config.experts, request.config.epochs, request.config.expert_epochs) == (
        2,
        1,
        1,
    )
    assert request.config.threads == context.settings.training_threads
    bank = await _stored(context, bank_id)
    assert bank is not None
    assert (bank.status, bank.progress, bank.worker_id) == (S.SUCCEEDED, 1.0, "worker-1")
    assert bank.blob_key is not None
    assert bank.metrics == {"speakers": "2", "source": "contributors"}
    assert not await ExpertBankWorker(context, "worker-1").run_once()


async def test_a_build_left_with_one_speaker_fails_saying_why(
    context: WorkerContext, nf4_engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await _contributor(context, "alice", 2)
    bob = await _contributor(context, "bob", 1)
    bank_id = await _queued_bank(context, {alice: 2, bob: 1})
    async with transaction(context.sessions) as session:
        [recording] = await RecordingRepository(session).list_for_user(bob)
        await RecordingRepository(session).delete(recording)
    requests = _build_runs(monkeypatch, nf4_engine)

    assert await ExpertBankWorker(context, "worker-1").run_once()
    bank = await _stored(context, bank_id)
    assert bank is not None
    assert bank.status == S.FAILED
    assert bank.error is not None
    assert bank.error.startswith("TooFewSpeakers: only 1 of the build's contributors")
    assert requests == []


async def test_a_build_for_another_base_model_fails_saying_so(
    context: WorkerContext, nf4_engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await _contributor(context, "alice", 1)
    bob = await _contributor(context, "bob", 1)
    bank_id = await _queued_bank(context, {alice: 1, bob: 1}, fingerprint="f" * 64)
    requests = _build_runs(monkeypatch, nf4_engine)

    assert await ExpertBankWorker(context, "worker-1").run_once()
    bank = await _stored(context, bank_id)
    assert bank is not None
    assert (bank.status, bank.error) == (
        S.FAILED,
        "OtherBaseModel: the bank was asked for base model ffffffffffff; this worker serves "
        + nf4_engine.info.fingerprint[:12],
    )
    assert requests == []


async def test_a_contributor_withdrawing_while_it_builds_cancels_it(
    context: WorkerContext, nf4_engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await _contributor(context, "alice", 2)
    bob = await _contributor(context, "bob", 2)
    bank_id = await _queued_bank(context, {alice: 2, bob: 2})

    async def withdraw() -> None:
        async with transaction(context.sessions) as session:
            await withdraw_contributor(session, alice)

    _build_runs(monkeypatch, nf4_engine, withdraw)
    assert await ExpertBankWorker(context, "worker-1").run_once()
    bank = await _stored(context, bank_id)
    assert bank is not None
    assert (bank.status, bank.blob_key, bank.includes_withdrawn) == (S.CANCELLED, None, True)
    assert await _blobs(context) == 4  # the recordings' audio, no bank


async def test_a_bank_deleted_while_it_builds_is_not_stored(
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = await _contributor(context, "alice", 2)
    bob = await _contributor(context, "bob", 2)
    bank_id = await _queued_bank(context, {alice: 2, bob: 2})

    async def delete() -> None:
        async with transaction(context.sessions) as session:
            assert await ExpertBankRepository(session).delete(bank_id)

    _build_runs(monkeypatch, nf4_engine, delete)
    with caplog.at_level(logging.WARNING):
        assert await ExpertBankWorker(context, "worker-1").run_once()
    assert "expert bank build result discarded" in caplog.text
    assert await _stored(context, bank_id) is None
    assert await _blobs(context) == 4


@pytest.mark.parametrize(
    ("attempts", "status"), [(1, S.QUEUED), (2, S.FAILED)], ids=["requeue", "fail"]
)
async def test_a_build_whose_worker_stopped_is_requeued_then_failed(
    context: WorkerContext, attempts: int, status: EnrolmentStatus
) -> None:
    alice = await _contributor(context, "alice", 1)
    bob = await _contributor(context, "bob", 1)
    bank_id = await _queued_bank(context, {alice: 1, bob: 1})
    async with transaction(context.sessions) as session:
        assert await ExpertBankRepository(session).claim(bank_id, "worker-1") is not None
        await session.execute(
            update(ExpertBank)
            .where(ExpertBank.id == bank_id)
            .values(heartbeat_at=utcnow() - timedelta(days=1), attempts=attempts)
        )

    await ExpertBankWorker(context, "worker-2").recover_stale_jobs()
    bank = await _stored(context, bank_id)
    assert bank is not None
    assert bank.status == status
    if status is S.QUEUED:
        assert bank.message == f"re-queued: its worker stopped (attempt {attempts})"
    else:
        assert bank.error == "the worker stopped while running this expert bank build"
