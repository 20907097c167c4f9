"""Log-mel features exactly as the serving path computes them (training uses the same).

`log_mel` computes them over a whole signal at once; `LogMelStream` gives the very same values
(bit for bit) a range of frames at a time, so that serving long audio needs memory for one
window, not for the whole spectrogram. Whisper clamps every value at 8 (log10 units) below the
global maximum: the stream finds that maximum in a first pass (`scan`, a chunk at a time) and
normalises the frames it is asked for in a second. Each frame's STFT sees the same samples as in
the whole-signal computation (`N_FFT // 2` of context on either side, reflected at the start),
and each matmul spans at least `_MIN_FRAMES` columns: with one column the BLAS takes a
matrix-vector path that rounds differently. Frames whose samples are all zero have one value
(computed once, by the same operations): digital silence costs no STFT.
"""

from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.engine.audio import DecodedAudio

__all__ = [
    "FIRST_SCAN_FRAMES",
    "HOP_LENGTH",
    "N_FFT",
    "SAMPLE_RATE",
    "SCAN_FRAMES",
    "WINDOW_FRAMES",
    "LogMelStream",
    "log_mel",
    "pad_or_trim",
]

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400
WINDOW_FRAMES = 3000
"""Mel frames in one 30 s window."""

FIRST_SCAN_FRAMES = 2 * WINDOW_FRAMES
"""Frames of a first `LogMelStream.scan` step that covers a clip under 30 s with its window of
padding (a clip's first window is then ready without waiting for another turn)."""

SCAN_FRAMES = 1000
"""Frames of the maximum pass per later step: 10 s of audio, about 30 ms of work on two cores
(a decode step's order): what a long request adds to a round of the others."""

_MIN_FRAMES = 16
"""Fewest columns per mel matmul (see the module docstring)."""


def log_mel(feature_extractor: Any, audio: np.ndarray, device: torch.device) -> Tensor:
    """[samples] -> [n_mels, samples // 160 + 3000]

    `feature_extractor` is a transformers `WhisperFeatureExtractor`. The audio is padded with a
    full window of silence, as Whisper does, so the last window sees the same normalisation as
    every other one.
    """
    padded = np.concatenate([audio, np.zeros(WINDOW_FRAMES * HOP_LENGTH, dtype=np.float32)])
    features = feature_extractor(
        padded,
        sampling_rate=SAMPLE_RATE,
        padding="do_not_pad",
        truncation=False,
        return_tensors="pt",
    ).input_features
    mel: Tensor = features[0].to(device)
    return mel


class LogMelStream:
    """`log_mel(feature_extractor, audio)`, computed a range of frames at a time on the CPU.

    Call `scan` until it returns True (the global maximum is then known), then `frames`.
    """

    def __init__(self, feature_extractor: Any, audio: DecodedAudio) -> None:
        if (feature_extractor.n_fft, feature_extractor.hop_length) != (N_FFT, HOP_LENGTH):
            raise ValueError("the feature extractor is not Whisper's (n_fft 400, hop 160)")
        if feature_extractor.dither:
            raise ValueError("dithered features are not reproducible a window at a time")
        self._audio = audio
        self._signal = len(audio) + WINDOW_FRAMES * HOP_LENGTH  # with its window of silence
        self.total_frames = self._signal // HOP_LENGTH
        self._window = torch.hann_window(N_FFT)
        self._filters = torch.from_numpy(feature_extractor.mel_filters).to(torch.float32)
        self._scanned = 0
        self._peak = torch.tensor(-torch.inf)
        self._floor: Tensor | None = None  # the global maximum - 8
        self._silence: Tensor | None = None  # the value of every frame of digital silence

    def scan(self, frames: int = SCAN_FRAMES) -> bool:
        """Advances the maximum pass by up to `frames` frames; True once it is complete."""
        if self._floor is None:
            stop = min(self.total_frames, self._scanned + frames)
            self._peak = torch.maximum(self._peak, self._log_spectrum(self._scanned, stop).max())
            self._scanned = stop
            if stop == self.total_frames:
                self._floor = self._peak - 8.0
        return self._floor is not None

    def frames(self, start: int, stop: int) -> Tensor:
        """[n_mels, stop - start] normalised features of frames [start, stop)."""
        if self._floor is None:
            raise RuntimeError("scan the whole signal before asking for frames")
        if not 0 <= start < stop <= self.total_frames:
            raise ValueError(f"frames [{start}, {stop}) outside [0, {self.total_frames})")
        return (torch.maximum(self._log_spectrum(start, stop), self._floor) + 4.0) / 4.0

    def _log_spectrum(self, start: int, stop: int) -> Tensor:
        """[n_mels, stop - start] log10 mel power, before Whisper's clamp and scaling."""
        low = max(0, min(start, stop - _MIN_FRAMES))
        high = min(self.total_frames, max(stop, low + _MIN_FRAMES))
        samples = self._samples(low * HOP_LENGTH - N_FFT // 2, high)
        if not samples.any():
            return self._silence_level().expand(self._filters.shape[1], stop - start)
        return self._spectrum(samples)[:, start - low : stop - low]

    def _spectrum(self, samples: np.ndarray) -> Tensor:
        """[samples] -> [n_mels, frames] log10 mel power (`log_mel`'s operations, in order)."""
        stft = torch.stft(
            torch.from_numpy(samples),
            N_FFT,
            HOP_LENGTH,
            window=self._window,
            center=False,
            return_complex=True,
        )  # [n_fft // 2 + 1, frames]
        magnitudes = (stft.abs() ** 2).contiguous()
        return torch.clamp(self._filters.T @ magnitudes, min=1e-10).log10()

    def _silence_level(self) -> Tensor:
        if self._silence is None:
            zeros = np.zeros((_MIN_FRAMES - 1) * HOP_LENGTH + N_FFT, dtype=np.float32)
            self._silence = self._spectrum(zeros)[0, 0]
        return self._silence

    def _samples(self, first: int, frames_end: int) -> np.ndarray:
        """The padded signal from sample `first` (negative: reflected, as `torch.stft` pads with
        `center=True`) to the end of frame `frames_end - 1`'s window."""
        end = (frames_end - 1) * HOP_LENGTH + N_FFT // 2
        out = np.zeros(end - first, dtype=np.float32)  # silence past the audio
        audio = self._audio.read(max(0, first), end)
        offset = max(0, -first)
        out[offset : offset + audio.shape[0]] = audio
        if first < 0:  # sample -i is sample i
            mirrored = self._audio.read(1, offset + 1)
            out[offset - mirrored.shape[0] : offset] = mirrored[::-1]
        return out


def pad_or_trim(mel: Tensor, frames: int = WINDOW_FRAMES) -> Tensor:
    """[n_mels, any] -> [n_mels, frames], zero-padded on the right (as Whisper pads windows)."""
    have = mel.shape[-1]
    if have >= frames:
        return mel[:, :frames]
    return torch.nn.functional.pad(mel, (0, frames - have))
