"""The `pqm` command line: serving, the admin key, importing the bundled model, usage errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import main
from app.engine.convert import MANIFEST_NAME
from app.engine.model_import import read_model_manifest


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("PQM_"):
            monkeypatch.delenv(name)
    path = tmp_path / "data"
    monkeypatch.setenv("PQM_DATA_DIR", str(path))
    return path


def test_model_import_converts_once_then_reuses(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "import"]) == 0
    first = capsys.readouterr()
    printed = Path(first.out.strip())

    assert first.out.count("\n") == 1, "prints exactly the path"
    assert printed.is_dir()
    assert printed.parent == data_dir / "models"
    assert (printed / MANIFEST_NAME).is_file()
    assert "pqm_model.json" in os.listdir(printed)
    assert read_model_manifest(printed).model_id == printed.name == "whisper-tiny.en"
    manifest_mtime = (printed / MANIFEST_NAME).stat().st_mtime_ns

    started = time.monotonic()
    assert main(["model", "import", "--bundled", "tiny.en"]) == 0
    elapsed = time.monotonic() - started
    second = capsys.readouterr()

    assert elapsed < 2.0, f"an existing import must be reused, took {elapsed:.1f} s"
    assert Path(second.out.strip()) == printed
    assert (printed / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime, "not converted again"
    leftovers = [p.name for p in (data_dir / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param([], id="no-command"),
        pytest.param(["model"], id="no-model-command"),
        pytest.param(["model", "export"], id="unknown-model-command"),
        pytest.param(["model", "import", "--bundled", "large"], id="unknown-bundled-model"),
        pytest.param(["serve", "--port", "eighty"], id="bad-port"),
    ],
)
def test_usage_errors_exit_with_code_2(
    argv: list[str], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pqm" in err
    assert not (data_dir / "models").exists(), "nothing may be done on a usage error"


def test_help_exits_with_code_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out
    assert "model" in out


def test_serve_help_names_host_port_and_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--help"])

    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--host HOST address to listen on (default: 127.0.0.1" in out
    assert "--port PORT TCP port (default: 8000)" in out


def test_admin_key_prints_the_configured_key(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PQM_ADMIN_KEY", "configured-admin-key-0123456789")

    assert main(["admin-key"]) == 0
    assert capsys.readouterr().out == "configured-admin-key-0123456789\n"


def test_admin_key_prints_the_key_stored_in_the_data_dir(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir.mkdir()
    (data_dir / "admin_key").write_text("pqm-admin-stored\n")

    assert main(["admin-key"]) == 0
    assert capsys.readouterr().out == "pqm-admin-stored\n"


def test_admin_key_before_the_first_start_says_where_it_will_be(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin-key"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(data_dir / "admin_key") in captured.err
    assert not data_dir.exists(), "printing the key creates nothing"


def _service_environment(data_dir: Path, model_dir: Path) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("PQM_", "HF_"))
    }
    environment.update(
        PQM_DATA_DIR=str(data_dir),
        PQM_MODEL__PATH=str(model_dir),
        PQM_ADMIN_KEY="cli-test-admin-key-0123456789",
    )
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_ready(server: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling readiness, as a load balancer would
    raise AssertionError("the server did not become ready")


def test_serve_listens_on_the_port_given_and_logs_only_json_lines(
    tmp_path: Path, tiny_en_dir: Path
) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=_service_environment(tmp_path / "data", tiny_en_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_ready(server, f"http://127.0.0.1:{port}/readyz")
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)

    assert server.returncode == 0, stderr
    lines = stderr.splitlines()
    assert any(json.loads(line)["msg"] == "service ready" for line in lines)
    for line in lines:
        json.loads(line)  # no progress bars, no unformatted warnings
    assert "kernels-community" not in stderr
    assert _readable_by_others(tmp_path / "data") == []


def _readable_by_others(root: Path) -> list[str]:
    """Everything under `root` (itself included) with any group or other permission bit."""
    paths = [root, *root.rglob("*")]
    return [
        f"{path}: {path.stat().st_mode & 0o777:o}" for path in paths if path.stat().st_mode & 0o077
    ]


def test_child_processes_importing_the_cli_hear_nothing_of_the_kernel_hub() -> None:
    # The training process is spawned: it imports the `pqm` script (so this module), then
    # bitsandbytes, which asks the kernel hub for a CPU kernel on CPUs with AVX512-BF16.
    child = subprocess.run(
        [sys.executable, "-c", "import app.cli, bitsandbytes"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert "kernels-community" not in child.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("layout", "says"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("empty", "it has no config.json, preprocessor_config.json, tokenizer.json"),
        ("no-weights", "it has no model.safetensors (or model.safetensors.index.json)"),
    ],
)
def test_a_wrong_model_path_ends_start_up_with_one_line_naming_it(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    layout: str,
    says: str,
) -> None:
    model = tmp_path / "whisper"
    if layout == "file":
        model.write_text("")
    elif layout != "missing":
        model.mkdir()
    if layout == "no-weights":
        for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
            (model / name).write_text("{}")
    monkeypatch.setenv("PQM_MODEL__PATH", str(model))

    assert main([command]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: PQM_MODEL__PATH: {model} ")
    assert says in captured.err
    assert captured.err.count("\n") == 1
