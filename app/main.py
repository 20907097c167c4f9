"""Application factory: the lifespan wires settings, database, model and queue into `app.state`."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import app as app_package
from app.api import (
    adapters,
    audio,
    auth_check,
    enrolments,
    expert_banks,
    health,
    links,
    me,
    models,
    page,
    prompts,
    recordings,
    users,
)
from app.api import metrics as metrics_api
from app.api.middleware import (
    AccessLogMiddleware,
    AuthenticateFirstMiddleware,
    BodySizeLimitMiddleware,
)
from app.config import MIB, Settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.engine.recognizer import SpeechRecognizer
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.private_files import private_dir
from app.queue.dispatch import run_jobs
from app.services.adapters import ActiveAdapters
from app.services.auth import load_or_create_admin_key
from app.services.enrolment_worker import EnrolmentWorker
from app.services.expert_bank_worker import ExpertBankWorker
from app.services.job_worker import JobWorker, WorkerContext, default_worker_id
from app.services.model_loading import load_engine
from app.services.stores import adapter_store_for
from app.services.transcription import TranscriptionService
from app.state import ServiceState

logger = logging.getLogger(__name__)

ENROLMENT_PATH = r"/v1/users/[^/]+/enrolments"
ADAPTER_IMPORT_PATH = r"/v1/users/[^/]+/adapters"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart framing and form fields around an uploaded adapter file."""


def create_app(
    settings: Settings | None = None, recognizer: SpeechRecognizer | None = None
) -> FastAPI:
    """Builds the service. `recognizer` lets a caller share an already loaded model (tests)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await _start(settings, recognizer, metrics)
        app.state.pqm = state
        stop = asyncio.Event()
        worker = None
        if settings.enrolment.worker:
            context = _worker_context(state)
            worker = asyncio.create_task(run_jobs(context, job_workers(context), stop))
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            state.engine.shutdown()
            await state.db_engine.dispose()

    app = FastAPI(
        title="PQM Server",
        version=app_package.__version__,
        summary="Personalised speech recognition over one shared NF4-quantised Whisper.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    routers = (
        audio.router,
        auth_check.router,
        models.router,
        users.router,
        me.router,
        recordings.router,
        links.router,
        prompts.router,
        metrics_api.router,
        enrolments.router,
        adapters.router,
        expert_banks.router,
        health.router,
        page.router,
    )
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        overrides=[
            (ENROLMENT_PATH, settings.enrolment.max_upload_bytes),
            (ADAPTER_IMPORT_PATH, settings.max_adapter_bytes + MULTIPART_OVERHEAD_BYTES),
        ],
    )
    # The last added is the outermost: ids and logs around everything, then authentication,
    # which must come before anything reads the body.
    app.add_middleware(AuthenticateFirstMiddleware)
    app.add_middleware(
        AccessLogMiddleware, metrics=metrics, retry_after_s=settings.queue.retry_after_s
    )
    return app


async def _start(
    settings: Settings, recognizer: SpeechRecognizer | None, metrics: Metrics
) -> ServiceState:
    private_dir(settings.data_dir)
    database_url = settings.resolved_database_url
    await asyncio.to_thread(upgrade_to_head, database_url)
    db_engine = create_engine(database_url)
    sessions = create_sessionmaker(db_engine)
    admin_key = load_or_create_admin_key(
        settings.admin_key.get_secret_value() if settings.admin_key else None,
        settings.admin_key_file,
    )
    engine = await load_engine(settings, recognizer, metrics)
    adapter_store = adapter_store_for(settings, sessions)
    adapters = ActiveAdapters(
        adapter_store,
        engine,
        capacity_bytes=settings.adapters.host_cache_mb * MIB,
        metrics=metrics,
    )
    transcription = TranscriptionService(
        engine,
        sessions,
        adapters,
        metrics,
        max_audio_seconds=settings.max_audio_seconds,
        retry_after_s=settings.queue.retry_after_s,
        model_id=settings.model.id,
        correctable_seconds=settings.enrolment.max_file_seconds,
    )
    info = engine.info
    logger.info(
        "service ready",
        extra={
            "model": transcription.model_id,
            "precision": info.precision,
            "device": info.device,
            "weight_mb": round(info.weight_bytes / 2**20, 1),
        },
    )
    return ServiceState(
        settings=settings,
        db_engine=db_engine,
        sessions=sessions,
        admin_key=admin_key,
        engine=engine,
        transcription=transcription,
        adapter_store=adapter_store,
        started_at=int(time.time()),
        metrics=metrics,
    )


def _worker_context(state: ServiceState) -> WorkerContext:
    return WorkerContext.create(state.settings, state.sessions, state.adapter_store, state.engine)


def job_workers(context: WorkerContext) -> list[JobWorker[Any]]:
    """Every kind of job, for `run_jobs` to run in one process under one worker id:
    enrolments first, as a user waits for theirs."""
    worker_id = default_worker_id()
    return [EnrolmentWorker(context, worker_id), ExpertBankWorker(context, worker_id)]
