"""The procrastinate worker (PostgreSQL): one job at a time, woken by LISTEN/NOTIFY when a job is
deferred, beside a sweep that recovers the jobs of workers that stopped.

procrastinate records a heartbeat per worker; a job still `doing` under a worker whose heartbeat
is older than `stale_after_s` (or that another worker pruned) lost its worker: the sweep ends it
and, in the same transaction, re-queues its row with a new procrastinate job, or fails it once it
used its attempts (`JobWorker.recover_stalled_dispatch`).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.exceptions import JobAborted

from app.config import EnrolmentSettings
from app.db.enrolment_status import EnrolmentStatus
from app.db.job_queue import QUEUE
from app.db.models import JobMixin
from app.services.job_worker import JobWorker

__all__ = ["JobFailed", "prune_finished", "queue_app", "recover", "run_procrastinate_worker"]

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0


async def run_procrastinate_worker(
    conninfo: str,
    settings: EnrolmentSettings,
    workers: Sequence[JobWorker[Any]],
    stop: asyncio.Event,
) -> None:
    """Works until `stop` is set: a job running then is stopped and re-queued by its worker,
    and procrastinate takes no other. A failure (the database went away) starts it again."""
    for worker in workers:
        worker.stop_with(stop)
    by_task = {worker.task_name: worker for worker in workers}
    while not stop.is_set():
        try:
            await _run(queue_app(conninfo, by_task), by_task, settings, stop)
        except Exception:  # the worker must outlive any single failure
            logger.exception("the procrastinate worker failed; starting it again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.poll_interval_s)


async def _run(
    app: App,
    by_task: Mapping[str, JobWorker[Any]],
    settings: EnrolmentSettings,
    stop: asyncio.Event,
) -> None:
    """procrastinate's worker and the sweep beside it, until `stop` is set or the worker fails
    (raised here)."""
    name = next(iter(by_task.values())).worker_id
    async with app.open_async():
        consuming = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                concurrency=1,
                name=name,
                install_signal_handlers=False,
                fetch_job_polling_interval=settings.poll_interval_s,
                update_heartbeat_interval=settings.heartbeat_interval_s,
                stalled_worker_timeout=settings.stale_after_s,
            ),
            name="procrastinate worker",
        )
        sweeping = asyncio.create_task(_sweep(app, by_task, settings, stop), name="job sweep")
        try:
            await asyncio.wait({consuming, sweeping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelling procrastinate's worker stops it gracefully: it waits for the job it
            # runs, which `stop` ends.
            for task in (consuming, sweeping):
                task.cancel()
            ended = await asyncio.gather(consuming, sweeping, return_exceptions=True)
        for outcome in ended:
            if isinstance(outcome, Exception):
                raise outcome


def queue_app(conninfo: str, by_task: Mapping[str, JobWorker[Any]]) -> App:
    """A procrastinate app whose tasks are `by_task`'s workers' `run_job`."""
    app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4))
    for name, worker in by_task.items():
        app.task(name=name, queue=QUEUE, pass_context=True)(_task(worker))
    return app


class JobFailed(Exception):
    """The job row failed: its procrastinate job fails too (it has no retry strategy: a
    failing training would fail again; a stopped worker's job is retried by the sweep)."""


def _task(worker: JobWorker[Any]) -> Callable[[JobContext, str], Awaitable[None]]:
    async def run(context: JobContext, job_id: str) -> None:
        await worker.run_job(job_id, queue_job_id=context.job.id)
        _end_as(await worker.stored(job_id))

    return run


def _end_as(job: JobMixin | None) -> None:
    """Ends the procrastinate job as its row ended, so that procrastinate's own view (its
    statuses, its admin) tells the same story: succeeded, failed, or aborted (cancelled, deleted,
    or handed on to a new procrastinate job when this worker shut down)."""
    if job is None:
        raise JobAborted("the job was deleted")
    if job.status == EnrolmentStatus.SUCCEEDED:
        return
    if job.status == EnrolmentStatus.FAILED:
        raise JobFailed(job.error)
    raise JobAborted(f"the job is {job.status}")


async def recover(app: App, by_task: Mapping[str, JobWorker[Any]], stalled_after_s: float) -> None:
    """One sweep: the procrastinate jobs of stopped workers, then rows whose heartbeat stopped
    without one (a run that could not record its end), then each kind's housekeeping."""
    stalled = await app.job_manager.get_stalled_jobs(
        queue=QUEUE, seconds_since_heartbeat=stalled_after_s
    )
    for job in stalled:
        worker = by_task.get(job.task_name)
        if worker is not None and job.id is not None:
            await worker.recover_stalled_dispatch(job.id, str(job.task_kwargs["job_id"]))
    for worker in by_task.values():
        await worker.recover_stale_jobs()
        await worker.housekeeping()


async def prune_finished(app: App, kept_h: int) -> None:
    """Deletes procrastinate's records of this queue's jobs that ended over `kept_h` hours ago
    (the job rows, which say what happened, stay)."""
    await app.job_manager.delete_old_jobs(
        nb_hours=kept_h,
        queue=QUEUE,
        include_failed=True,
        include_cancelled=True,
        include_aborted=True,
    )


async def _sweep(
    app: App,
    by_task: Mapping[str, JobWorker[Any]],
    settings: EnrolmentSettings,
    stop: asyncio.Event,
) -> None:
    pruned_at: float | None = None
    while not stop.is_set():
        try:
            await recover(app, by_task, settings.stale_after_s)
            # Hourly: procrastinate's query scans every finished job.
            if pruned_at is None or time.monotonic() - pruned_at >= PRUNE_INTERVAL_S:
                await prune_finished(app, settings.queue_jobs_kept_h)
                pruned_at = time.monotonic()
        except Exception:  # the sweep must outlive any single failure
            logger.exception("job sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_interval_s)
