"""Enrolment beside serving: how long a real speaker's enrolment takes, and what it does to the
latency of everyone else's requests, for each training priority, side by side in one run.

    python -m bench.enrolment_load [--speaker 0001] [--priorities normal,idle] [--threads 2]
                                   [--pause 1.0] [--out docs/benchmarks/enrolment_load.json]

Per priority, a fresh `pqm serve` on its embedded defaults (SQLite, bundled tiny.en in NF4, the
job worker in the API process) with `PQM_ENROLMENT__TRAINING_PRIORITY` set. First base-model
requests one at a time (another pool speaker's recordings, `--pause` seconds apart) give the
idle latency; then the speaker (speechocean762 pool half: tuning data, never the evaluation
half) enrols all 20 recordings through the API, and the same requests keep coming while the job
is queued or running. Reported: the job's wall time (upload to finished, all folds of the gate
included), p50/p95 latency idle and during training and their ratio, and what the gate decided.
Targets (issue #16): the job within 180 s on 2 cores, p50 during training at most 1.5x idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import latency_stats_ms, print_table, write_json
from bench.service_process import (
    ADMIN_KEY,
    ServiceProcess,
    create_user,
    enrol,
    job_status,
    transcribe,
)
from bench.speechocean import ATTRIBUTION, build_suite

DEFAULT_OUT = Path("docs/benchmarks/enrolment_load.json")
PROBE_SPEAKER = "0006"
"""Whose recordings the base-model requests send (pool half, not the enrolling speaker)."""


def log(message: str) -> None:
    print(f"[enrolment_load] {message}", flush=True)


async def one_priority(
    priority: str,
    model_dir: Path,
    work: Path,
    recordings: list[tuple[bytes, str]],
    probes: list[bytes],
    threads: int,
    pause_s: float,
) -> dict[str, Any]:
    settings = {"PQM_ENROLMENT__TRAINING_PRIORITY": priority}
    async with httpx.AsyncClient(timeout=600) as client:
        with ServiceProcess(work / priority, model_dir, threads, settings) as server:
            for probe in probes[:3]:  # warm-up
                await transcribe(client, server.url, probe, ADMIN_KEY)
            idle = []
            for index in range(2 * len(probes)):
                await asyncio.sleep(pause_s)
                reply = await transcribe(client, server.url, probes[index % len(probes)], ADMIN_KEY)
                idle.append(reply.seconds)
            user = await create_user(client, server.url, "enrolling-speaker")
            started = time.monotonic()
            job = await enrol(client, server.url, user, recordings)
            during: list[float] = []
            while (status := await job_status(client, server.url, job["id"]))["status"] in (
                "queued",
                "running",
            ):
                await asyncio.sleep(pause_s)
                probe = probes[len(during) % len(probes)]
                during.append((await transcribe(client, server.url, probe, ADMIN_KEY)).seconds)
            wall = time.monotonic() - started
    if status["status"] != "succeeded":
        raise RuntimeError(f"enrolment {status['status']}: {status.get('error')}")
    idle_stats, during_stats = latency_stats_ms(idle), latency_stats_ms(during)
    result = {
        "priority": priority,
        "enrolment_seconds": round(wall, 1),
        "latency_idle_ms": idle_stats,
        "latency_during_training_ms": during_stats,
        "p50_ratio": round(during_stats["p50"] / idle_stats["p50"], 2),
        "requests_during_training": len(during),
        "activated": status["activated"],
        "activation_reason": status["activation_reason"],
        "gate": status["metrics"].get("gate"),
    }
    log(f"{priority}: enrolment {wall:.0f} s, p50 ratio {result['p50_ratio']}")
    return result


async def run(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model
    from bench.speakers import load

    model_dir = import_bundled_model("tiny.en", work / "models")
    pool = build_suite("pool", [options.speaker, PROBE_SPEAKER])
    speaker = pool.speakers[options.speaker]
    utterances = [*speaker.train, *speaker.test]
    recordings = [(u.path.read_bytes(), u.text) for u in utterances]
    probes = [u.path.read_bytes() for u in pool.speakers[PROBE_SPEAKER].train[:6]]
    audio_s = sum(len(load(u)) for u in utterances) / 16_000
    log(f"{options.speaker}: {len(recordings)} recordings, {audio_s:.0f} s of audio")
    started = time.perf_counter()
    runs = [
        await one_priority(
            priority, model_dir, work, recordings, probes, options.threads, options.pause
        )
        for priority in options.priorities.split(",")
    ]
    return {
        "benchmark": "enrolment_load",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "speaker": options.speaker,
        "recordings": len(recordings),
        "audio_seconds": round(audio_s, 1),
        "probe_speaker": PROBE_SPEAKER,
        "pause_s": options.pause,
        "threads": options.threads,
        "runs": runs,
        "targets": {"enrolment_seconds": 180, "p50_ratio": 1.5},
        "data": ATTRIBUTION,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def print_report(report: dict[str, Any]) -> None:
    rows = [
        [
            run["priority"],
            run["enrolment_seconds"],
            run["latency_idle_ms"]["p50"],
            run["latency_idle_ms"]["p95"],
            run["latency_during_training_ms"]["p50"],
            run["latency_during_training_ms"]["p95"],
            run["p50_ratio"],
            "yes" if run["activated"] else "no",
        ]
        for run in report["runs"]
    ]
    print_table(
        (
            "priority",
            "enrolment s",
            "idle p50 ms",
            "idle p95 ms",
            "training p50 ms",
            "training p95 ms",
            "p50 ratio",
            "activated",
        ),
        rows,
    )
    for run in report["runs"]:
        print(f"{run['priority']}: {run['activation_reason']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enrolment_load", description=__doc__)
    parser.add_argument("--speaker", default="0001", help="a speechocean762 pool-half speaker")
    parser.add_argument("--priorities", default="normal,idle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pqm-enrolment-load-"))
    try:
        report = asyncio.run(run(options, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    write_json(options.out, report)
    print(f"\nwrote {options.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
