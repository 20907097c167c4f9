"""What the per-request read of a user's active adapter costs, with many users at once.

    python -m bench.adapter_lookup [--users 32] [--reads 100]
                                   [--postgres postgresql://postgres@127.0.0.1:5432/test]
                                   [--out bench/results/adapter_lookup.json]

Every transcription asks the database for the caller's active adapter (`AdapterRepository.
active_for_user`, in its own session), so that an activation through any replica applies to the
next request everywhere. This measures that read as the service makes it: `--users` users, each
with an active adapter row, read concurrently by as many tasks (`--reads` each), on PostgreSQL
(a fresh database on `--postgres`'s server, migrated to head) and on SQLite (the embedded
default), beside the latency of one tiny.en NF4 transcription of a 4 s sentence in the same run:
the read's share of a request decides whether to keep it or replace it with cached rows
invalidated by LISTEN/NOTIFY. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.common import RESULTS_DIR, load_audio_16k, print_table, synthesise, write_json

DEFAULT_OUT = RESULTS_DIR / "adapter_lookup.json"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


async def _seed(url: str, users: int) -> list[str]:
    """`users` users with an active adapter row each (the read never touches the weights)."""
    from app.db.models import Adapter, User
    from app.db.session import create_engine, create_sessionmaker

    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    ids = [uuid.uuid4().hex for _ in range(users)]
    async with sessions() as session, session.begin():
        for user_id in ids:
            session.add(
                User(id=user_id, name=user_id, api_key_hash=user_id * 2, api_key_prefix="b")
            )
        await session.flush()  # the users before their adapters (no ORM relationship orders them)
        session.add_all(_adapter(Adapter, user_id) for user_id in ids)
    await engine.dispose()
    return ids


def _adapter(model: Any, user_id: str) -> Any:
    return model(
        user_id=user_id,
        version=1,
        method="lora",
        rank=8,
        target_modules=["q_proj"],
        base_fingerprint="0" * 64,
        encoder_window="fit",
        blob_key=f"adapters/{user_id}",
        size_bytes=1,
        sha256="0" * 64,
        parameter_count=1,
        source="import",
        active=True,
    )


async def _reads(url: str, ids: list[str], reads: int) -> list[float]:
    """Seconds per read, every user's task reading `reads` times at once."""
    from app.db.repositories.adapters import AdapterRepository
    from app.db.session import create_engine, create_sessionmaker

    engine = create_engine(url)
    sessions = create_sessionmaker(engine)

    async def user(user_id: str) -> list[float]:
        took = []
        for _ in range(reads):
            start = time.perf_counter()
            async with sessions() as session:
                row = await AdapterRepository(session).active_for_user(user_id)
            took.append(time.perf_counter() - start)
            assert row is not None
        return took

    await user(ids[0])  # connections opened, statements prepared
    per_user = await asyncio.gather(*(user(user_id) for user_id in ids))
    await engine.dispose()
    return [seconds for took in per_user for seconds in took]


def _postgres_database(server: str) -> tuple[str, str]:
    name = f"pqm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server.rpartition('/')[0]}/{name}", name


def _drop(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _measure(url: str, users: int, reads: int) -> dict[str, Any]:
    """Reads alone (one user at a time) and all users at once: latency, and reads per second
    at once (what the read costs the process's CPU: its inverse)."""
    from app.db.migrate import upgrade_to_head

    upgrade_to_head(url)
    ids = asyncio.run(_seed(url, users))
    alone = asyncio.run(_reads(url, ids[:1], reads))
    start = time.perf_counter()
    together = asyncio.run(_reads(url, ids, reads))
    elapsed = time.perf_counter() - start
    return {
        "alone_ms": _stats_ms(alone),
        "concurrent_ms": _stats_ms(together),
        "reads_per_s": round(len(together) / elapsed),
    }


def _transcription_s(threads: int, rounds: int = 10) -> list[float]:
    from app.engine.model_import import import_bundled_model
    from app.engine.types import TranscriptionOptions
    from app.engine.whisper import WhisperEngine

    engine = WhisperEngine.load(
        import_bundled_model("tiny.en", RESULTS_DIR / "models"),
        precision="nf4",
        device="cpu",
        threads=threads,
    )
    with tempfile.TemporaryDirectory() as tmp:
        wav = synthesise("The birch canoe slid on the smooth planks.", Path(tmp) / "s.wav")
        audio = load_audio_16k(wav)
    engine.transcribe(audio, TranscriptionOptions(language="en"))  # warm-up
    took = []
    for _ in range(rounds):
        start = time.perf_counter()
        engine.transcribe(audio, TranscriptionOptions(language="en"))
        took.append(time.perf_counter() - start)
    return took


def _stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {q: round(float(np.percentile(values, p)), 2) for q, p in (("p50", 50), ("p95", 95))}


def run(users: int, reads: int, postgres: str, threads: int) -> dict[str, Any]:
    url, name = _postgres_database(postgres)
    try:
        on_postgres = _measure(url, users, reads)
    finally:
        _drop(postgres, name)
    with tempfile.TemporaryDirectory() as tmp:
        on_sqlite = _measure(f"sqlite:///{tmp}/pqm.db", users, reads)
    transcription = _stats_ms(_transcription_s(threads))
    backends = {"postgresql": on_postgres, "sqlite": on_sqlite}
    for stats in backends.values():
        alone = stats["alone_ms"]["p50"]
        stats["alone_p50_over_transcription_p50"] = round(alone / transcription["p50"], 4)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "users": users,
        "reads_per_user": reads,
        "read_ms": backends,
        "transcription_ms": transcription,
    }


def table(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    headers = [
        "backend",
        "alone p50 ms",
        "alone / transcription",
        f"{report['users']} at once p50 ms",
        "p95 ms",
        "reads/s",
    ]
    rows: list[list[object]] = [
        [
            name,
            stats["alone_ms"]["p50"],
            stats["alone_p50_over_transcription_p50"],
            stats["concurrent_ms"]["p50"],
            stats["concurrent_ms"]["p95"],
            stats["reads_per_s"],
        ]
        for name, stats in report["read_ms"].items()
    ]
    t = report["transcription_ms"]
    rows.append(["(tiny.en NF4 transcription, 4 s)", t["p50"], 1.0, "-", t["p95"], "-"])
    return headers, rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(args.users, args.reads, args.postgres, args.threads)
    print_table(*table(report))
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
