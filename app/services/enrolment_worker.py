"""The enrolment job worker: claims queued enrolment jobs and trains their adapters, one at a
time (claiming, heartbeats, cancelling and recovery: `job_worker`)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import EnrolmentSettings
from app.db.job_queue import ENROLMENT_TASK
from app.db.models import EnrolmentJob
from app.db.repositories.adapters import AdapterRepository
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.engine.adaptation.files import dump_any
from app.engine.adaptation.saml.config import METHOD as SAML
from app.engine.facade import CheckedAdapter
from app.engine.training import (
    GateConfig,
    GatedTraining,
    TrainingConfig,
    TrainingProgress,
    TrainingRequest,
    TrainingResult,
    run_in_subprocess,
)
from app.services.active_bank import NO_ACTIVE_BANK, active_bank
from app.services.adapter_storage import NewAdapter, store_adapter
from app.services.adapters import ActiveAdapters, ResolvedAdapter
from app.services.auto_retrain import queue_waiting
from app.services.enrolment_jobs import AUTO
from app.services.job_worker import JobWorker, Progress, StopCheck, WorkerContext
from app.services.method_choice import MethodChoice, choose_method
from app.services.recordings import stored_utterance

logger = logging.getLogger(__name__)


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


class EnrolmentWorker(JobWorker[EnrolmentJob]):
    """Trains each enrolment job's adapters (one per method it asks for) in the child process
    and stores them, activating at most the one the gates and `choose_method` pick."""

    kind = "enrolment"
    task_name = ENROLMENT_TASK

    def __init__(self, context: WorkerContext, worker_id: str | None = None) -> None:
        super().__init__(context, worker_id)
        self._active_adapters = ActiveAdapters(
            context.store, context.engine, capacity_bytes=16 * 2**20
        )

    def _jobs(self, session: AsyncSession) -> EnrolmentRepository:
        return EnrolmentRepository(session)

    def _log_fields(self, job: EnrolmentJob) -> dict[str, str]:
        return {"user_id": job.user_id}

    async def housekeeping(self) -> None:
        await self.queue_waiting_retrainings()

    async def queue_waiting_retrainings(self) -> None:
        async with transaction(self._ctx.sessions) as session:
            await queue_waiting(session, self._ctx.settings)

    async def _work(self, job: EnrolmentJob) -> None:
        plan = await self._plan(job)
        trained = await self._train_all(job.id, plan.requests)
        await self._complete(job.id, job.method, plan, trained)

    async def _plan(self, job: EnrolmentJob) -> _Plan:
        async with self._ctx.sessions() as session:
            recordings = await EnrolmentRepository(session).recordings(job.id)
            served = await self._active_adapters.resolve(session, job.user_id)
            bank = await self._bank(session, job.method)
        utterances = [await stored_utterance(self._ctx.store, r) for r in recordings]
        settings = self._ctx.settings
        gated = self._gated(served)
        config = training_config(job.params, settings)
        base = TrainingRequest(
            model_dir=self._ctx.model_dir,
            train=utterances,
            dev=[],
            config=config,
            precision=self._ctx.precision,
            device=self._ctx.device,
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
        bank = await active_bank(session, self._ctx.store, self._ctx.engine.info.fingerprint)
        if bank is None and method == SAML:
            raise NoActiveBank(NO_ACTIVE_BANK)
        return bank

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
        def train(progress: Progress, should_stop: StopCheck) -> TrainingResult:
            return run_in_subprocess(request, lambda step: progress(part.of(step)), should_stop)

        return await self._in_child(job_id, train)

    async def _complete(
        self, job_id: str, method: str, plan: _Plan, trained: dict[str, TrainingResult]
    ) -> None:
        """Stores every trained adapter; at most the chosen one is activated."""
        forms = {name: await self._checked(result) for name, result in trained.items()}
        async with self._ctx.sessions() as session:
            user_id = (await self._claimed(session, job_id)).user_id
            served_now = await AdapterRepository(session).active_for_user(user_id)
        served_changed = (served_now.id if served_now else None) != plan.served_id
        choice = choose_method(
            {name: result.metrics["gate"] for name, result in trained.items()},
            unservable=[name for name, form in forms.items() if form.out_of_bounds is not None],
        )
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
        return await self._ctx.engine.checked(result.adapter)

    async def _commit_adapters(
        self, job_id: str, news: Sequence[NewAdapter], chosen: NewAdapter, metrics: dict[str, Any]
    ) -> None:
        """One transaction: the adapters stored (see `store_adapter`) and the job's success
        naming `chosen`, or none of it."""
        async with self._succeeding(job_id) as (session, job):
            for new in news:
                await store_adapter(session, self._ctx.store, new)
            job.adapter_id, job.activated = chosen.id, chosen.activate
            job.activation_reason = chosen.note or str(metrics["gate"]["reason"])
            job.metrics = metrics


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


def training_config(params: dict[str, Any], settings: EnrolmentSettings) -> TrainingConfig:
    """The tuned defaults and the service's training settings, with what the user asked for; a
    custom rank keeps alpha / rank (the update's scale) as tuned."""
    default = TrainingConfig()
    config = replace(
        default,
        threads=settings.training_threads,
        joined_windows=settings.joined_windows,
        seed=int(params.get("seed") or 0),
    )
    if params.get("epochs"):
        config = replace(config, epochs=int(params["epochs"]))
    if params.get("rank"):
        rank = int(params["rank"])
        alpha = None if default.alpha is None else default.alpha * rank / default.rank
        config = replace(config, rank=rank, alpha=alpha)
    return config
