"""`PQM_MODEL__PATH` may name a CTranslate2 (faster-whisper) model directory: it is converted
into the data directory once, atomically, and again only when its weights change."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from app.config import Settings
from app.engine import model_import
from app.engine.convert import WEIGHTS_NAME
from app.engine.errors import ModelLoadError
from app.engine.model_import import (
    describe_model_dir,
    import_ct2_dir,
    is_ct2_dir,
    locate_bundled,
    read_model_manifest,
)
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
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
    assert manifest.source_quantisation is None  # float16 weights: rounded once, by NF4
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


def test_an_int8_ct2_model_is_dequantised_within_its_rounding_and_transcribes(
    tiny_en_dir: Path,
    tmp_path: Path,
    quick_brown_fox_16k: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It says it was int8 wherever it is described, and warns when quantised again."""
    import ctranslate2
    from faster_whisper import WhisperModel

    int8_dir = tmp_path / "whisper-tiny.en-int8"
    converter = ctranslate2.converters.TransformersConverter(
        str(tiny_en_dir), copy_files=["tokenizer.json"]
    )
    converter.convert(str(int8_dir), quantization="int8")

    served = import_ct2_dir(int8_dir, tmp_path / "models")

    original = load_file(tiny_en_dir / WEIGHTS_NAME)
    restored = load_file(served / WEIGHTS_NAME)
    assert restored.keys() == original.keys()
    for name in ("model.encoder.layers.0.fc1.weight", "model.decoder.embed_tokens.weight"):
        step = np.abs(original[name]).max(axis=1, keepdims=True) / 127  # one int8 step per row
        assert np.all(np.abs(restored[name] - original[name]) <= step / 2 + 1e-6), name
    np.testing.assert_array_equal(
        restored["model.encoder.layer_norm.weight"], original["model.encoder.layer_norm.weight"]
    )
    # Served at full precision, it says what CTranslate2 says with the int8 model's own weights.
    engine = WhisperEngine.load(served, precision="fp32", device="cpu", threads=2)
    text = engine.transcribe(quick_brown_fox_16k, TranscriptionOptions(language="en")).text
    reference = WhisperModel(str(int8_dir), device="cpu", compute_type="float32")
    segments, _ = reference.transcribe(quick_brown_fox_16k, beam_size=1, language="en")
    assert text.strip() == "".join(segment.text for segment in segments).strip()

    assert read_model_manifest(served).source_quantisation == "int8"
    assert "whose rounding stays" in engine.info.description
    with caplog.at_level(logging.WARNING, logger="app.engine.whisper"):
        nf4 = WhisperEngine.load(served, precision="nf4", device="cpu", threads=2)
    assert "quantised again (int8, then nf4)" in nf4.info.description
    assert [r.message for r in caplog.records if r.name == "app.engine.whisper"] == [
        "model quantised twice"
    ]
