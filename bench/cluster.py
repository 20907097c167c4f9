"""The deployed topology on loopback: what nginx in front of the replicas costs, and how long
the cluster takes to get over a replica killed and over its database stopped.

    python -m bench.cluster [--requests 40] [--clients 8] [--outage-s 10]
                            [--out bench/results/cluster.json]

Runs tests/support/cluster.py's cluster (its own PostgreSQL, 2 `pqm serve` replicas, 2
`pqm worker`s, nginx with docker-compose.yml's config), then:

1. **The nginx hop**: one request at a time, alternating request by request between the user's
   own replica directly and nginx (which adds the `auth_request` key check): `GET /v1/me` and
   a ~2 s transcription; p50/p95 of each and nginx's p50 over direct's.
2. **Failover**: `--clients` clients transcribe with one user's key (all on one replica) while
   that replica is killed with SIGKILL: failed requests, and the gap until every client was
   served again.
3. **Database outage**: the same load while PostgreSQL is stopped for `--outage-s`: answers by
   status (503 with Retry-After expected, never 500), and the time from its restart until every
   client was served again.

Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.engine.model_import import import_bundled_model
from bench.common import RESULTS_DIR, latency_stats_ms, print_table, synthesise, write_json
from tests.support.cluster import ADMIN_KEY, Cluster, Replica
from tests.support.load import Load, transcribe
from tests.support.waiting import until

DEFAULT_OUT = RESULTS_DIR / "cluster.json"
CLIP_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
WITHIN_S = 300.0


async def create_user(url: str) -> str:
    async with httpx.AsyncClient(timeout=60) as http:
        created = await http.post(
            f"{url}/v1/users",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    created.raise_for_status()
    key: str = created.json()["api_key"]
    return key


async def home_replica(cluster: Cluster, key: str) -> Replica:
    request_id = f"bench-home-{time.monotonic_ns()}"
    async with httpx.AsyncClient(timeout=60) as http:
        await http.get(
            f"{cluster.url}/v1/me",
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": request_id},
        )
    return cluster.serving_replica(request_id)


async def hop(
    cluster: Cluster, home: Replica, key: str, wav: bytes, requests: int
) -> dict[str, Any]:
    """Latency direct to the replica and through nginx, alternating request by request."""
    timings: dict[str, dict[str, list[float]]] = {
        kind: {"direct": [], "nginx": []} for kind in ("me", "transcription")
    }
    targets = {"direct": home.url, "nginx": cluster.url}
    async with httpx.AsyncClient(timeout=120) as http:
        for _ in range(requests):
            for target, url in targets.items():
                started = time.monotonic()
                me = await http.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"})
                me.raise_for_status()
                timings["me"][target].append(time.monotonic() - started)
                outcome = await transcribe(http, url, key, wav)
                assert outcome.ok, outcome
                timings["transcription"][target].append(outcome.ended - outcome.started)
    report: dict[str, Any] = {}
    for kind, by_target in timings.items():
        stats = {target: latency_stats_ms(seconds) for target, seconds in by_target.items()}
        stats["nginx_over_direct_p50"] = {"ratio": stats["nginx"]["p50"] / stats["direct"]["p50"]}
        report[kind] = stats
    return report


async def failover(
    cluster: Cluster, home: Replica, key: str, wav: bytes, clients: int
) -> dict[str, Any]:
    async with Load(cluster.url, key, wav, clients=clients) as load:
        started = time.monotonic()
        await until(load.served_since(started), WITHIN_S, "every client served")
        killed_at = time.monotonic()
        home.process.kill()
        await until(load.served_since(killed_at), WITHIN_S, "every client served after the kill")
    await cluster.revive(home)
    return {
        "requests": len(load.outcomes),
        "failed": sum(not outcome.ok for outcome in load.outcomes),
        "gap_s": load.all_served_again_after(killed_at),
    }


async def outage(
    cluster: Cluster, key: str, wav: bytes, clients: int, outage_s: float
) -> dict[str, Any]:
    async with Load(cluster.url, key, wav, clients=clients) as load:
        started = time.monotonic()
        await until(load.served_since(started), WITHIN_S, "every client served")
        stopped_at = time.monotonic()
        await asyncio.to_thread(cluster.postgres.stop)
        # The outage's length is what is measured against, not a synchronisation.
        await asyncio.sleep(max(0.0, stopped_at + outage_s - time.monotonic()))
        await asyncio.to_thread(cluster.postgres.start)
        restarted_at = time.monotonic()
        await until(load.served_since(restarted_at), WITHIN_S, "every client served again")
    statuses = Counter(str(outcome.status) for outcome in load.outcomes)
    refused = [o for o in load.outcomes if o.status == 503]
    return {
        "outage_s": restarted_at - stopped_at,
        "statuses": dict(statuses),
        "refused_without_retry_after": sum(o.retry_after is None for o in refused),
        "recovered_s": load.all_served_again_after(restarted_at),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = await asyncio.to_thread(import_bundled_model, "tiny.en", work / "models")
    wav = synthesise(CLIP_TEXT, work / "clip.wav").read_bytes()
    started = time.monotonic()
    async with Cluster(model_dir, work / "cluster") as cluster:
        ready_s = time.monotonic() - started
        key = await create_user(cluster.url)
        home = await home_replica(cluster, key)
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "options": {"requests": args.requests, "clients": args.clients},
            "startup_s": ready_s,
            "hop": await hop(cluster, home, key, wav, args.requests),
            "failover": await failover(cluster, home, key, wav, args.clients),
            "database_outage": await outage(cluster, key, wav, args.clients, args.outage_s),
        }


def print_report(report: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for kind, stats in report["hop"].items():
        direct, nginx = stats["direct"], stats["nginx"]
        ratio = stats["nginx_over_direct_p50"]["ratio"]
        rows.append(
            [kind, direct["p50"], direct["p95"], nginx["p50"], nginx["p95"], f"{ratio:.3f}x"]
        )
    print_table(
        ["request", "direct p50 ms", "p95", "nginx p50 ms", "p95", "nginx / direct p50"], rows
    )
    failover, outage = report["failover"], report["database_outage"]
    print()
    print_table(
        ["event", "requests", "failed / statuses", "back in s"],
        [
            ["start-up (all at once)", None, None, report["startup_s"]],
            ["replica kill -9", failover["requests"], failover["failed"], failover["gap_s"]],
            [
                f"database stopped {outage['outage_s']:.0f} s",
                sum(outage["statuses"].values()),
                " ".join(f"{s}:{n}" for s, n in sorted(outage["statuses"].items())),
                outage["recovered_s"],
            ],
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--requests", type=int, default=40, help="per path, for the nginx hop")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pqm-cluster-bench-"))
    try:
        report = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
