"""Log-mel features exactly as the serving path computes them (training uses the same)."""

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["HOP_LENGTH", "SAMPLE_RATE", "WINDOW_FRAMES", "log_mel", "pad_or_trim"]

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
WINDOW_FRAMES = 3000
"""Mel frames in one 30 s window."""


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


def pad_or_trim(mel: Tensor, frames: int = WINDOW_FRAMES) -> Tensor:
    """[n_mels, any] -> [n_mels, frames], zero-padded on the right (as Whisper pads windows)."""
    have = mel.shape[-1]
    if have >= frames:
        return mel[:, :frames]
    return torch.nn.functional.pad(mel, (0, frames - have))
