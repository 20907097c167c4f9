"""`pqm worker`: the job workers (enrolments and expert-bank builds) as a process of their own
(same database, same store), one job at a time: with PostgreSQL a procrastinate worker, with
SQLite the same loop the API process runs when `enrolment.worker` is on (`app.queue.dispatch`)."""

import asyncio
import logging
import signal

from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.main import job_workers
from app.queue.dispatch import run_jobs
from app.services.job_worker import WorkerContext
from app.services.model_loading import load_engine
from app.services.stores import adapter_store_for

logger = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> None:
    database_url = settings.resolved_database_url
    await asyncio.to_thread(upgrade_to_head, database_url)
    db_engine = create_engine(database_url)
    sessions = create_sessionmaker(db_engine)
    engine = await load_engine(settings)
    store = adapter_store_for(settings, sessions)
    context = WorkerContext.create(settings, sessions, store, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run_jobs(context, job_workers(context), stop)
    finally:
        engine.shutdown()
        await db_engine.dispose()
