"""Shared engine fixtures: the bundled tiny.en converted once per session, and synthetic speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

QUICK_BROWN_FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="session")
def converted_tiny_en_dir(tiny_en_dir: Path) -> Path:
    """The bundled tiny.en imported (converted to a transformers checkpoint) into a temp dir."""
    return tiny_en_dir


@pytest.fixture(scope="session")
def quick_brown_fox_16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """espeak-ng saying `QUICK_BROWN_FOX`, as mono float32 samples at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required to synthesise test speech (apt-get install espeak-ng)")
    wav = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), QUICK_BROWN_FOX],
        check=True,
        capture_output=True,
    )
    samples, rate = sf.read(wav, dtype="float32", always_2d=True)
    return np.ascontiguousarray(soxr.resample(samples.mean(axis=1), rate, 16000), np.float32)
