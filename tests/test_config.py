"""Settings come from `PQM_`-prefixed environment variables, nested groups joined with `__`."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import WEAK_ADMIN_KEY_LENGTH, Settings
from app.db.session import sync_url
from app.engine.training.gate import GateConfig
from app.engine.whisper import LongformPolicy

STRONG_KEY = "k" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PQM_ variable from the outer environment leaks in; HOME is a scratch directory."""
    for name in list(os.environ):
        if name.upper().startswith("PQM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults(tmp_path: Path) -> None:
    settings = Settings()

    assert settings.environment == "local"
    assert settings.data_dir == tmp_path / "home" / ".local" / "share" / "pqm"
    assert settings.model.precision == "nf4"
    assert settings.model.path is None
    assert settings.adapter_store == "sql"
    assert settings.admin_key is None
    assert settings.queue.max_pending == 64
    assert settings.queue.max_pending_audio_s == 8 * 3600


def test_the_long_form_defaults_are_the_engines() -> None:
    longform, policy = Settings().longform, LongformPolicy()
    assert longform.mode == policy.mode
    assert (longform.window_s, longform.adapter_window_s) == (
        policy.window_s,
        policy.adapter_window_s,
    )
    assert longform.batch_windows == policy.batch_windows


def test_the_services_gate_defaults_are_the_engines() -> None:
    """Two homes for the same tuned numbers (settings must not import torch): kept equal."""
    enrolment, gate = Settings().enrolment, GateConfig()
    assert (enrolment.gate_folds, enrolment.gate_confidence, enrolment.gate_min_words_saved) == (
        gate.folds,
        gate.confidence,
        gate.min_words_saved,
    )


def test_reads_prefixed_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PQM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PQM_ADMIN_KEY", "from-the-environment")
    monkeypatch.setenv("PQM_MAX_UPLOAD_BYTES", "1024")
    monkeypatch.setenv("PQM_ADAPTER_STORE", "filesystem")
    monkeypatch.setenv("PQM_LOG_JSON", "false")
    monkeypatch.setenv("DATA_DIR", "/not/prefixed/so/ignored")

    settings = Settings()

    assert settings.data_dir == tmp_path / "data"
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == "from-the-environment"
    assert "from-the-environment" not in repr(settings)
    assert settings.max_upload_bytes == 1024
    assert settings.adapter_store == "filesystem"
    assert settings.log_json is False


def test_reads_nested_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PQM_MODEL__PRECISION", "fp32")
    monkeypatch.setenv("PQM_MODEL__PATH", str(tmp_path / "whisper"))
    monkeypatch.setenv("PQM_MODEL__THREADS", "2")
    monkeypatch.setenv("PQM_QUEUE__MAX_PENDING", "5")
    monkeypatch.setenv("PQM_QUEUE__MAX_PENDING_AUDIO_S", "1800")

    settings = Settings()

    assert settings.model.precision == "fp32"
    assert settings.model.path == tmp_path / "whisper"
    assert settings.model.threads == 2
    assert settings.model.bundled == "tiny.en", "unset nested fields keep their defaults"
    assert settings.queue.max_pending == 5
    assert settings.queue.max_pending_audio_s == 1800.0
    assert settings.queue.retry_after_s == 2


@pytest.mark.parametrize("precision", ["fp16", "int4", "NF4", ""])
def test_invalid_precision_is_rejected(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    monkeypatch.setenv("PQM_MODEL__PRECISION", precision)
    with pytest.raises(ValidationError, match="precision"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PQM_ENVIRONMENT", "staging"),
        ("PQM_QUEUE__MAX_PENDING", "0"),
        ("PQM_MAX_UPLOAD_BYTES", "-1"),
        ("PQM_ADAPTER_STORE", "s3"),
        ("PQM_LONGFORM__MODE", "parallel"),
        ("PQM_LONGFORM__WINDOW_S", "45"),
        ("PQM_ADAPTERS__RESIDENT_SLOTS", "4"),  # fewer than a full batch (8)
    ],
)
def test_other_invalid_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("key", [None, "", "short", "x" * (WEAK_ADMIN_KEY_LENGTH - 1)])
def test_production_refuses_a_missing_or_short_admin_key(
    monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    monkeypatch.setenv("PQM_ENVIRONMENT", "production")
    if key is not None:
        monkeypatch.setenv("PQM_ADMIN_KEY", key)
    with pytest.raises(ValidationError, match="PQM_ADMIN_KEY"):
        Settings()


@pytest.mark.parametrize("key", [STRONG_KEY, "y" * WEAK_ADMIN_KEY_LENGTH])
def test_production_accepts_a_long_admin_key(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("PQM_ENVIRONMENT", "production")
    monkeypatch.setenv("PQM_ADMIN_KEY", key)

    settings = Settings()

    assert settings.environment == "production"
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == key


def test_local_mode_allows_no_admin_key() -> None:
    assert Settings(environment="local", admin_key=None).admin_key is None


def test_default_database_is_a_sqlite_file_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data dir"
    monkeypatch.setenv("PQM_DATA_DIR", str(data_dir))

    settings = Settings()

    assert settings.database_url is None
    url = sync_url(settings.resolved_database_url)
    assert url.get_backend_name() == "sqlite"
    assert url.database is not None
    assert Path(url.database) == data_dir / "pqm.db"
    assert settings.models_dir == data_dir / "models"
    assert settings.admin_key_file == data_dir / "admin_key"


def test_configured_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQM_DATABASE_URL", "postgresql://pqm@db/pqm")
    assert Settings().resolved_database_url == "postgresql://pqm@db/pqm"


def test_a_misspelt_setting_in_a_group_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQM_ENROLMENT__GATE_FOLD", "3")
    with pytest.raises(ValidationError, match="gate_fold"):
        Settings()


def test_the_adapter_pool_is_left_to_sizing_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().adapters.resident_slots is None

    monkeypatch.setenv("PQM_ADAPTERS__RESIDENT_SLOTS", "32")
    assert Settings().adapters.resident_slots == 32
