"""Real test audio for the whole suite: speech from espeak-ng, silence, tones, and encoders.

Everything here produces genuine audio files (no mocks): espeak-ng synthesises speech,
soundfile (libsndfile) writes wav/flac/ogg/mp3, PyAV (bundled ffmpeg) encodes webm/opus and
m4a/aac, and sox converts rates, channel counts and gain.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "SAMPLE_RATE",
    "ToolMissingError",
    "convert_with_sox",
    "encode_with_pyav",
    "scale_to_dbfs",
    "silence",
    "sine",
    "speak",
    "speech_16k",
    "to_bytes",
    "write_wav",
]

SAMPLE_RATE = 16_000

_WRITE_BLOCK = 1 << 16
"""Frames per soundfile write in `to_bytes`."""

_PYAV_FORMATS = {"webm": "webm", "mkv": "matroska", "m4a": "ipod", "mp4": "mp4", "ogg": "ogg"}
"""Container name -> ffmpeg muxer name (``m4a`` is the iPod/MPEG-4 audio muxer)."""


class ToolMissingError(RuntimeError):
    """An external program the test helpers need (espeak-ng, sox) is not installed."""


def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise ToolMissingError(
            f"`{tool}` is not installed or not on PATH; it is needed to generate test audio "
            f"(Debian/Ubuntu: apt-get install {tool})."
        )
    return exe


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def speak(
    text: str, path: Path, *, voice: str = "en-us", speed: int = 150, pitch: int = 50
) -> Path:
    """Synthesise `text` with espeak-ng into the wav file `path` (22.05 kHz mono 16-bit)."""
    exe = _require("espeak-ng")
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), "--", text])
    return path


def speech_16k(text: str, **kw: Any) -> np.ndarray:
    """espeak-ng speech as float32 mono samples at 16 kHz (keyword arguments go to `speak`)."""
    with tempfile.TemporaryDirectory(prefix="pqm-speech-") as tmp:
        wav = speak(text, Path(tmp) / "speech.wav", **kw)
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def silence(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Digital silence: `seconds` of float32 zeros at `rate`."""
    return np.zeros(round(seconds * rate), dtype=np.float32)


def sine(
    freq: float, seconds: float, rate: int = SAMPLE_RATE, *, amplitude: float = 0.5
) -> np.ndarray:
    """A float32 sine tone."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def scale_to_dbfs(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """Peak-normalise `samples` so that the largest magnitude is `dbfs` dB below full scale."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak == 0.0:
        raise ValueError("cannot normalise digital silence")
    gain = (10.0 ** (dbfs / 20.0)) / peak
    scaled: np.ndarray = samples.astype(np.float64) * gain
    return scaled.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    """Write samples (frames, or frames x channels) to a wav file with soundfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype, format="WAV")
    return path


def to_bytes(
    samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = "PCM_16"
) -> bytes:
    """Encode samples in memory with soundfile: WAV, FLAC, OGG (VORBIS/OPUS) or MP3.

    Pass ``subtype=None`` for the format's default (e.g. VORBIS for OGG, MPEG_LAYER_III for MP3).
    """
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with sf.SoundFile(
        buf, "w", samplerate=rate, channels=channels, format=format, subtype=subtype
    ) as out:
        # libsndfile's vorbis encoder crashes on very large single writes: feed it in blocks.
        for start in range(0, samples.shape[0], _WRITE_BLOCK):
            out.write(samples[start : start + _WRITE_BLOCK])
    return buf.getvalue()


def encode_with_pyav(
    samples: np.ndarray,
    rate: int,
    container: str = "webm",
    codec: str = "libopus",
    *,
    bit_rate: int | None = 64_000,
    codec_rate: int | None = None,
) -> bytes:
    """Encode samples with PyAV's bundled ffmpeg, e.g. webm/libopus, m4a/aac, mp4/aac, mkv.

    `samples` is (frames,) or (frames, channels) float in [-1, 1]. The samples are converted
    to the encoder's sample format, layout and frame size by ffmpeg's resampler. Opus only
    runs at 48 kHz (and a few lower rates), so for libopus the codec rate defaults to 48000.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    channels = data.shape[1]
    layout = "mono" if channels == 1 else "stereo"
    if codec_rate is None:
        codec_rate = 48_000 if "opus" in codec else rate
    buf = io.BytesIO()
    with av.open(buf, "w", format=_PYAV_FORMATS.get(container, container)) as out:
        stream: Any = out.add_stream(codec, rate=codec_rate, layout=layout)
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        cc = stream.codec_context
        resampler = av.AudioResampler(
            format=cc.format.name,
            layout=layout,
            rate=codec_rate,
            frame_size=cc.frame_size or 1024,
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data).reshape(1, -1), format="flt", layout=layout
        )
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return buf.getvalue()


def convert_with_sox(src: Path, dst: Path, *args: str) -> Path:
    """Run ``sox src [output options] dst [effects]``.

    Arguments that start with ``-`` before the first effect name are output-format options
    (e.g. ``"-r", "48000", "-c", "2"``); everything from the first non-option argument on is
    an effect chain (e.g. ``"gain", "-n", "-30"`` or ``"vol", "0.5"``).
    """
    exe = _require("sox")
    opts: list[str] = []
    rest = list(args)
    while rest and rest[0].startswith("-"):
        opts.append(rest.pop(0))
        if rest and not rest[0].startswith("-"):
            opts.append(rest.pop(0))
    dst.parent.mkdir(parents=True, exist_ok=True)
    _run([exe, str(src), *opts, str(dst), *rest])
    return dst
