"""The worker trains what a job's method asks (`auto`: LoRA, then SAML from the active expert
bank) against real SQLite and PostgreSQL databases, training replaced by a stand-in whose gate
evidence each test sets: both adapters are stored, at most the better one is activated, and the
job records the choice."""

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store.sql import SqlBlobStore
from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import Adapter, AdapterStatus
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.engine.adaptation.residency import AnyAdapter
from app.engine.training import TrainingRequest, TrainingResult
from app.engine.whisper import WhisperEngine
from app.services import enrolment_worker
from app.services.enrolment_worker import EnrolmentWorker
from app.services.job_worker import WorkerContext
from app.services.model_loading import load_engine
from tests.conftest import make_settings
from tests.support.adapters import random_adapter, random_saml
from tests.support.enrolments import new_job, stored_job

pytestmark = pytest.mark.postgres

BANK = ("bank-1", b"the bank's file")


@pytest.fixture
async def context(
    tmp_path: Path,
    tiny_en_dir: Path,
    sessions: async_sessionmaker[AsyncSession],
    nf4_engine: WhisperEngine,
) -> AsyncIterator[WorkerContext]:
    settings: Settings = make_settings(
        tmp_path / "data", model={"path": tiny_en_dir}, enrolment={"worker": False}
    )
    engine = await load_engine(settings, nf4_engine)
    try:
        yield WorkerContext.create(settings, sessions, SqlBlobStore(sessions), engine)
    finally:
        engine.shutdown()


async def _queued(sessions: async_sessionmaker[AsyncSession], method: str) -> str:
    async with transaction(sessions) as session:
        job = await new_job(session)
        job.method = method
        return (await EnrolmentRepository(session).add(job, [])).id


def _stand_in(
    monkeypatch: pytest.MonkeyPatch,
    engine: WhisperEngine,
    gates: dict[str, dict[str, Any]],
    bank: tuple[str, bytes] | None,
    *,
    lora_out_of_bounds: bool = False,
) -> list[TrainingRequest]:
    """Training that returns each method's adapter with the gate evidence in `gates` (the LoRA
    adapter's scale out of bounds if asked); the requests it was given are appended to the list
    returned."""
    requests: list[TrainingRequest] = []

    async def active_bank(*_: object) -> tuple[str, bytes] | None:
        return bank

    def train(request: TrainingRequest, *_: object) -> TrainingResult:
        requests.append(request)
        method = request.config.method
        adapter: AnyAdapter = random_saml(engine, 2, router="depthwise")
        if method == "lora":
            adapter = random_adapter(engine, 1)
            if lora_out_of_bounds:
                adapter = dataclasses.replace(adapter, alpha=1e38)
        return TrainingResult(adapter=adapter, metrics={"gate": gates[method]})

    monkeypatch.setattr(enrolment_worker, "active_bank", active_bank)
    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", train)
    return requests


def _gate(errors_new: int, activate: bool = True) -> dict[str, Any]:
    reason = "it saves words" if activate else "not activated: it saves too few words"
    return {"errors_new": errors_new, "activate": activate, "reason": reason}


async def _adapters(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Adapter]:
    async with sessions() as session:
        return {row.method: row for row in await session.scalars(select(Adapter))}


@pytest.mark.parametrize(
    ("lora", "saml", "winner", "active"),
    [
        (_gate(9), _gate(7), "saml", True),
        (_gate(8), _gate(8), "lora", True),
        (_gate(9), _gate(7, activate=False), "saml", False),
    ],
    ids=["saml-better", "tie-lora", "winner-refused-by-its-gate"],
)
async def test_auto_with_a_bank_stores_both_and_activates_at_most_the_better(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
    lora: dict[str, Any],
    saml: dict[str, Any],
    winner: str,
    active: bool,
) -> None:
    trained = _stand_in(monkeypatch, nf4_engine, {"lora": lora, "saml": saml}, BANK)
    job_id = await _queued(sessions, "auto")
    assert await EnrolmentWorker(context, "worker-1").run_once()

    assert [(r.config.method, r.gated and r.gated.bank) for r in trained] == [
        ("lora", None),
        ("saml", BANK[1]),
    ]
    job = await stored_job(sessions, job_id)
    assert job.status == EnrolmentStatus.SUCCEEDED, job.error
    adapters = await _adapters(sessions)
    assert set(adapters) == {"lora", "saml"}
    loser = adapters["saml" if winner == "lora" else "lora"]
    assert (job.adapter_id, job.activated) == (adapters[winner].id, active)
    assert adapters[winner].active is active
    assert loser.active is False
    assert loser.note is not None
    assert loser.note.startswith(f"not activated: {winner} made")
    assert job.metrics is not None
    choice = job.metrics["method_choice"]
    assert (choice["winner"], choice["gates"]) == (winner, {"lora": lora, "saml": saml})
    assert adapters["saml"].metrics["expert_bank"] == BANK[0]
    assert all(row.enrolment_id == job_id for row in adapters.values())


async def test_auto_activates_the_other_adapter_when_the_better_one_is_quarantined(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gates = {"lora": _gate(7), "saml": _gate(9)}
    _stand_in(monkeypatch, nf4_engine, gates, BANK, lora_out_of_bounds=True)
    job_id = await _queued(sessions, "auto")
    assert await EnrolmentWorker(context, "worker-1").run_once()

    job = await stored_job(sessions, job_id)
    adapters = await _adapters(sessions)
    assert (job.adapter_id, job.activated) == (adapters["saml"].id, True)
    assert adapters["lora"].status == AdapterStatus.QUARANTINED
    assert adapters["lora"].note is not None
    assert adapters["lora"].note.startswith("quarantined: out of bounds")
    assert job.metrics is not None
    assert job.metrics["method_choice"]["reason"] == "not activated: lora cannot be served"


async def test_auto_without_a_bank_trains_lora_alone(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = _stand_in(monkeypatch, nf4_engine, {"lora": _gate(3)}, None)
    job_id = await _queued(sessions, "auto")
    assert await EnrolmentWorker(context, "worker-1").run_once()

    assert [r.config.method for r in trained] == ["lora"]
    job = await stored_job(sessions, job_id)
    assert (job.status, job.activated) == (EnrolmentStatus.SUCCEEDED, True)
    assert list(await _adapters(sessions)) == ["lora"]
    assert job.metrics is not None
    assert job.metrics["method_choice"]["winner"] == "lora"


async def test_a_saml_job_whose_bank_is_gone_fails_saying_so(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = _stand_in(monkeypatch, nf4_engine, {}, None)
    job_id = await _queued(sessions, "saml")
    assert await EnrolmentWorker(context, "worker-1").run_once()

    assert trained == []
    job = await stored_job(sessions, job_id)
    assert job.status == EnrolmentStatus.FAILED
    assert job.error is not None
    assert "no active expert bank" in job.error
    assert await _adapters(sessions) == {}
