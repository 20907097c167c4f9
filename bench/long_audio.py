"""Memory of the service under long audio: hours of silence through a real `pqm serve`.

    python -m bench.long_audio [--threads 2] [--hours 4] [--concurrent 4] [--each-hours 1]
                               [--noise-hours 0.25] [--out docs/benchmarks/long_audio.json]

A 363 KB FLAC of 4 h of silence once took the server from 1.3 GB to 10.5 GB RSS (issue #15):
the decoded samples and the log-mel spectrogram were held whole. This runs, against one
`pqm serve` process on loopback with the bundled tiny.en:

1. a warm-up request (a spoken sentence), then the server idles until it has given memory
   back: its RSS then is the **baseline**;
2. one request of `--hours` of digital silence (FLAC, made by sox);
3. `--concurrent` requests of `--each-hours` each, at once;
4. one request of `--noise-hours` of faint white noise (peak -58 dBFS): not digital silence, so
   every window is featurised and decoded by the model (the silent loads skip that work).

For each load, the server's peak RSS (the kernel's high-water mark `VmHWM`, reset before the
load, and RSS sampled every 20 ms where it cannot be reset) minus the baseline is the growth;
the target is at most 512 MiB for each. Wall time and every reply are recorded. Prints a table
and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import MIB, REPO_ROOT, RESULTS_DIR, print_table, synthesise, write_json
from bench.service_process import ADMIN_KEY, Reply, ServiceProcess, transcribe

DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "long_audio.json"
MODELS_DIR = RESULTS_DIR / "models"
TARGET_GROWTH_BYTES = 512 * MIB
RSS_SAMPLE_S = 0.02
IDLE_S = 3.0
"""Longer than the scheduler's idle tidy-up delay: memory freed by a load is given back."""
WARM_UP = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class Options:
    threads: int
    hours: float
    concurrent: int
    each_hours: float
    noise_hours: float


def log(message: str) -> None:
    print(f"[long_audio] {message}", file=sys.stderr, flush=True)


def silent_flac(path: Path, hours: float) -> bytes:
    """Digital silence at 16 kHz, 16 bit (sox -D: no dither, so it stays silence)."""
    return _sox(path, "trim", "0", f"{hours * 3600:.0f}")


def noise_flac(path: Path, hours: float) -> bytes:
    """White noise at +-33 LSB of 16 bit (peak -58 dBFS, RMS -70 dBFS)."""
    return _sox(path, "synth", f"{hours * 3600:.0f}", "whitenoise", "vol", "0.001")


def _sox(path: Path, *effects: str) -> bytes:
    subprocess.run(
        ["sox", "-D", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), *effects],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


async def load_peak(
    client: httpx.AsyncClient, server: ServiceProcess, files: list[bytes]
) -> tuple[list[Reply], int, float, str]:
    """All `files` at once: the replies, the peak RSS, the wall time and how the peak was taken."""
    exact = server.reset_peak_rss()
    peak = server.rss_bytes()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_bytes())
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    try:
        replies = await asyncio.gather(
            *(transcribe(client, server.url, data, ADMIN_KEY) for data in files)
        )
    finally:
        done.set()
        await sampler
    wall = time.perf_counter() - start
    high_water = server.peak_rss_bytes() if exact else None
    how = "VmHWM reset before the load, and RSS sampled every 20 ms"
    return replies, max(peak, high_water or 0), wall, how if exact else "RSS sampled every 20 ms"


async def idle_rss(server: ServiceProcess) -> int:
    await asyncio.sleep(IDLE_S)
    return server.rss_bytes()


async def measure(
    client: httpx.AsyncClient, server: ServiceProcess, name: str, files: list[bytes], hours: float
) -> dict[str, Any]:
    baseline = await idle_rss(server)
    log(f"{name}: {len(files)} x {hours:g} h, baseline {baseline / MIB:.0f} MiB")
    replies, peak, wall, how = await load_peak(client, server, files)
    growth = peak - baseline
    return {
        "requests": len(files),
        "hours_each": hours,
        "file_bytes_each": len(files[0]),
        "statuses": [reply.status for reply in replies],
        "texts": [reply.text for reply in replies],
        "wall_seconds": round(wall, 1),
        "request_seconds": [round(reply.seconds, 1) for reply in replies],
        "rss_baseline_bytes": baseline,
        "rss_peak_bytes": peak,
        "rss_growth_bytes": growth,
        "rss_peak_source": how,
        "spooled_bytes_each": round(hours * 3600 * 16_000 * 4),
        "target_growth_bytes": TARGET_GROWTH_BYTES,
        "within_target": growth <= TARGET_GROWTH_BYTES and all(r.status == 200 for r in replies),
    }


async def run(options: Options, work: Path) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    started = time.perf_counter()
    model_dir = import_bundled_model("tiny.en", MODELS_DIR)
    log("making the FLACs with sox")
    long_file = silent_flac(work / "long.flac", options.hours)
    each_file = silent_flac(work / "each.flac", options.each_hours)
    noise_file = (
        noise_flac(work / "noise.flac", options.noise_hours) if options.noise_hours else b""
    )
    warm_up = synthesise(WARM_UP, work / "warm_up.wav").read_bytes()
    spool = work / "spool"  # the server's TMPDIR: where long audio is spooled
    spool.mkdir()
    settings = {
        "TMPDIR": str(spool),
        "PQM_MAX_AUDIO_SECONDS": str(max(options.hours, options.each_hours) * 3600),
        "PQM_QUEUE__MAX_PENDING_AUDIO_S": str(
            max(options.hours, options.concurrent * options.each_hours) * 3600
        ),
        "PQM_ENROLMENT__WORKER": "false",
        "PQM_MAX_UPLOAD_BYTES": str(max(len(noise_file), 25 * MIB) + MIB),
    }
    report: dict[str, Any] = {}
    with ServiceProcess(work / "data", model_dir, options.threads, settings) as server:
        async with httpx.AsyncClient(timeout=3600) as client:
            warm = await transcribe(client, server.url, warm_up, ADMIN_KEY)
            log(f"warm-up: {warm.status} {warm.text!r}")
            report["warm_up"] = {"status": warm.status, "text": warm.text}
            report["one_long"] = await measure(
                client, server, "one long request", [long_file], options.hours
            )
            report["concurrent"] = await measure(
                client,
                server,
                "concurrent requests",
                [each_file] * options.concurrent,
                options.each_hours,
            )
            if noise_file:
                report["noise"] = await measure(
                    client, server, "faint noise", [noise_file], options.noise_hours
                )
            report["rss_after_idle_bytes"] = await idle_rss(server)
    report["meta"] = {
        "benchmark": "long_audio",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "model": "tiny.en (bundled), nf4",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    rows = []
    loads = (("one_long", "silence"), ("concurrent", "silence, at once"), ("noise", "faint noise"))
    for key, label in loads:
        if key not in report:
            continue
        load = report[key]
        rows.append(
            [
                label,
                f"{load['requests']} x {load['hours_each']:g} h",
                ",".join(str(status) for status in sorted(set(load["statuses"]))),
                round(load["rss_baseline_bytes"] / MIB),
                round(load["rss_peak_bytes"] / MIB),
                round(load["rss_growth_bytes"] / MIB),
                round(load["target_growth_bytes"] / MIB),
                load["wall_seconds"],
                "yes" if load["within_target"] else "NO",
            ]
        )
    print_table(
        [
            "load",
            "audio",
            "status",
            "baseline MiB",
            "peak MiB",
            "growth MiB",
            "target MiB",
            "wall s",
            "ok",
        ],
        rows,
    )
    print(f"peak source: {report['one_long']['rss_peak_source']}")


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.long_audio", description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hours", type=float, default=4.0, help="the one long request")
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--each-hours", type=float, default=1.0, help="each concurrent request")
    parser.add_argument("--noise-hours", type=float, default=0.25, help="0: no noise load")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    options = Options(args.threads, args.hours, args.concurrent, args.each_hours, args.noise_hours)
    return options, args.out


def main(argv: Sequence[str] | None = None) -> int:
    options, out = parse_options(argv)
    work = Path(tempfile.mkdtemp(prefix="pqm-long-audio-"))
    try:
        report = asyncio.run(run(options, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    write_json(out, report)
    print(f"\nwrote {out}")
    loads = [report[key] for key in ("one_long", "concurrent", "noise") if key in report]
    return 0 if all(load["within_target"] for load in loads) else 1


if __name__ == "__main__":
    raise SystemExit(main())
