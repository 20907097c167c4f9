"""Killing the server mid-training: after a restart the job is recovered, never left running,
and no half-trained adapter is ever served."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.audio import speech_16k, to_bytes

ADMIN_KEY = "recovery-test-admin-key-0123456789"
SENTENCES = (
    "Please open the window in the kitchen.",
    "The weather will be warm and sunny tomorrow.",
    "My brother works at the hospital downtown.",
    "We need more milk, bread and butter.",
    "Turn left after the old church on the corner.",
)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    def __init__(self, data_dir: Path, model_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PQM_DATA_DIR": str(data_dir),
            "PQM_ADMIN_KEY": ADMIN_KEY,
            "PQM_MODEL__PATH": str(model_dir),
            "PQM_ENROLMENT__MIN_UTTERANCES": "4",
            "PQM_ENROLMENT__POLL_INTERVAL_S": "0.2",
            "PQM_ENROLMENT__HEARTBEAT_INTERVAL_S": "0.5",
            "PQM_ENROLMENT__STALE_AFTER_S": "3",
            "PQM_ENROLMENT__MAX_ATTEMPTS": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so the kill below takes the training child along
        )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "server exited"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture
def server(tmp_path: Path, tiny_en_dir: Path) -> Iterator[Server]:
    running = Server(tmp_path / "data", tiny_en_dir)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_killed_mid_training_recovers_after_restart(server: Server) -> None:
    server.start()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(f"{server.url}/v1/users", json={"name": "alice"}, headers=admin).json()
    files = [
        ("files", (f"{i}.wav", to_bytes(speech_16k(text, voice="de"), 16_000)))
        for i, text in enumerate(SENTENCES)
    ]
    job = httpx.post(
        f"{server.url}/v1/users/{user['id']}/enrolments",
        files=files,
        data={"transcripts": list(SENTENCES), "epochs": "50"},
        headers=admin,
        timeout=60,
    ).json()
    deadline = time.monotonic() + 120
    while True:
        state = httpx.get(f"{server.url}/v1/enrolments/{job['id']}", headers=admin).json()
        if state["status"] == "running" and state["progress"] > 0:
            break
        assert state["status"] in ("queued", "running"), state
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.3)

    server.kill()
    server.start()

    deadline = time.monotonic() + 60
    while True:
        state = httpx.get(f"{server.url}/v1/enrolments/{job['id']}", headers=admin).json()
        if state["status"] != "running":
            break
        assert time.monotonic() < deadline, "job left running after the restart"
        time.sleep(0.5)
    assert state["status"] == "failed"
    assert "worker stopped" in state["error"]
    assert state["adapter_id"] is None
    adapters = httpx.get(f"{server.url}/v1/users/{user['id']}/adapters", headers=admin).json()
    assert adapters["data"] == []
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", files[0][1][1])},
        data={"model": "whisper-1"},
        headers={"Authorization": f"Bearer {user['api_key']}"},
        timeout=60,
    )
    assert response.headers["x-adapter-id"] == "none"
