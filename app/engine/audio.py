"""Decode uploaded audio into the float32 mono 16 kHz samples Whisper expects.

libsndfile (through soundfile) is tried first: it reads wav, flac, ogg/vorbis, ogg/opus and mp3
quickly and exactly. What it cannot open (webm/opus, m4a/aac, mp4, mpeg, ...) goes to ffmpeg
through PyAV, restricted to a whitelist of media demuxers so that playlists, subtitles and other
text formats are never probed into "audio". Both paths stream blocks of samples: each block is
downmixed to mono by averaging, checked for NaN/inf, counted against the duration limit and
resampled with soxr, so an over-long input is rejected as soon as it passes the limit; a
container that declares a duration over the limit is refused before anything is decoded.

`decode_audio_spooled` keeps what it decodes in memory up to a couple of minutes and spills the
rest to a private temporary file (unnamed, mode 0600, gone when closed or when the process
dies), read back a window at a time with plain file reads: memory per request does not grow with
the audio's duration. Decoding once, off the inference thread, rather than lazily keeps decode
errors and the length known before a request queues, and the two passes over the samples that
the features need (`features.LogMelStream`) cost two reads instead of two decodes.

Every problem with the input itself is reported as `AudioDecodeError` with a short message
that can be shown to the user.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Generator, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

import av
import av.error
import numpy as np
import soundfile as sf
import soxr

from app.engine.errors import AudioDecodeError

__all__ = [
    "MAX_DECODE_SECONDS",
    "SAMPLE_RATE",
    "SPOOL_MEMORY_SECONDS",
    "DecodedAudio",
    "decode_audio",
    "decode_audio_spooled",
    "duration_seconds",
]

SAMPLE_RATE = 16_000
"""Sample rate of everything `decode_audio` returns (Whisper's rate)."""

MAX_DECODE_SECONDS = 4 * 3600.0
"""Hard bound on decoded audio when the caller gives no `max_duration_s` (about 920 MB)."""

_BLOCK_SAMPLES = 1 << 20
"""Samples (frames x channels) per soundfile read: 4 MiB of float32 whatever the channel count."""

_BLOCK_SECONDS = 10.0
"""Most audio resampled in one call, so that a low input rate cannot make a huge output block."""

_MIN_RATE, _MAX_RATE = 1_000, 768_000
"""Sample rates accepted: below 1 kHz nothing is speech, above 768 kHz no recorder exists."""

_DECLARED_SLACK_S = 1.0
"""A declared duration this far over the limit is refused before decoding; closer, the decoded
samples decide (lossy codecs declare their encoder delay and padding too)."""

SPOOL_MEMORY_SECONDS = 120.0
"""Decoded audio kept in memory (7.5 MiB) before `decode_audio_spooled` spills to a file."""

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
_BAD_RATE = "The audio's sample rate of {rate} Hz is outside the supported {low}-{high} Hz."

_SF_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, OSError, EOFError)
_AV_ERRORS = (av.error.FFmpegError, RuntimeError, ValueError, OSError, EOFError)

_Block = tuple[np.ndarray, int]
"""A float32 mono block of samples and its sample rate."""


def decode_audio(
    source: bytes | Path | BinaryIO, *, max_duration_s: float | None = None
) -> np.ndarray:
    """Decode `source` to float32 mono samples at `SAMPLE_RATE`, clipped to [-1, 1], held whole
    in memory (for clips; see `decode_audio_spooled` for long audio).

    `source` is the encoded file as bytes, a path to it, or a binary file object (read from
    its current position; a seekable one at position 0 is decoded in place, without copying).
    Raises `AudioDecodeError` when the input is empty, not decodable audio, holds no samples
    or non-finite ones, has an unsupported sample rate, or is longer than `max_duration_s`.
    """
    audio = _decode(source, max_duration_s, _Spool(None))
    return audio.read(0, len(audio))


def decode_audio_spooled(
    source: bytes | Path | BinaryIO,
    *,
    max_duration_s: float | None = None,
    memory_s: float = SPOOL_MEMORY_SECONDS,
    spool_dir: Path | None = None,
) -> DecodedAudio:
    """`decode_audio`, holding at most `memory_s` seconds of samples in memory: longer audio is
    spilled to a private temporary file in `spool_dir` (default: the system's temporary
    directory). Close the result (or use it as a context manager) to free it."""
    limit = round(memory_s * SAMPLE_RATE)
    return _decode(source, max_duration_s, _Spool(limit, spool_dir))


def duration_seconds(samples: np.ndarray) -> float:
    """Duration in seconds of samples at `SAMPLE_RATE` (as returned by `decode_audio`)."""
    return float(samples.shape[0]) / SAMPLE_RATE


class DecodedAudio:
    """Float32 mono samples at `SAMPLE_RATE`, in memory or in a private temporary file, read a
    range at a time. Reads come from one thread at a time; `close` may come from another, after
    which reads raise `ValueError`."""

    def __init__(self, samples: np.ndarray | None, file: IO[bytes] | None, length: int) -> None:
        self._samples = samples
        self._file = file
        self._length = length
        self._closed = False

    @classmethod
    def from_array(cls, samples: np.ndarray) -> DecodedAudio:
        """Wraps samples already in memory (not copied)."""
        return cls(np.asarray(samples, dtype=np.float32), None, int(samples.shape[0]))

    def __len__(self) -> int:
        return self._length

    @property
    def duration_s(self) -> float:
        return self._length / SAMPLE_RATE

    @property
    def spilled(self) -> bool:
        """Whether the samples live in a temporary file."""
        return self._file is not None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) within [0, len): a view of the samples held in memory, or a
        fresh array read from the file."""
        if self._closed:
            raise ValueError("the decoded audio is closed")
        start, stop = max(0, start), min(self._length, stop)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        if self._samples is not None:
            return self._samples[start:stop]
        assert self._file is not None
        out = np.empty(stop - start, dtype=np.float32)
        self._file.seek(start * out.itemsize)
        view, filled = out.data.cast("B"), 0
        while filled < view.nbytes:
            got = self._file.readinto(view[filled:])  # type: ignore[attr-defined]
            if not got:
                raise OSError("the spooled audio file ended early")
            filled += got
        return out

    def close(self) -> None:
        self._closed = True
        self._samples = None
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> DecodedAudio:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _decode(
    source: bytes | Path | BinaryIO, max_duration_s: float | None, spool: _Spool
) -> DecodedAudio:
    if max_duration_s is not None and not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
    limit = _Limit(max_duration_s)
    collector = _Collector(limit, spool)
    with ExitStack() as stack:
        stack.callback(spool.discard)  # a no-op once `finish` has handed the samples over
        stream = _open_source(source, stack)
        # Entered after the input, so the decoder is closed before the file it reads.
        blocks = stack.enter_context(closing(_decode_blocks(stream, limit)))
        collector.extend(blocks)
        return collector.finish()


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


def _decode_blocks(stream: IO[bytes], limit: _Limit) -> Generator[_Block, None, None]:
    """Blocks from libsndfile if it recognises the data, otherwise from ffmpeg."""
    sound_file = _open_soundfile(stream)
    if sound_file is not None:
        with sound_file:
            if sound_file.samplerate > 0:
                limit.check_declared(sound_file.frames / sound_file.samplerate)
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
        yield from _pyav_blocks(container, limit)


def _open_soundfile(stream: IO[bytes]) -> sf.SoundFile | None:
    """The file opened by libsndfile, or None when libsndfile does not support it."""
    try:
        return sf.SoundFile(stream, mode="r")
    except _SF_ERRORS:
        return None


def _soundfile_blocks(sound_file: sf.SoundFile) -> Iterator[_Block]:
    rate = int(sound_file.samplerate)
    frames = max(1, _BLOCK_SAMPLES // max(1, sound_file.channels))
    while True:
        try:
            data = sound_file.read(frames, dtype="float32", always_2d=True)
        except _SF_ERRORS as exc:
            raise AudioDecodeError(_CORRUPT) from exc
        if data.shape[0] == 0:
            return
        yield _downmix(data.T), rate


def _pyav_blocks(container: Any, limit: _Limit) -> Iterator[_Block]:
    """Decode the first audio stream, batching frames of equal rate into ~1 s blocks."""
    if not container.streams.audio:
        raise AudioDecodeError(_NO_STREAM)
    stream = container.streams.audio[0]
    limit.check_declared(_declared_seconds(container, stream))
    batch: list[np.ndarray] = []
    batch_rate = batch_frames = 0
    for frame in _pyav_frames(container, stream):
        samples, rate = _frame_to_mono(frame), int(frame.sample_rate)
        if batch and (rate != batch_rate or batch_frames >= batch_rate * _PYAV_BATCH_SECONDS):
            yield np.concatenate(batch), batch_rate
            batch, batch_frames = [], 0
        batch.append(samples)
        batch_rate, batch_frames = rate, batch_frames + samples.shape[0]
    if batch:
        yield np.concatenate(batch), batch_rate


def _declared_seconds(container: Any, stream: Any) -> float:
    """The longest duration the container or the stream declares; 0 when neither does."""
    declared = [0.0]
    if container.duration is not None:
        declared.append(container.duration / av.time_base)
    if stream.duration is not None and stream.time_base is not None:
        declared.append(float(stream.duration * stream.time_base))
    return max(declared)


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


class _Limit:
    """The duration bound: `max_duration_s` when given, else the hard `MAX_DECODE_SECONDS`."""

    def __init__(self, max_duration_s: float | None) -> None:
        self._given = max_duration_s is not None
        self.seconds = MAX_DECODE_SECONDS if max_duration_s is None else max_duration_s

    def check(self, seconds: float) -> None:
        if seconds > self.seconds + 1e-6:
            raise AudioDecodeError(self._too_long())

    def check_declared(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds > self.seconds + _DECLARED_SLACK_S:
            raise AudioDecodeError(self._too_long())

    def _too_long(self) -> str:
        what = "maximum" if self._given else "hard limit"
        return f"The audio is longer than the {what} of {self.seconds:g} seconds."


class _Spool:
    """Where checked 16 kHz samples go: memory up to `memory_limit` samples (None: no limit),
    then an unnamed temporary file."""

    def __init__(self, memory_limit: int | None, directory: Path | None = None) -> None:
        self._memory_limit = memory_limit
        self._directory = directory
        self._chunks: list[np.ndarray] = []
        self._held = 0
        self._file: IO[bytes] | None = None
        self._length = 0

    def write(self, samples: np.ndarray) -> None:
        if not samples.shape[0]:
            return
        samples = np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)
        self._length += samples.shape[0]
        if self._file is None:
            self._chunks.append(samples)
            self._held += samples.shape[0]
            if self._memory_limit is None or self._held <= self._memory_limit:
                return
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
            pending, self._chunks, self._held = self._chunks, [], 0
            for chunk in pending:
                self._file.write(chunk.data)
            return
        self._file.write(samples.data)

    def finish(self) -> DecodedAudio:
        if not self._length:
            raise AudioDecodeError(_NO_SAMPLES)
        file, self._file = self._file, None
        if file is not None:
            return DecodedAudio(None, file, self._length)
        chunks, self._chunks = self._chunks, []
        samples = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        return DecodedAudio(samples, None, self._length)

    def discard(self) -> None:
        """Frees what was written (after a failure; a no-op after `finish`)."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


class _Collector:
    """Checks, counts and resamples blocks to `SAMPLE_RATE` into a spool."""

    def __init__(self, limit: _Limit, spool: _Spool) -> None:
        self._limit = limit
        self._spool = spool
        self._seconds = 0.0
        self._rate = 0
        self._resampler: soxr.ResampleStream | None = None

    def extend(self, blocks: Iterator[_Block]) -> None:
        for samples, rate in blocks:
            if not _MIN_RATE <= rate <= _MAX_RATE:
                raise AudioDecodeError(_BAD_RATE.format(rate=rate, low=_MIN_RATE, high=_MAX_RATE))
            if not np.isfinite(samples).all():
                raise AudioDecodeError(_NOT_FINITE)
            self._seconds += samples.shape[0] / rate
            self._limit.check(self._seconds)
            step = max(1, int(rate * _BLOCK_SECONDS))
            for start in range(0, samples.shape[0], step):
                self._add(samples[start : start + step], rate)

    def _add(self, samples: np.ndarray, rate: int) -> None:
        if rate != self._rate:
            self._flush()
            self._rate = rate
            self._resampler = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            )
        if self._resampler is None:
            self._spool.write(samples)
        else:
            self._spool.write(self._resampler.resample_chunk(samples))

    def _flush(self) -> None:
        if self._resampler is not None:
            self._spool.write(
                self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            )
            self._resampler = None

    def finish(self) -> DecodedAudio:
        self._flush()
        return self._spool.finish()
