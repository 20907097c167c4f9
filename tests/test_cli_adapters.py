"""`pqm adapters retrain` after the served model changed: a user whose active adapter was
trained for another model gets a retraining job on their stored recordings; one without enough
recordings is skipped with the reason; one whose adapter fits is left alone."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from app.cli import main
from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.models import Adapter, EnrolmentJob, Recording, User
from app.db.session import create_engine, create_sessionmaker
from app.engine.model_import import describe_model_dir

OTHER_MODEL = "f" * 64


async def _seed(url: str, served: str) -> None:
    """alice: adapter for another model, 12 recordings; bob: the same, no recordings; carol:
    an adapter for the served model."""
    engine = create_engine(url)
    try:
        sessions = create_sessionmaker(engine)
        async with sessions() as session, session.begin():
            for name in ("alice", "bob", "carol"):
                session.add(User(id=name, name=name, api_key_hash=name * 8, api_key_prefix="p"))
            await session.flush()
            fingerprints = {"alice": OTHER_MODEL, "bob": OTHER_MODEL, "carol": served}
            session.add_all(_adapter(name, fp) for name, fp in fingerprints.items())
            session.add_all(_recording(i) for i in range(12))
    finally:
        await engine.dispose()


def _recording(index: int) -> Recording:
    return Recording(
        user_id="alice", transcript=f"sentence {index}", blob_key=f"r/{index}", duration_seconds=3
    )


def _adapter(user_id: str, fingerprint: str) -> Adapter:
    return Adapter(
        user_id=user_id,
        version=1,
        method="lora",
        rank=8,
        target_modules=["q_proj"],
        base_fingerprint=fingerprint,
        encoder_window="fit",
        blob_key=f"adapters/{user_id}",
        size_bytes=1,
        sha256="0" * 64,
        parameter_count=1,
        source="import",
        active=True,
    )


async def _jobs(url: str) -> list[tuple[str, str, bool, int]]:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            jobs = await session.scalars(select(EnrolmentJob))
            return [
                (j.user_id, j.status, bool(j.params.get("retrain")), j.utterance_count)
                for j in jobs
            ]
    finally:
        await engine.dispose()


def test_users_whose_adapter_fits_another_model_are_queued_for_retraining(
    tmp_path: Path,
    tiny_en_dir: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PQM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PQM_MODEL__PATH", str(tiny_en_dir))
    monkeypatch.setenv("PQM_DATABASE_URL", database_url)
    settings = Settings()
    upgrade_to_head(settings.resolved_database_url)
    asyncio.run(_seed(settings.resolved_database_url, describe_model_dir(tiny_en_dir).fingerprint))

    assert main(["adapters", "retrain"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("queued 1 retraining job(s), skipped 1\n")
    assert "bob: skipped: " in out
    assert asyncio.run(_jobs(settings.resolved_database_url)) == [("alice", "queued", True, 12)]
