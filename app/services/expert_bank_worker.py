"""The expert-bank worker: builds each bank queued through `POST /v1/expert-banks` from its
contributors' stored recordings, one at a time (claiming, heartbeats, cancelling and recovery:
`job_worker`)."""

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.job_queue import EXPERT_BANK_TASK
from app.db.models import ExpertBank
from app.db.repositories.expert_banks import ExpertBankRepository
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.training import TrainingCancelled, TrainingResult
from app.engine.training.bank import PoolSpeaker
from app.engine.training.process import BankRequest, run_in_subprocess
from app.services.blob_keys import bank_key
from app.services.expert_banks import (
    MIN_SPEAKERS,
    built_bank,
    requested_build,
    store_bank_file,
)
from app.services.job_worker import JobWorker, Progress, StopCheck
from app.services.recordings import stored_utterance

__all__ = ["ExpertBankWorker", "OtherBaseModel", "TooFewSpeakers"]

logger = logging.getLogger(__name__)


class TooFewSpeakers(Exception):
    """Fewer than `MIN_SPEAKERS` of the build's contributors have recordings left to learn
    from."""


class OtherBaseModel(Exception):
    """The build was asked for another base model than the one this worker serves."""


class ExpertBankWorker(JobWorker[ExpertBank]):
    """Builds each bank in the child process, then stores its file and marks the build succeeded
    in one transaction. A contributor who withdraws cancels the build (see
    `withdraw_contributor`); one who has no recordings left is left out."""

    kind = "expert bank build"
    task_name = EXPERT_BANK_TASK

    def _jobs(self, session: AsyncSession) -> ExpertBankRepository:
        return ExpertBankRepository(session)

    async def _work(self, job: ExpertBank) -> None:
        served = self._ctx.engine.info.fingerprint
        if job.base_fingerprint != served:
            raise OtherBaseModel(
                f"the bank was asked for base model {job.base_fingerprint[:12]}; "
                f"this worker serves {served[:12]}"
            )
        settings = self._ctx.settings
        request = BankRequest(
            model_dir=self._ctx.model_dir,
            speakers=await self._speakers(job),
            config=requested_build(job).config(threads=settings.training_threads),
            precision=self._ctx.precision,
            device=self._ctx.device,
            priority=settings.training_priority,
        )

        def build(progress: Progress, should_stop: StopCheck) -> TrainingResult:
            return run_in_subprocess(request, progress, should_stop)

        result = await self._in_child(job.id, build)
        await self._record(job.id, built_bank(result), result.metrics)
        logger.info("expert bank built", extra={"job_id": job.id, "worker_id": self.worker_id})

    async def _speakers(self, job: ExpertBank) -> list[PoolSpeaker]:
        async with self._ctx.sessions() as session:
            if (await self._claimed(session, job.id)).cancel_requested:
                # A contributor who withdrew since the claim cancels it, not fails it.
                raise TrainingCancelled("the build was cancelled before it started")
            contributed = await ExpertBankRepository(session).contributed_recordings(job)
        store = self._ctx.store
        speakers = [
            PoolSpeaker(user_id, [await stored_utterance(store, r) for r in recordings])
            for user_id, recordings in contributed.items()
            if recordings
        ]
        if len(speakers) < MIN_SPEAKERS:
            raise TooFewSpeakers(
                f"only {len(speakers)} of the build's contributors still have recordings to "
                f"learn from (the others withdrew or deleted theirs); a bank needs "
                f"{MIN_SPEAKERS}"
            )
        return speakers

    async def _record(self, bank_id: str, weights: SamlWeights, metrics: dict[str, Any]) -> None:
        """The bank's file stored and its build succeeded, or neither."""
        written = False
        try:
            async with self._succeeding(bank_id) as (session, bank):
                await store_bank_file(session, self._ctx.store, bank, weights)
                written = True
                bank.metrics = {**metrics, "source": "contributors"}
        except Exception:
            # A filesystem store's file does not roll back with the transaction. The key is
            # the bank's own, so only a file this run wrote is deleted.
            if written:
                await self._ctx.store.delete(bank_key(bank_id))
            raise
