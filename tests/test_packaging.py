"""A regular (non-editable) install runs from any directory: migrations and data ship inside."""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.audio import speech_16k, to_bytes

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "packaging-test-admin-key-0123456789"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed into a directory of its own."""
    work = tmp_path_factory.mktemp("packaging")
    wheels, site = work / "wheels", work / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("pqm_server-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return site


def _env(site: Path, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        # The installed copy shadows the source tree; the other dependencies come from this venv.
        "PYTHONPATH": str(site),
        "PQM_DATA_DIR": str(data_dir),
        "PQM_ADMIN_KEY": ADMIN_KEY,
    }


@pytest.mark.slow
def test_installed_copy_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    probe = "import app, migrations; print(app.__file__); print(migrations.__file__)"
    output = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=_env(installed, tmp_path / "data"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(installed)) for path in output), output
    assert (installed / "migrations" / "versions").is_dir()


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(installed, tmp_path / "data"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_installed_service_serves_from_another_directory(served: str, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(f"{served}/v1/users", json={"name": "alice"}, headers=admin).json()
    audio = to_bytes(speech_16k("The quick brown fox jumps over the lazy dog.", speed=120), 16_000)
    response = httpx.post(
        f"{served}/v1/audio/transcriptions",
        files={"file": ("fox.wav", audio)},
        data={"model": "whisper-tiny.en"},
        headers={"Authorization": f"Bearer {user['api_key']}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert "lazy dog" in response.json()["text"].lower()
    data_dir = tmp_path / "data"
    assert (data_dir / "pqm.db").is_file()
    assert (data_dir / "models" / "whisper-tiny.en" / "pqm_model.json").is_file()


@pytest.mark.slow
def test_installed_service_serves_the_speakers_page(served: str) -> None:
    page = httpx.get(f"{served}/", timeout=10)
    assert page.status_code == 200, page.text
    assert "content-security-policy" in page.headers
    assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css|svg))"', page.text)
    assert any(asset.endswith(".js") for asset in assets), page.text
    for asset in [*assets, "/web/js/api.js"]:  # one the entry module imports, too
        assert httpx.get(f"{served}{asset}", timeout=10).status_code == 200, asset
