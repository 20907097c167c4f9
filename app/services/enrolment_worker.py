"""The enrolment job worker: claims queued jobs from the database and trains them, one at a time.

Runs inside the API process by default and as `pqm worker` on its own; any number of workers
may share one database (every status change is a conditional update). Training itself runs in a
child process with bounded threads so that serving keeps its cores. A job's heartbeat is written
every few seconds; a job whose heartbeat stops (its worker died) is re-queued or failed by the
next sweep.
"""

import asyncio
import contextlib
import io
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store import AdapterStore
from app.config import EnrolmentSettings, Settings
from app.db.base import utcnow
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import EnrolmentJob, Recording
from app.db.repositories.adapters import AdapterRepository
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.engine.adaptation.files import dump_any
from app.engine.adaptation.saml.config import METHOD as SAML
from app.engine.batching import BatchScheduler
from app.engine.recognizer import SpeechRecognizer
from app.engine.training import (
    GateConfig,
    GatedTraining,
    ServingNumerics,
    TrainingCancelled,
    TrainingConfig,
    TrainingProgress,
    TrainingRequest,
    TrainingResult,
    Utterance,
    run_in_subprocess,
)
from app.engine.whisper import TranscriptionTask
from app.services.active_bank import NO_ACTIVE_BANK, active_bank
from app.services.adapter_storage import (
    CheckedAdapter,
    NewAdapter,
    checked_form,
    store_adapter,
)
from app.services.adapters import ActiveAdapters, ResolvedAdapter
from app.services.auto_retrain import queue_waiting
from app.services.enrolment_jobs import AUTO
from app.services.method_choice import MethodChoice, choose_method
from app.services.model_loading import resolve_model_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    sessions: async_sessionmaker[AsyncSession]
    store: AdapterStore
    recognizer: SpeechRecognizer
    scheduler: BatchScheduler[TranscriptionTask]
    """Where adapters are checked before they are stored (the inference thread)."""
    model_dir: Path
    precision: str
    numerics: ServingNumerics
    """How serving computes: the gate transcribes the same way."""
    settings: EnrolmentSettings

    @classmethod
    def create(
        cls,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        store: AdapterStore,
        recognizer: SpeechRecognizer,
        scheduler: BatchScheduler[TranscriptionTask],
    ) -> "WorkerContext":
        return cls(
            sessions=sessions,
            store=store,
            recognizer=recognizer,
            scheduler=scheduler,
            model_dir=resolve_model_dir(settings),
            precision=settings.model.precision,
            numerics=ServingNumerics(
                compute_dtype=settings.model.compute_dtype,
                base_window=settings.model.encoder_window,
            ),
            settings=settings.enrolment,
        )


class NoActiveBank(Exception):
    """A SAML job found no expert bank to start from (the bank went after it was queued)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a job trains: one request per method, in order, each gated against what the user
    is served now."""

    served_id: str | None
    """The adapter the user is served now (None: the base model), which each must beat."""
    requests: dict[str, TrainingRequest]
    bank_id: str | None
    """The expert bank SAML starts from (None: no SAML in this job)."""


class ClaimLost(Exception):
    """The job is no longer this worker's to end: a sweep re-queued it (the worker looked
    stopped, its heartbeat late) and another worker may run it now, or it finished or was
    deleted meanwhile. This worker's result is discarded."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class EnrolmentWorker:
    def __init__(self, context: WorkerContext, worker_id: str | None = None) -> None:
        self._ctx = context
        self.worker_id = worker_id or default_worker_id()
        self._active_adapters = ActiveAdapters(
            context.store, context.recognizer, capacity_bytes=16 * 2**20, runner=context.scheduler
        )
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Works until `stop` is set; a job in training then is stopped and re-queued."""
        self._stopping = stop
        logger.info("enrolment worker started", extra={"worker_id": self.worker_id})
        while not stop.is_set():
            try:
                await self.recover_stale_jobs()
                await self.queue_waiting_retrainings()
                job = await self._claim()
                if job is not None:
                    await self.process(job)
                    continue
            except Exception:  # the worker must outlive any single failure
                logger.exception("enrolment worker iteration failed")
            await _wait(stop, self._ctx.settings.poll_interval_s)

    async def run_once(self) -> bool:
        """Processes one queued job if there is one (tests and tooling)."""
        await self.recover_stale_jobs()
        await self.queue_waiting_retrainings()
        job = await self._claim()
        if job is None:
            return False
        await self.process(job)
        return True

    async def _claim(self) -> EnrolmentJob | None:
        async with transaction(self._ctx.sessions) as session:
            return await EnrolmentRepository(session).claim_next(self.worker_id)

    async def recover_stale_jobs(self) -> None:
        settings = self._ctx.settings
        cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
        async with transaction(self._ctx.sessions) as session:
            jobs = EnrolmentRepository(session)
            for job in await jobs.stale_running(cutoff):
                if job.attempts < settings.max_attempts and not job.cancel_requested:
                    message = f"re-queued: its worker stopped (attempt {job.attempts})"
                    recovered = await jobs.requeue(
                        job, message, refund_attempt=False, stale_before=cutoff
                    )
                else:
                    error = "the worker stopped while training this job"
                    recovered = await jobs.finish(
                        job, EnrolmentStatus.FAILED, error=error, stale_before=cutoff
                    )
                if not recovered:  # another sweep, its worker or a client got there first
                    continue
                logger.warning(
                    "recovered a job whose worker stopped",
                    extra={"job_id": job.id, "status": job.status},
                )

    async def queue_waiting_retrainings(self) -> None:
        """Runs before each claim, so right after a job finished and on every idle tick."""
        async with transaction(self._ctx.sessions) as session:
            await queue_waiting(session, self._ctx.settings)

    async def process(self, job: EnrolmentJob) -> None:
        log = {"job_id": job.id, "user_id": job.user_id, "worker_id": self.worker_id}
        logger.info("enrolment started", extra=log)
        try:
            await self._train_to_outcome(job, log)
        except ClaimLost:
            logger.warning(
                "enrolment result discarded: the job is no longer this worker's "
                "(re-queued by a sweep and perhaps claimed by another worker, or finished)",
                extra=log,
            )

    async def _train_to_outcome(self, job: EnrolmentJob, log: dict[str, str]) -> None:
        try:
            plan = await self._plan(job)
            trained = await self._train_all(job.id, plan.requests)
            await self._complete(job.id, job.method, plan, trained)
        except ClaimLost:
            raise
        except TrainingCancelled:
            if self._stopping.is_set():
                await self._requeue(job.id)
                logger.info("enrolment interrupted by shutdown; re-queued", extra=log)
            else:
                await self._set_outcome(job.id, EnrolmentStatus.CANCELLED, error=None)
                logger.info("enrolment cancelled", extra=log)
        except Exception as exc:
            await self._set_outcome(job.id, EnrolmentStatus.FAILED, error=_describe(exc))
            logger.exception("enrolment failed", extra=log)

    async def _plan(self, job: EnrolmentJob) -> _Plan:
        async with self._ctx.sessions() as session:
            recordings = await EnrolmentRepository(session).recordings(job.id)
            served = await self._active_adapters.resolve(session, job.user_id)
            bank = await self._bank(session, job.method)
        utterances = [await self._utterance(recording) for recording in recordings]
        settings = self._ctx.settings
        gated = self._gated(served)
        config = _training_config(job.params, settings.training_threads)
        base = TrainingRequest(
            model_dir=self._ctx.model_dir,
            train=utterances,
            dev=[],
            config=config,
            precision=self._ctx.precision,
            priority=settings.training_priority,
            gated=gated,
        )
        requests: dict[str, TrainingRequest] = {
            method: replace(
                base,
                config=replace(config, method=method),
                gated=replace(gated, bank=bank[1] if bank and method == SAML else None),
            )
            for method in _methods(job.method, bank is not None)
        }
        return _Plan(served.id if served else None, requests, bank[0] if bank else None)

    def _gated(self, served: ResolvedAdapter | None) -> GatedTraining:
        """The gate, against what the user is served now."""
        settings = self._ctx.settings
        return GatedTraining(
            gate=GateConfig(
                folds=settings.gate_folds,
                confidence=settings.gate_confidence,
                min_words_saved=settings.gate_min_words_saved,
            ),
            served_adapter=dump_any(served.weights) if served is not None else None,
            served_label=f"the active adapter {served.id}" if served else "the base model",
            numerics=self._ctx.numerics,
        )

    async def _bank(self, session: AsyncSession, method: str) -> tuple[str, bytes] | None:
        """The expert bank a SAML adapter of this job starts from (None: no SAML to train)."""
        if method not in (SAML, AUTO):
            return None
        bank = await active_bank(session, self._ctx.store, self._ctx.recognizer.info.fingerprint)
        if bank is None and method == SAML:
            raise NoActiveBank(NO_ACTIVE_BANK)
        return bank

    async def _utterance(self, recording: Recording) -> Utterance:
        data = await self._ctx.store.get(recording.blob_key)
        audio, _ = sf.read(io.BytesIO(data), dtype="float32")
        return Utterance(audio=np.ascontiguousarray(audio), text=recording.transcript)

    async def _train_all(
        self, job_id: str, requests: dict[str, TrainingRequest]
    ) -> dict[str, TrainingResult]:
        """Each method's training in turn; progress runs once from 0 to 1 over all of them."""
        trained: dict[str, TrainingResult] = {}
        for index, (method, request) in enumerate(requests.items()):
            part = _Part(index, len(requests), method)
            trained[method] = await self._train(job_id, request, part)
        return trained

    async def _train(self, job_id: str, request: TrainingRequest, part: "_Part") -> TrainingResult:
        latest: list[TrainingProgress] = []
        stop = threading.Event()
        training = asyncio.ensure_future(
            asyncio.to_thread(run_in_subprocess, request, latest.append, stop.is_set)
        )
        while not training.done():
            await asyncio.wait({training}, timeout=self._ctx.settings.heartbeat_interval_s)
            alive = await self._heartbeat(job_id, part.of(latest[-1]) if latest else None)
            if not alive or self._stopping.is_set():
                stop.set()
        return training.result()

    async def _heartbeat(self, job_id: str, progress: TrainingProgress | None) -> bool:
        """Records progress; False when the job was cancelled, deleted or is no longer this
        worker's meanwhile: training should stop."""
        async with transaction(self._ctx.sessions) as session:
            jobs = EnrolmentRepository(session)
            if progress is None:
                return await jobs.heartbeat(job_id, self.worker_id)
            return await jobs.heartbeat(
                job_id,
                self.worker_id,
                progress=round(min(progress.fraction, 0.99), 4),
                eta_seconds=progress.eta_seconds,
                message=progress.message,
            )

    async def _complete(
        self, job_id: str, method: str, plan: _Plan, trained: dict[str, TrainingResult]
    ) -> None:
        """Stores every trained adapter; at most the chosen one is activated."""
        forms = {name: await self._checked(result) for name, result in trained.items()}
        async with self._ctx.sessions() as session:
            job = await EnrolmentRepository(session).claimed(job_id, self.worker_id)
            if job is None:
                raise ClaimLost(job_id)
            user_id = job.user_id
            served_now = await AdapterRepository(session).active_for_user(user_id)
        served_changed = (served_now.id if served_now else None) != plan.served_id
        choice = choose_method({name: result.metrics["gate"] for name, result in trained.items()})
        news = {
            name: _new_adapter(
                user_id,
                job_id,
                forms[name],
                _adapter_metrics(result, name, plan.bank_id),
                _decision(result, forms[name], served_changed, choice, name),
            )
            for name, result in trained.items()
        }
        winner = news[choice.winner]
        job_metrics = dict(winner.metrics)
        if method == AUTO:
            job_metrics["method_choice"] = choice.to_metrics()
        try:
            await self._commit_adapters(job_id, list(news.values()), winner, job_metrics)
        except Exception:  # the job's commit failed after the weights were written
            for new in news.values():
                await self._ctx.store.delete(new.key)
            raise
        logger.info(
            "enrolment succeeded",
            extra={"job_id": job_id, "adapter_id": winner.id, "activated": winner.activate},
        )

    async def _checked(self, result: TrainingResult) -> CheckedAdapter:
        recognizer = self._ctx.recognizer
        return await self._ctx.scheduler.run(lambda: checked_form(result.adapter, recognizer))

    async def _commit_adapters(
        self, job_id: str, news: Sequence[NewAdapter], chosen: NewAdapter, metrics: dict[str, Any]
    ) -> None:
        """One transaction: the adapters stored (see `store_adapter`) and the job's success
        naming `chosen`, or none of it."""
        async with transaction(self._ctx.sessions) as session:
            jobs = EnrolmentRepository(session)
            job = await jobs.claimed(job_id, self.worker_id, for_update=True)
            if job is None:
                raise ClaimLost(job_id)
            if job.cancel_requested:
                raise TrainingCancelled("the job was cancelled while finishing")
            for new in news:
                await store_adapter(session, self._ctx.store, new)
            job.adapter_id, job.activated = chosen.id, chosen.activate
            job.activation_reason = chosen.note or str(metrics["gate"]["reason"])
            job.metrics = metrics
            if not await jobs.finish(job, EnrolmentStatus.SUCCEEDED):
                # Cancelled or taken over meanwhile: ending it as cancelled tells which.
                raise TrainingCancelled("the job changed while finishing")

    async def _requeue(self, job_id: str) -> None:
        message = "re-queued: the worker shut down"
        await self._end_own_run(
            job_id, lambda jobs, job: jobs.requeue(job, message, refund_attempt=True)
        )

    async def _set_outcome(self, job_id: str, outcome: EnrolmentStatus, error: str | None) -> None:
        await self._end_own_run(job_id, lambda jobs, job: jobs.finish(job, outcome, error=error))

    async def _end_own_run(
        self,
        job_id: str,
        change: Callable[[EnrolmentRepository, EnrolmentJob], Awaitable[bool]],
    ) -> None:
        """Applies `change` while the job is still running for this worker; raises `ClaimLost`
        once it is not. A change refused because a client asked to cancel meanwhile is tried
        again on the job as it is now."""
        async with transaction(self._ctx.sessions) as session:
            jobs = EnrolmentRepository(session)
            job = await jobs.claimed(job_id, self.worker_id)
            while job is not None and self._runs(job):
                if await change(jobs, job):
                    return
        raise ClaimLost(job_id)

    def _runs(self, job: EnrolmentJob) -> bool:
        return job.status == EnrolmentStatus.RUNNING and job.worker_id == self.worker_id


@dataclass(frozen=True, slots=True)
class _Part:
    """One method's training among the `count` a job runs, in its share of the progress."""

    index: int
    count: int
    method: str

    def of(self, progress: TrainingProgress) -> TrainingProgress:
        if self.count == 1:
            return progress
        return replace(
            progress,
            fraction=(self.index + progress.fraction) / self.count,
            message=f"{self.method}: {progress.message}",
        )


TrainedMethod = Literal["lora", "saml"]
"""What `TrainingConfig.method` trains."""


def _methods(method: str, has_bank: bool) -> tuple[TrainedMethod, ...]:
    """The methods a job of `method` trains, in order (`auto`: SAML only with a bank)."""
    if method == AUTO:
        return ("lora", "saml") if has_bank else ("lora",)
    return ("saml",) if method == SAML else ("lora",)


def _decision(
    result: TrainingResult,
    form: CheckedAdapter,
    served_changed: bool,
    choice: MethodChoice,
    method: str,
) -> tuple[bool, str]:
    """Whether the adapter is activated, and why (or why not)."""
    gate = result.metrics["gate"]
    activate, reason = bool(gate["activate"]), str(gate["reason"])
    if method != choice.winner:
        activate, reason = False, choice.loser_note
    elif activate and served_changed:
        activate = False
        reason = "not activated: what the user is served changed while this adapter trained"
    if form.out_of_bounds is not None:  # kept for inspection, never served
        activate, reason = False, f"quarantined: out of bounds: {form.out_of_bounds}"
    return activate, reason


def _adapter_metrics(result: TrainingResult, method: str, bank_id: str | None) -> dict[str, Any]:
    metrics = dict(result.metrics)
    if method == SAML:
        metrics["expert_bank"] = bank_id
    return metrics


def _new_adapter(
    user_id: str,
    job_id: str,
    form: CheckedAdapter,
    metrics: dict[str, Any],
    decision: tuple[bool, str],
) -> NewAdapter:
    activate, reason = decision
    return NewAdapter(
        user_id=user_id,
        form=form,
        source="enrolment",
        activate=activate,
        note=None if activate else reason,
        enrolment_id=job_id,
        metrics=metrics,
    )


def _training_config(params: dict[str, Any], threads: int) -> TrainingConfig:
    """The tuned defaults, with what the user asked for; a custom rank keeps alpha / rank (the
    update's scale) as tuned."""
    default = TrainingConfig()
    config = replace(default, threads=threads, seed=int(params.get("seed") or 0))
    if params.get("epochs"):
        config = replace(config, epochs=int(params["epochs"]))
    if params.get("rank"):
        rank = int(params["rank"])
        alpha = None if default.alpha is None else default.alpha * rank / default.rank
        config = replace(config, rank=rank, alpha=alpha)
    return config


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
