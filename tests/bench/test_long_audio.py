"""bench.long_audio's inputs: what sox makes is what the loads claim to be."""

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.long_audio import noise_flac, silent_flac


def test_silence_is_digital_silence_and_noise_is_not(tmp_path: Path) -> None:
    silence = tmp_path / "silence.flac"
    silent_flac(silence, 0.01)
    samples, rate = sf.read(silence, dtype="float32")
    assert (rate, samples.shape[0]) == (16_000, 36 * 16_000)
    assert not samples.any()

    noise = tmp_path / "noise.flac"
    noise_flac(noise, 0.01)
    samples, _ = sf.read(noise, dtype="float32")
    peak_dbfs = 20 * np.log10(np.abs(samples).max())
    assert -70.0 < peak_dbfs < -50.0  # above the engine's digital-silence floor, yet faint
