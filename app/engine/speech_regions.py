"""Where a long recording holds speech, and how it is cut into windows the model decodes together.

The voice-activity detector is Silero VAD (the `silero-vad` package ships its model; nothing is
downloaded). It rates every 32 ms frame, streaming: `SpeechScan` reads the audio a chunk at a
time and keeps only the frame probabilities (4 bytes per 32 ms), so a request holds one chunk of
samples whatever its length, and the scan can be spread over the engine's rounds.

`plan_windows` turns the speech regions into decode windows: each at most `window_s` long, cut
only in pauses (a region longer than a window is split by the detector at its quietest moment,
never mid-word if it can help it), each window the contiguous audio from its first region's
start to its last region's end, so a segment's time is the window's start plus the model's own
timestamp.
"""

import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.engine.audio import SAMPLE_RATE, DecodedAudio

__all__ = ["SpeechDetector", "SpeechScan", "VadPolicy", "Window", "plan_windows"]

FRAME = 512
"""Samples Silero VAD rates at a time at 16 kHz (32 ms)."""
WARM_UP_FRAMES = 32
"""Frames (1 s) a stream hears before its chunk: enough for the detector's state to settle."""


@dataclass(frozen=True, slots=True)
class VadPolicy:
    threshold: float = 0.5
    """Silero's default speech probability threshold."""
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    """Shorter pauses stay inside a region: a breath between words is not a cut."""
    pad_ms: int = 200
    """Audio kept each side of a region, so soft word onsets and endings are not clipped."""
    chunk_s: float = 5.0
    """Audio each stream of the scan rates at a time."""
    streams: int = 64
    """Chunks rated side by side per step: the scan holds `streams` chunks with their warm-ups
    (6.4 min of samples, 25 MB); each step calls the detector once per frame of a chunk, so many
    short chunks cost fewer calls than a few long ones."""


@dataclass(frozen=True, slots=True)
class Window:
    """A span of the recording decoded as one row, in samples."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


class SpeechDetector:
    """Silero VAD, loaded once per engine (about 2 MB). Not thread-safe: the engine calls it from
    its one computing thread."""

    def __init__(self) -> None:
        self._model: Any = None
        self._load_lock = threading.Lock()

    def model(self) -> Any:
        with self._load_lock:
            if self._model is None:
                self._model = _load_silero()
            return self._model


def _load_silero() -> Any:
    # Importing silero_vad sets torch's thread count to 1 for the whole process: put it back.
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # its loader's own deprecated calls; the model is packaged
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad()


class SpeechScan:
    """Rates `audio` frame by frame, `streams` chunks per `step()`; then `regions()`.

    Silero is recurrent, and one frame per call is slow in Python; so each step rates several
    chunks side by side as a batch of streams, each stream first fed the `WARM_UP_S` of audio
    before its chunk (its state then is what a single stream's would be, near enough)."""

    def __init__(self, detector: SpeechDetector, audio: DecodedAudio, policy: VadPolicy) -> None:
        self._model = detector.model()
        self._audio = audio
        self._policy = policy
        self._chunk = int(policy.chunk_s * SAMPLE_RATE) // FRAME * FRAME
        self._position = 0
        self._probabilities: list[float] = []

    @property
    def done(self) -> bool:
        return self._position >= len(self._audio)

    def step(self) -> None:
        """Rates the next `streams` chunks."""
        starts = range(
            self._position,
            min(len(self._audio), self._position + self._policy.streams * self._chunk),
            self._chunk,
        )
        warm = WARM_UP_FRAMES * FRAME
        batch = np.zeros((len(starts), warm + self._chunk), dtype=np.float32)
        for row, start in enumerate(starts):
            samples = self._audio.read(max(0, start - warm), start + self._chunk)
            offset = warm - min(warm, start)
            batch[row, offset : offset + samples.size] = samples
        self._model.reset_states()
        frames = torch.from_numpy(batch).view(len(starts), -1, FRAME)
        with torch.inference_mode():
            rated = [self._model(frames[:, i], SAMPLE_RATE) for i in range(frames.shape[1])]
        probabilities = torch.cat(rated, dim=1)[:, WARM_UP_FRAMES:].reshape(-1)
        self._position = starts[-1] + self._chunk
        wanted = -(-min(self._position, len(self._audio)) // FRAME) - len(self._probabilities)
        self._probabilities.extend(probabilities[:wanted].tolist())

    def regions(self, max_region_s: float) -> list[Window]:
        """Speech regions (padded), none longer than `max_region_s`."""
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        policy = self._policy
        found = get_speech_timestamps_from_probs(
            self._probabilities,
            sampling_rate=SAMPLE_RATE,
            threshold=policy.threshold,
            min_speech_duration_ms=policy.min_speech_ms,
            max_speech_duration_s=max_region_s,
            min_silence_duration_ms=policy.min_silence_ms,
            speech_pad_ms=policy.pad_ms,
            audio_length_samples=len(self._audio),
        )
        return [Window(int(region["start"]), int(region["end"])) for region in found]


def plan_windows(regions: list[Window], window_s: float) -> list[Window]:
    """Consecutive regions merged into windows of at most `window_s` (a region is never split
    here: the detector already cut the longer ones)."""
    limit = int(window_s * SAMPLE_RATE)
    windows: list[Window] = []
    for region in regions:
        if windows and region.end - windows[-1].start <= limit:
            windows[-1] = Window(windows[-1].start, region.end)
        else:
            windows.append(region)
    return windows


def batches(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), size):
        yield windows[start : start + size]
