"""One definition of what a job does (`JobWorker.run_job`), two ways to dispatch it: with
PostgreSQL a procrastinate worker runs each job row's procrastinate job; with SQLite (the embedded
default) `run_workers` finds queued rows in this process."""

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.queue.procrastinate_worker import run_procrastinate_worker
from app.services.job_worker import JobWorker, WorkerContext, run_workers

__all__ = ["queue_conninfo", "run_jobs"]


async def run_jobs(
    context: WorkerContext, workers: Sequence[JobWorker[Any]], stop: asyncio.Event
) -> None:
    """Works until `stop` is set, one job at a time in this process; a job running then is
    stopped and re-queued."""
    conninfo = queue_conninfo(context)
    if conninfo is None:
        await run_workers(workers, stop, context.settings.poll_interval_s)
    else:
        await run_procrastinate_worker(conninfo, context.settings, workers, stop)


def queue_conninfo(context: WorkerContext) -> str | None:
    """The libpq URL procrastinate connects to: the service's PostgreSQL database; None with
    SQLite."""
    engine = context.sessions.kw["bind"]
    if not isinstance(engine, AsyncEngine) or engine.dialect.name != "postgresql":
        return None
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
