"""Tests for app.engine.audio on real encoded audio (espeak-ng speech, sox, libsndfile, ffmpeg).

Formats produced here and the decoder that reads them back:
- libsndfile path: wav (PCM_16, FLOAT), flac, ogg/vorbis, ogg/opus, mp3 (libsndfile 1.2 writes
  MP3 through LAME, so mp3 is encoded with soundfile);
- PyAV fallback: webm/opus, m4a/aac, mp4/aac, mpeg-ps/mp2 (encoded with PyAV's bundled ffmpeg).
"""

from __future__ import annotations

import io
import os
import random
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from app.engine.audio import (
    SAMPLE_RATE,
    DecodedAudio,
    decode_audio,
    decode_audio_spooled,
    duration_seconds,
)
from app.engine.errors import AudioDecodeError
from tests.support.audio import (
    convert_with_sox,
    encode_with_pyav,
    scale_to_dbfs,
    silence,
    sine,
    speak,
    speech_16k,
    to_bytes,
    write_wav,
)

TEXT = "The quick brown fox jumps over the lazy dog. Speech recognition test."


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 4 s of espeak-ng speech, float32 mono 16 kHz, peak well below full scale."""
    return scale_to_dbfs(speech_16k(TEXT), -3.0)


@pytest.fixture(scope="module")
def speech_wav_22k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng's own output: 22.05 kHz mono 16-bit wav."""
    return speak(TEXT, tmp_path_factory.mktemp("speech") / "speech.wav")


def _assert_valid(samples: np.ndarray) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.flags.c_contiguous
    assert np.isfinite(samples).all()
    assert float(np.max(np.abs(samples), initial=0.0)) <= 1.0


def _similarity(a: np.ndarray, b: np.ndarray, max_lag: int = 1600) -> tuple[float, int]:
    """Best normalised correlation of a and b over lags within ±max_lag samples, and the lag."""
    n = min(len(a), len(b))
    a64, b64 = a[:n].astype(np.float64), b[:n].astype(np.float64)
    size = 1 << (2 * n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(a64, size) * np.conj(np.fft.rfft(b64, size)), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    values = xc[lags % size]
    best = int(np.argmax(values))
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(values[best]) / norm, int(lags[best])


def _peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[int(np.argmax(spectrum))])


def _libsndfile_reads(data: bytes) -> bool:
    try:
        with sf.SoundFile(io.BytesIO(data)):
            return True
    except sf.LibsndfileError:
        return False


# --- plain decoding ----------------------------------------------------------------------------


def test_wav_16k_passes_through_unchanged(speech: np.ndarray) -> None:
    data = to_bytes(speech, SAMPLE_RATE)
    expected, _ = sf.read(io.BytesIO(data), dtype="float32")
    out = decode_audio(data)
    _assert_valid(out)
    np.testing.assert_array_equal(out, expected)
    assert np.max(np.abs(out - speech)) < 1e-4  # only 16-bit quantisation


def test_float_wav_is_exact_and_clipped_to_unit_range() -> None:
    tone = sine(440.0, 0.5, amplitude=1.5)  # float wav may exceed full scale
    out = decode_audio(to_bytes(tone, SAMPLE_RATE, subtype="FLOAT"))
    _assert_valid(out)
    np.testing.assert_array_equal(out, np.clip(tone, -1.0, 1.0))


def test_48k_stereo_is_downmixed_and_resampled(tmp_path: Path, speech: np.ndarray) -> None:
    src = write_wav(tmp_path / "in.wav", speech, SAMPLE_RATE)
    dst = convert_with_sox(src, tmp_path / "out.wav", "-r", "48000", "-c", "2")
    info = sf.info(dst)
    assert (info.samplerate, info.channels) == (48_000, 2)

    out = decode_audio(dst)
    _assert_valid(out)
    assert abs(duration_seconds(out) - info.frames / 48_000) <= 0.010
    assert abs(duration_seconds(out) - len(speech) / SAMPLE_RATE) <= 0.010
    corr, lag = _similarity(out, speech)
    assert corr > 0.99
    assert abs(lag) <= 2


def test_downmix_averages_channels() -> None:
    tone = sine(300.0, 0.5, amplitude=0.8)
    same = decode_audio(to_bytes(np.stack([tone, tone], axis=1), SAMPLE_RATE, subtype="FLOAT"))
    half = decode_audio(
        to_bytes(np.stack([tone, np.zeros_like(tone)], axis=1), SAMPLE_RATE, subtype="FLOAT")
    )
    opposite = decode_audio(to_bytes(np.stack([tone, -tone], axis=1), SAMPLE_RATE, "WAV", "FLOAT"))
    np.testing.assert_allclose(same, tone, atol=1e-6)
    np.testing.assert_allclose(half, tone / 2, atol=1e-6)
    assert np.max(np.abs(opposite)) < 1e-6


def test_resampled_sine_keeps_its_frequency_and_loses_what_is_above_nyquist() -> None:
    rate = 44_100
    out = decode_audio(to_bytes(sine(1000.0, 1.0, rate), rate, subtype="FLOAT"))
    assert len(out) == SAMPLE_RATE
    assert abs(_peak_frequency(out, SAMPLE_RATE) - 1000.0) <= 1.0
    assert abs(float(np.sqrt(np.mean(out[800:-800] ** 2))) - 0.5 / np.sqrt(2)) < 0.005

    # 12 kHz is above the new Nyquist frequency (8 kHz): the anti-alias filter removes it
    # instead of folding it down to 4 kHz.
    aliased = decode_audio(to_bytes(sine(12_000.0, 1.0, rate), rate, subtype="FLOAT"))
    assert float(np.sqrt(np.mean(aliased[800:-800] ** 2))) < 1e-3


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")],
)
def test_libsndfile_formats(speech: np.ndarray, fmt: str, subtype: str) -> None:
    data = to_bytes(speech, SAMPLE_RATE, fmt, subtype)
    assert _libsndfile_reads(data)
    out = decode_audio(data)
    _assert_valid(out)
    assert abs(duration_seconds(out) - len(speech) / SAMPLE_RATE) <= 0.060
    corr, lag = _similarity(out, speech)
    assert corr > 0.8, (fmt, subtype, corr)
    assert abs(lag) <= 160  # encoder delay is compensated to within 10 ms


def test_flac_is_lossless(speech: np.ndarray) -> None:
    pcm = np.round(speech * 32767).astype(np.int16)  # integer samples: no encoder rounding
    flac = decode_audio(to_bytes(pcm, SAMPLE_RATE, "FLAC", "PCM_16"))
    np.testing.assert_array_equal(flac, pcm.astype(np.float32) / 32768)
    np.testing.assert_array_equal(flac, decode_audio(to_bytes(pcm, SAMPLE_RATE, "WAV", "PCM_16")))


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("webm", "libopus", SAMPLE_RATE),
        ("m4a", "aac", SAMPLE_RATE),
        ("mp4", "aac", 44_100),
        ("mpeg", "mp2", 48_000),
    ],
)
def test_pyav_formats(speech: np.ndarray, container: str, codec: str, rate: int) -> None:
    source = speech if rate == SAMPLE_RATE else _soxr(speech, rate)
    data = encode_with_pyav(source, rate, container, codec)
    assert not _libsndfile_reads(data)  # really exercises the PyAV fallback
    out = decode_audio(data)
    _assert_valid(out)
    assert abs(duration_seconds(out) - len(speech) / SAMPLE_RATE) <= 0.060
    corr, lag = _similarity(out, speech)
    assert corr > 0.8, (container, codec, corr)
    assert abs(lag) <= 160


def _soxr(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample 16 kHz test material to `rate` (to build inputs at other rates)."""
    return np.asarray(soxr.resample(samples, SAMPLE_RATE, rate, quality="VHQ"), dtype=np.float32)


def test_stereo_webm_is_downmixed(speech: np.ndarray) -> None:
    stereo = np.stack([speech, np.zeros_like(speech)], axis=1)
    out = decode_audio(encode_with_pyav(stereo, SAMPLE_RATE, "webm", "libopus", bit_rate=128_000))
    corr, _ = _similarity(out, speech)
    assert corr > 0.8
    ratio = float(np.sqrt(np.mean(out**2)) / np.sqrt(np.mean(speech**2)))
    assert 0.4 < ratio < 0.6  # averaged with a silent channel: half the amplitude


def test_truncated_webm_keeps_the_audio_before_the_cut(speech: np.ndarray) -> None:
    data = encode_with_pyav(speech, SAMPLE_RATE, "webm", "libopus")
    out = decode_audio(data[: len(data) * 6 // 10])
    _assert_valid(out)
    assert 0.3 * len(speech) < len(out) < 0.9 * len(speech)


# --- levels ------------------------------------------------------------------------------------


def test_quiet_speech_keeps_its_level(tmp_path: Path, speech_wav_22k: Path) -> None:
    quiet = convert_with_sox(speech_wav_22k, tmp_path / "quiet.wav", "gain", "-n", "-30")
    expected_peak = 10 ** (-30 / 20)  # 0.0316
    assert float(np.max(np.abs(sf.read(quiet)[0]))) == pytest.approx(expected_peak, rel=0.01)
    out = decode_audio(quiet)  # 22.05 kHz -> 16 kHz
    assert float(np.max(np.abs(out))) == pytest.approx(expected_peak, rel=0.05)

    quiet_16k = write_wav(tmp_path / "q16.wav", scale_to_dbfs(out, -30.0), SAMPLE_RATE)
    assert float(np.max(np.abs(decode_audio(quiet_16k)))) == pytest.approx(expected_peak, rel=0.01)


def test_ten_minutes_of_silence_decodes_quickly() -> None:
    data = to_bytes(silence(600.0), SAMPLE_RATE)
    start = time.perf_counter()
    out = decode_audio(data)
    elapsed = time.perf_counter() - start
    assert out.shape == (9_600_000,)
    assert not out.any()
    assert elapsed < 2.0, elapsed


# --- sources -----------------------------------------------------------------------------------


def test_path_bytes_and_file_objects_agree(tmp_path: Path, speech: np.ndarray) -> None:
    data = to_bytes(speech, SAMPLE_RATE, "FLAC")
    path = tmp_path / "speech.flac"
    path.write_bytes(data)
    expected = decode_audio(data)

    np.testing.assert_array_equal(decode_audio(path), expected)
    np.testing.assert_array_equal(decode_audio(io.BytesIO(data)), expected)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(decode_audio(handle), expected)
        assert not handle.closed  # the caller's file is left open

    with tempfile.SpooledTemporaryFile(max_size=1024) as spooled:  # what UploadFile.file is
        spooled.write(data)
        spooled.seek(0)
        np.testing.assert_array_equal(decode_audio(spooled), expected)  # type: ignore[arg-type]

    prefixed = io.BytesIO(b"junk" + data)
    prefixed.seek(4)  # decoded from the current position
    np.testing.assert_array_equal(decode_audio(prefixed), expected)


def test_pyav_decodes_from_path_and_file_object(tmp_path: Path, speech: np.ndarray) -> None:
    data = encode_with_pyav(speech, SAMPLE_RATE, "m4a", "aac")
    path = tmp_path / "speech.m4a"
    path.write_bytes(data)
    expected = decode_audio(data)
    np.testing.assert_array_equal(decode_audio(path), expected)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(decode_audio(handle), expected)


def test_non_seekable_stream(speech: np.ndarray) -> None:
    data = to_bytes(speech, SAMPLE_RATE)

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            chunk = self._inner.read(min(len(buffer), 4096))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    out = decode_audio(io.BufferedReader(Pipe()))
    np.testing.assert_array_equal(out, decode_audio(data))


# --- errors ------------------------------------------------------------------------------------


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for source in (b"", empty, io.BytesIO()):
        with pytest.raises(AudioDecodeError, match=r"^The audio file is empty\.$"):
            decode_audio(source)


@pytest.mark.parametrize("size", [1, 16, 1000, 65_536])
def test_random_bytes(size: int) -> None:
    with pytest.raises(AudioDecodeError, match="Invalid file format"):
        decode_audio(random.Random(0).randbytes(size))


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("These are meeting notes, not audio.\n" * 40, encoding="utf-8")
    with pytest.raises(AudioDecodeError, match="Invalid file format"):
        decode_audio(path)


@pytest.mark.parametrize(
    "text",
    [
        b"[00:01.00]lyrics\n[00:02.00]are not audio\n",  # ffmpeg alone would open this as lrc
        b"1\n00:00:01,000 --> 00:00:02,000\nsubtitle\n",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    ],
)
def test_text_media_formats_are_not_probed(text: bytes) -> None:
    with pytest.raises(AudioDecodeError, match="Invalid file format"):
        decode_audio(text)


def test_wav_truncated_inside_header(speech: np.ndarray) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(to_bytes(speech, SAMPLE_RATE)[:20])


def test_wav_truncated_mid_data_decodes_what_is_there(speech: np.ndarray) -> None:
    data = to_bytes(speech, SAMPLE_RATE)
    kept = 8000
    out = decode_audio(data[: 44 + 2 * kept])
    np.testing.assert_array_equal(out, decode_audio(data)[:kept])


def test_zero_length_audio() -> None:
    data = to_bytes(np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert sf.info(io.BytesIO(data)).frames == 0
    with pytest.raises(AudioDecodeError, match="contains no audio"):
        decode_audio(data)


def test_container_without_audio_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for pts in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = pts
            out.mux(stream.encode(frame.reformat(format="yuvj420p")))
        out.mux(stream.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(buf.getvalue())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad: float) -> None:
    samples = sine(440.0, 0.5)
    samples[1234] = bad
    with pytest.raises(AudioDecodeError, match="NaN or infinity"):
        decode_audio(to_bytes(samples, SAMPLE_RATE, subtype="FLOAT"))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="could not be read"):
        decode_audio(tmp_path / "nope.wav")


def test_damaged_files_raise_only_audio_decode_error(speech: np.ndarray) -> None:
    rng = random.Random(0)
    originals = [
        to_bytes(speech[:16_000], SAMPLE_RATE),
        to_bytes(speech[:16_000], SAMPLE_RATE, "MP3", "MPEG_LAYER_III"),
        to_bytes(speech[:16_000], SAMPLE_RATE, "OGG", "VORBIS"),
        encode_with_pyav(speech[:16_000], SAMPLE_RATE, "webm", "libopus"),
        encode_with_pyav(speech[:16_000], SAMPLE_RATE, "m4a", "aac"),
    ]
    for original in originals:
        for _ in range(12):
            damaged = bytearray(original[: rng.randrange(1, len(original) + 1)])
            for _ in range(rng.randrange(0, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            try:
                out = decode_audio(bytes(damaged), max_duration_s=5.0)
            except AudioDecodeError:
                continue
            _assert_valid(out)
            assert duration_seconds(out) <= 5.0


# --- duration limit ----------------------------------------------------------------------------


def test_max_duration_is_enforced(speech: np.ndarray) -> None:
    three_seconds = np.resize(speech, 3 * SAMPLE_RATE)
    wav = to_bytes(three_seconds, SAMPLE_RATE)
    assert len(decode_audio(wav, max_duration_s=3.0)) == 3 * SAMPLE_RATE  # exactly at the limit
    with pytest.raises(AudioDecodeError, match=r"longer than the maximum of 2\.5 seconds"):
        decode_audio(wav, max_duration_s=2.5)

    resampled = to_bytes(_soxr(three_seconds, 48_000), 48_000)
    with pytest.raises(AudioDecodeError, match=r"2\.5 seconds"):
        decode_audio(resampled, max_duration_s=2.5)

    webm = encode_with_pyav(three_seconds, SAMPLE_RATE, "webm", "libopus")
    assert len(decode_audio(webm, max_duration_s=3.0)) == pytest.approx(3 * SAMPLE_RATE, abs=960)
    with pytest.raises(AudioDecodeError, match=r"2\.5 seconds"):
        decode_audio(webm, max_duration_s=2.5)


def test_max_duration_stops_early_on_long_input() -> None:
    data = to_bytes(silence(600.0), SAMPLE_RATE)
    start = time.perf_counter()
    with pytest.raises(AudioDecodeError, match="60 seconds"):
        decode_audio(data, max_duration_s=60.0)
    assert time.perf_counter() - start < 1.0


def test_max_duration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_audio(b"RIFF", max_duration_s=0)


def test_duration_seconds() -> None:
    assert duration_seconds(np.zeros(24_000, dtype=np.float32)) == 1.5
    assert duration_seconds(np.zeros(0, dtype=np.float32)) == 0.0


def flac_declaring(samples: np.ndarray, total_frames: int) -> bytes:
    """A FLAC whose STREAMINFO claims `total_frames` frames, whatever it holds."""
    data = bytearray(to_bytes(samples, SAMPLE_RATE, "FLAC", "PCM_16"))
    field = 8 + 10  # "fLaC", the block header, then rate/channels/bits and 36 bits of frames
    packed = int.from_bytes(data[field : field + 8], "big")
    mask = (1 << 36) - 1
    data[field : field + 8] = ((packed & ~mask) | total_frames).to_bytes(8, "big")
    return bytes(data)


def webm_declaring(samples: np.ndarray, seconds: float) -> bytes:
    """A webm (opus) whose Segment Info claims a duration of `seconds`, whatever it holds."""
    data = bytearray(encode_with_pyav(samples, SAMPLE_RATE, "webm", "libopus"))
    at = data.find(b"\x44\x89\x88")  # the Duration element, an 8-byte float in milliseconds
    assert at > 0
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    return bytes(data)


def test_a_declared_duration_over_the_limit_is_refused_before_decoding() -> None:
    two_seconds = sine(440.0, 2.0)
    flac = flac_declaring(two_seconds, 5 * 3600 * SAMPLE_RATE)
    assert sf.info(io.BytesIO(flac)).duration == 5 * 3600
    webm = webm_declaring(two_seconds, 5 * 3600)
    # Two seconds of audio: only the declared duration can be over the limit.
    for data in (flac, webm):
        with pytest.raises(AudioDecodeError, match="longer than the hard limit of 14400 seconds"):
            decode_audio(data)
        with pytest.raises(AudioDecodeError, match="longer than the maximum of 60 seconds"):
            decode_audio_spooled(data, max_duration_s=60.0)


def test_a_declared_duration_within_a_second_of_the_limit_is_decoded() -> None:
    """Lossy codecs declare their encoder delay too: the samples decide near the limit."""
    out = decode_audio(webm_declaring(sine(440.0, 2.0), 2.9), max_duration_s=2.0)
    assert duration_seconds(out) == pytest.approx(2.0, abs=0.06)


def _open_fds() -> set[str]:
    listed = os.listdir("/proc/self/fd")  # including the listing's own, closed by now
    return {fd for fd in listed if os.path.lexists(f"/proc/self/fd/{fd}")}


@pytest.fixture
def fds() -> Iterator[set[str]]:
    """The descriptors open before the test; after it, none of the test's may be left open."""
    before = _open_fds()
    yield before
    assert _open_fds() <= before


def test_long_audio_is_spooled_to_a_private_unnamed_file(fds: set[str], speech: np.ndarray) -> None:
    data = to_bytes(np.tile(speech, 4), 48_000 // 2, "FLAC", "PCM_16")  # resampled on the way
    expected = decode_audio(data)
    with decode_audio_spooled(data, memory_s=1.0) as audio:
        assert audio.spilled
        [fd] = _open_fds() - fds
        link = os.readlink(f"/proc/self/fd/{fd}")
        assert link.endswith("(deleted)")  # no name anyone could open
        assert os.stat(f"/proc/self/fd/{fd}").st_mode & 0o777 == 0o600
        assert len(audio) == len(expected)
        assert audio.duration_s == duration_seconds(expected)
        np.testing.assert_array_equal(audio.read(0, len(audio)), expected)
        np.testing.assert_array_equal(audio.read(12_345, 54_321), expected[12_345:54_321])
        assert audio.read(len(audio) - 5, len(audio) + 100).shape == (5,)
        assert audio.read(-10, 0).shape == (0,)
    with pytest.raises(ValueError, match="closed"):
        audio.read(0, 10)


def test_short_audio_stays_in_memory(fds: set[str], speech: np.ndarray) -> None:
    data = to_bytes(speech, SAMPLE_RATE)
    with decode_audio_spooled(data) as audio:
        assert not audio.spilled
        assert _open_fds() <= fds
        np.testing.assert_array_equal(audio.read(0, len(audio)), decode_audio(data))


def test_a_failed_spooled_decode_leaves_nothing_open(fds: set[str]) -> None:
    samples = sine(440.0, 6.0)
    samples[5 * SAMPLE_RATE] = np.nan  # found after the first seconds were spilled
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio_spooled(to_bytes(samples, SAMPLE_RATE, subtype="FLOAT"), memory_s=1.0)


def test_arrays_wrap_without_copying() -> None:
    samples = sine(440.0, 0.5)
    audio = DecodedAudio.from_array(samples)
    assert len(audio) == samples.shape[0]
    assert np.shares_memory(audio.read(0, 100), samples)


@pytest.mark.parametrize("rate", [1, 999, 768_001, 2**31 - 1])
def test_sample_rates_outside_the_supported_range(rate: int) -> None:
    data = bytearray(to_bytes(sine(440.0, 0.5), SAMPLE_RATE))
    data[24:28] = rate.to_bytes(4, "little")  # the WAV header's rate (its byte rate is ignored)
    with pytest.raises(AudioDecodeError, match=f"sample rate of {rate} Hz is outside"):
        decode_audio(bytes(data))
