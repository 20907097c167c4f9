"""`PQM_MODEL__PATH` may name a CTranslate2 (faster-whisper) model directory: it is converted
into the data directory once, atomically, and again only when its weights change."""

import shutil
from pathlib import Path

import pytest

from app.config import Settings
from app.engine import model_import
from app.engine.errors import ModelLoadError
from app.engine.model_import import (
    describe_model_dir,
    import_ct2_dir,
    is_ct2_dir,
    locate_bundled,
)
from app.services.model_loading import resolve_model_dir


@pytest.fixture
def faster_whisper_dir(tmp_path: Path) -> Path:
    """A faster-whisper model directory as users keep them (the bundled tiny.en's files)."""
    bundled = locate_bundled("tiny.en")[0]
    folder = tmp_path / "faster-whisper-tiny.en"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin"):
        (folder / name).symlink_to(bundled / name)
    return folder


def _no_conversion(*args: object, **kwargs: object) -> None:
    raise AssertionError("converted again")


def test_a_ct2_dir_is_served_as_the_same_model_once_converted(
    faster_whisper_dir: Path, tiny_en_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model={"path": faster_whisper_dir})
    assert is_ct2_dir(faster_whisper_dir)

    served = resolve_model_dir(settings)

    manifest = describe_model_dir(served)
    assert manifest.model_id == "faster-whisper-tiny.en"
    # The same weights as the bundled import: adapters trained on one serve on the other.
    assert manifest.fingerprint == describe_model_dir(tiny_en_dir).fingerprint
    monkeypatch.setattr(model_import, "convert_ct2_whisper", _no_conversion)
    assert resolve_model_dir(settings) == served


def test_changed_weights_are_converted_again(
    faster_whisper_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    first = import_ct2_dir(faster_whisper_dir, models)
    weights = faster_whisper_dir / "model.bin"
    real = weights.resolve()
    weights.unlink()
    shutil.copyfile(real, weights)  # the same bytes, written anew

    second = import_ct2_dir(faster_whisper_dir, models)

    assert second != first
    assert describe_model_dir(second).fingerprint == describe_model_dir(first).fingerprint
    monkeypatch.setattr(model_import, "convert_ct2_whisper", _no_conversion)
    assert import_ct2_dir(faster_whisper_dir, models) == second


def test_a_ct2_dir_without_its_tokenizer_is_refused_by_name(
    faster_whisper_dir: Path, tmp_path: Path
) -> None:
    (faster_whisper_dir / "tokenizer.json").unlink()

    with pytest.raises(ModelLoadError, match=r"CTranslate2 model without tokenizer\.json"):
        import_ct2_dir(faster_whisper_dir, tmp_path / "models")
