"""Decode uploaded audio into the float32 mono 16 kHz samples Whisper expects.

libsndfile (through soundfile) is tried first: it reads wav, flac, ogg/vorbis, ogg/opus and mp3
quickly and exactly. What it cannot open (webm/opus, m4a/aac, mp4, mpeg, ...) goes to ffmpeg
through PyAV, restricted to a whitelist of media demuxers so that playlists, subtitles and other
text formats are never probed into "audio". Both paths stream blocks of samples: each block is
downmixed to mono by averaging, checked for NaN/inf, counted against the duration limit and
resampled with soxr, so an over-long input is rejected as soon as it passes the limit.

Every problem with the input itself is reported as `AudioDecodeError` with a short message
that can be shown to the user.
"""

from __future__ import annotations

import io
import os
from collections.abc import Generator, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import IO, Any, BinaryIO

import av
import av.error
import numpy as np
import soundfile as sf
import soxr

from app.engine.errors import AudioDecodeError

__all__ = ["MAX_DECODE_SECONDS", "SAMPLE_RATE", "decode_audio", "duration_seconds"]

SAMPLE_RATE = 16_000
"""Sample rate of everything `decode_audio` returns (Whisper's rate)."""

MAX_DECODE_SECONDS = 4 * 3600.0
"""Hard bound on decoded audio when the caller gives no `max_duration_s` (about 920 MB)."""

_BLOCK_FRAMES = 1 << 20
"""Frames per soundfile read (about 22 s at 48 kHz)."""

_PYAV_BATCH_SECONDS = 1.0
"""PyAV frames are tiny (20 ms for opus); they are batched to about this much audio."""

_PYAV_DEMUXERS = "matroska,mov,mp3,ogg,aac,wav,flac,mpeg,mpegts,asf,amr,aiff,caf,w64,au"
"""ffmpeg demuxers PyAV may use (`matroska` covers webm, `mov` covers mp4/m4a/3gp)."""

_EMPTY = "The audio file is empty."
_UNREADABLE = "The audio file could not be read."
_INVALID = "Invalid file format: the file could not be decoded as audio."
_CORRUPT = "The audio file is corrupt and could not be decoded."
_NO_STREAM = "The file contains no audio stream."
_NO_SAMPLES = "The audio file contains no audio."
_NOT_FINITE = "The audio contains invalid samples (NaN or infinity)."

_SF_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, OSError, EOFError)
_AV_ERRORS = (av.error.FFmpegError, RuntimeError, ValueError, OSError, EOFError)

_Block = tuple[np.ndarray, int]
"""A float32 mono block of samples and its sample rate."""


def decode_audio(
    source: bytes | Path | BinaryIO, *, max_duration_s: float | None = None
) -> np.ndarray:
    """Decode `source` to float32 mono samples at `SAMPLE_RATE`, clipped to [-1, 1].

    `source` is the encoded file as bytes, a path to it, or a binary file object (read from
    its current position; a seekable one at position 0 is decoded in place, without copying).
    Raises `AudioDecodeError` when the input is empty, not decodable audio, holds no samples
    or non-finite ones, or is longer than `max_duration_s` seconds.
    """
    if max_duration_s is not None and not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
    collector = _Collector(max_duration_s)
    with ExitStack() as stack:
        stream = _open_source(source, stack)
        # Entered after the input, so the decoder is closed before the file it reads.
        blocks = stack.enter_context(closing(_decode_blocks(stream)))
        collector.extend(blocks)
    return collector.finish()


def duration_seconds(samples: np.ndarray) -> float:
    """Duration in seconds of samples at `SAMPLE_RATE` (as returned by `decode_audio`)."""
    return float(samples.shape[0]) / SAMPLE_RATE


# --- input -----------------------------------------------------------------------------------


def _open_source(source: bytes | Path | BinaryIO, stack: ExitStack) -> IO[bytes]:
    """A seekable binary stream positioned at the start of the encoded data."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioDecodeError(_EMPTY)
        return io.BytesIO(source)
    if isinstance(source, str | os.PathLike):
        return _open_path(Path(source), stack)
    return _open_file_object(source)


def _open_path(path: Path, stack: ExitStack) -> IO[bytes]:
    try:
        handle = stack.enter_context(path.open("rb"))
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise AudioDecodeError(_UNREADABLE) from exc
    if size == 0:
        raise AudioDecodeError(_EMPTY)
    return handle


def _open_file_object(file: IO[bytes]) -> IO[bytes]:
    try:
        if file.seekable() and file.tell() == 0:
            size = file.seek(0, io.SEEK_END)
            file.seek(0)
            if size == 0:
                raise AudioDecodeError(_EMPTY)
            return file
        data = file.read()
    except (OSError, ValueError) as exc:
        raise AudioDecodeError(_UNREADABLE) from exc
    if not data:
        raise AudioDecodeError(_EMPTY)
    return io.BytesIO(data)


# --- decoders --------------------------------------------------------------------------------


def _decode_blocks(stream: IO[bytes]) -> Generator[_Block, None, None]:
    """Blocks from libsndfile if it recognises the data, otherwise from ffmpeg."""
    sound_file = _open_soundfile(stream)
    if sound_file is not None:
        with sound_file:
            yield from _soundfile_blocks(sound_file)
        return
    try:
        stream.seek(0)
        container = av.open(
            stream,
            mode="r",
            container_options={"format_whitelist": _PYAV_DEMUXERS},
            metadata_errors="replace",
        )
    except _AV_ERRORS as exc:
        raise AudioDecodeError(_INVALID) from exc
    with container:
        yield from _pyav_blocks(container)


def _open_soundfile(stream: IO[bytes]) -> sf.SoundFile | None:
    """The file opened by libsndfile, or None when libsndfile does not support it."""
    try:
        return sf.SoundFile(stream, mode="r")
    except _SF_ERRORS:
        return None


def _soundfile_blocks(sound_file: sf.SoundFile) -> Iterator[_Block]:
    rate = int(sound_file.samplerate)
    while True:
        try:
            data = sound_file.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
        except _SF_ERRORS as exc:
            raise AudioDecodeError(_CORRUPT) from exc
        if data.shape[0] == 0:
            return
        yield _downmix(data.T), rate


def _pyav_blocks(container: Any) -> Iterator[_Block]:
    """Decode the first audio stream, batching frames of equal rate into ~1 s blocks."""
    if not container.streams.audio:
        raise AudioDecodeError(_NO_STREAM)
    batch: list[np.ndarray] = []
    batch_rate = batch_frames = 0
    for frame in _pyav_frames(container, container.streams.audio[0]):
        samples, rate = _frame_to_mono(frame), int(frame.sample_rate)
        if batch and (rate != batch_rate or batch_frames >= batch_rate * _PYAV_BATCH_SECONDS):
            yield np.concatenate(batch), batch_rate
            batch, batch_frames = [], 0
        batch.append(samples)
        batch_rate, batch_frames = rate, batch_frames + samples.shape[0]
    if batch:
        yield np.concatenate(batch), batch_rate


def _pyav_frames(container: Any, stream: Any) -> Iterator[Any]:
    """Decoded frames; undecodable packets are skipped (a damaged tail must not cost it all)."""
    decoded = failed = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except _AV_ERRORS:
                failed += 1
                continue
            decoded += len(frames)
            yield from frames
    except _AV_ERRORS as exc:
        if not decoded:
            raise AudioDecodeError(_CORRUPT) from exc
        # A demuxer error after good audio means a truncated or damaged end: keep what we have.
    if failed and not decoded:
        raise AudioDecodeError(_CORRUPT)


def _frame_to_mono(frame: Any) -> np.ndarray:
    """Float32 mono samples of a frame in any ffmpeg sample format, planar or packed."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(frame.samples, -1).T
    return _downmix(_to_float(data))


def _to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1); float data to float32."""
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    info = np.iinfo(data.dtype)
    half = (int(info.max) - int(info.min) + 1) // 2
    offset = 0 if info.min < 0 else half
    return ((data.astype(np.float64) - offset) / half).astype(np.float32)


def _downmix(channels_first: np.ndarray) -> np.ndarray:
    """Average a (channels, frames) array to contiguous float32 mono."""
    if channels_first.shape[0] == 1:
        return np.ascontiguousarray(channels_first[0], dtype=np.float32)
    mono: np.ndarray = channels_first.mean(axis=0, dtype=np.float32)
    return mono


# --- collection ------------------------------------------------------------------------------


class _Collector:
    """Checks, counts and resamples blocks to `SAMPLE_RATE`, then joins them."""

    def __init__(self, max_duration_s: float | None) -> None:
        self._max_duration_s = max_duration_s
        self._limit_s = MAX_DECODE_SECONDS if max_duration_s is None else max_duration_s
        self._seconds = 0.0
        self._rate = 0
        self._resampler: soxr.ResampleStream | None = None
        self._chunks: list[np.ndarray] = []

    def extend(self, blocks: Iterator[_Block]) -> None:
        for samples, rate in blocks:
            self._add(samples, rate)

    def _add(self, samples: np.ndarray, rate: int) -> None:
        if rate <= 0:
            raise AudioDecodeError(_INVALID)
        if not np.isfinite(samples).all():
            raise AudioDecodeError(_NOT_FINITE)
        self._seconds += samples.shape[0] / rate
        if self._seconds > self._limit_s + 1e-6:
            raise AudioDecodeError(self._too_long())
        if rate != self._rate:
            self._flush()
            self._rate = rate
            self._resampler = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            )
        if self._resampler is None:
            self._chunks.append(samples)
        else:
            self._chunks.append(self._resampler.resample_chunk(samples))

    def _flush(self) -> None:
        if self._resampler is not None:
            self._chunks.append(
                self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            )
            self._resampler = None

    def _too_long(self) -> str:
        limit = self._limit_s
        what = "maximum" if self._max_duration_s is not None else "hard limit"
        return f"The audio is longer than the {what} of {limit:g} seconds."

    def finish(self) -> np.ndarray:
        self._flush()
        chunks = [c for c in self._chunks if c.shape[0]]
        if not chunks:
            raise AudioDecodeError(_NO_SAMPLES)
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if not out.flags.writeable:
            out = out.copy()
        np.clip(out, -1.0, 1.0, out=out)
        return out
