"""`pqm serve` in a subprocess on a free loopback port, as an operator would run it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.live import free_port

READY_WITHIN_S = 180


class PqmServer:
    """`with PqmServer(...) as server:` runs the service until the block ends; its log goes to
    `log_path` (a file, so that a chatty server never blocks on a full pipe)."""

    def __init__(self, environment: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "PqmServer":
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.environment, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # polling readiness, as a load balancer would
        raise AssertionError(f"pqm serve did not become ready: {self.log_path.read_text()}")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def service_environment(data_dir: Path, model_dir: Path, admin_key: str) -> dict[str, str]:
    """This process's environment without its PQM_ settings, plus the service's: small,
    quick enrolments (two gate folds, at least four recordings) polled often."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("PQM_")}
    return {
        **inherited,
        "PQM_DATA_DIR": str(data_dir),
        "PQM_MODEL__PATH": str(model_dir),
        "PQM_ADMIN_KEY": admin_key,
        "PQM_ENROLMENT__MIN_UTTERANCES": "4",
        "PQM_ENROLMENT__GATE_FOLDS": "2",
        "PQM_ENROLMENT__POLL_INTERVAL_S": "0.2",
        "PQM_ENROLMENT__HEARTBEAT_INTERVAL_S": "0.5",
    }
