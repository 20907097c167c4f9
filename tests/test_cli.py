"""The `pqm` command line: importing the bundled model, and argument errors."""

import os
import time
from pathlib import Path

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
