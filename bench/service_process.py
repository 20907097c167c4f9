"""The service as the benchmarks meet it: a real `pqm serve` process on loopback, and the HTTP
calls a client makes (users, enrolment, adapter import, transcription, metrics)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT

ADMIN_KEY = "bench-admin-key-0123456789abcdef0123"
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def reset_peak_rss(pid: int) -> bool:
    """Restarts the kernel's record of the process's peak RSS (`VmHWM`) from its current RSS;
    False where the kernel does not allow it (then only sampling can find peaks)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes(pid: int) -> int | None:
    """The process's highest RSS since it started or since `reset_peak_rss`: every transient
    counted, however short, which sampling misses or catches by chance. None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


class ServiceProcess:
    """`python -m app.cli serve` in its own process, configured through `PQM_*` variables."""

    def __init__(
        self, data_dir: Path, model_dir: Path, threads: int, settings: Mapping[str, str]
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = dict(settings)
        env = dict(os.environ)
        env.update(
            {
                "PQM_DATA_DIR": str(data_dir),
                "PQM_ADMIN_KEY": ADMIN_KEY,
                "PQM_MODEL__PATH": str(model_dir),
                "PQM_MODEL__THREADS": str(threads),
                "PQM_LOG_LEVEL": os.environ.get("PQM_BENCH_SERVER_LOG_LEVEL", "WARNING"),
                "OMP_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false",
                **self.settings,
            }
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self) -> float:
        """Blocks until /readyz answers 200; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < READY_TIMEOUT_S:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited with {self._process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the server did not become ready")

    def rss_bytes(self) -> int:
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def reset_peak_rss(self) -> bool:
        return reset_peak_rss(self.pid)

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(self.pid)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> ServiceProcess:
        self.wait_ready()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    adapter_id: str
    seconds: float


async def transcribe(
    client: httpx.AsyncClient, url: str, wav: bytes, key: str, **fields: str
) -> Reply:
    data = {"model": "whisper-tiny.en", "language": "en", **fields}
    start = time.perf_counter()
    response = await client.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("audio.wav", wav, "audio/wav")},
        data=data,
        headers=bearer(key),
    )
    seconds = time.perf_counter() - start
    text = response.json().get("text", "") if response.status_code == 200 else response.text
    return Reply(response.status_code, text, response.headers.get("x-adapter-id", ""), seconds)


async def create_user(client: httpx.AsyncClient, url: str, name: str) -> dict[str, Any]:
    response = await client.post(f"{url}/v1/users", json={"name": name}, headers=admin())
    response.raise_for_status()
    user: dict[str, Any] = response.json()
    return user


async def import_adapter(
    client: httpx.AsyncClient, url: str, user_id: str, data: bytes
) -> dict[str, Any]:
    response = await client.post(
        f"{url}/v1/users/{user_id}/adapters",
        files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        headers=admin(),
    )
    if response.status_code != 201:
        raise RuntimeError(f"import refused: {response.status_code} {response.text}")
    adapter: dict[str, Any] = response.json()
    return adapter


async def export_adapter(
    client: httpx.AsyncClient, url: str, user_id: str, adapter_id: str
) -> bytes:
    response = await client.get(
        f"{url}/v1/users/{user_id}/adapters/{adapter_id}/weights", headers=admin()
    )
    response.raise_for_status()
    return response.content


async def enrol(
    client: httpx.AsyncClient,
    url: str,
    user: dict[str, Any],
    recordings: list[tuple[bytes, str]],
) -> dict[str, Any]:
    files = [("files", (f"{i:03d}.wav", wav, "audio/wav")) for i, (wav, _) in enumerate(recordings)]
    data = {"transcripts": [text for _, text in recordings]}
    response = await client.post(
        f"{url}/v1/users/{user['id']}/enrolments",
        files=files,
        data=data,
        headers=bearer(user["api_key"]),
        timeout=300,
    )
    if response.status_code != 202:
        raise RuntimeError(f"enrolment refused: {response.status_code} {response.text}")
    job: dict[str, Any] = response.json()
    return job


async def job_status(client: httpx.AsyncClient, url: str, job_id: str) -> dict[str, Any]:
    response = await client.get(f"{url}/v1/enrolments/{job_id}", headers=admin())
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    return job


async def metrics_text(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(f"{url}/metrics", headers=admin())
    response.raise_for_status()
    return response.text


def metric(text: str, sample: str) -> float | None:
    """The value of the Prometheus sample line starting with `sample` (name and labels)."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.MULTILINE)
    return None if match is None else float(match.group(1))


def decode_passes(text: str, step: float = 0.2) -> float:
    """Decoder passes behind `pqm_decoded_windows_total`: a window kept at temperature t was
    decoded at 0, `step`, ..., t (the default fallback schedule, for requests at 0)."""
    pattern = r'^pqm_decoded_windows_total{[^}]*temperature="([^"]+)"[^}]*} (\S+)$'
    return sum(
        (round(float(temperature) / step) + 1) * float(count)
        for temperature, count in re.findall(pattern, text, flags=re.MULTILINE)
    )


def histogram_quantile(text: str, name: str, quantile: float) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of histogram `name`."""
    buckets: list[tuple[float, float]] = []
    for match in re.finditer(rf'^{re.escape(name)}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
        buckets.append((bound, float(match.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-9)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


async def gather_limited(limit: int, *jobs: Any) -> list[Any]:
    """Runs coroutines with at most `limit` in flight; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Any) -> Any:
        async with semaphore:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))
