"""Whisper's encoder on windows shorter than 30 s.

Whisper always encodes 30 s (3000 mel frames), most of it padding for short utterances. Its
positional embeddings are absolute, so a shorter window simply uses the first positions. The
model was not trained that way: an adapter is served with exactly the window it was trained
on (training and serving share `window_frames`). For the base model a short window is an
option (`fit10`, at least 10 s), off by default: `bench/enrolment.py` found it neutral on
synthetic sentences but badly worse on short real recordings (FSDD digit strings).
"""

import math
from typing import Any

import torch
from torch import Tensor, nn

from app.engine.types import EncoderWindow

__all__ = ["FULL_WINDOW_FRAMES", "EncoderWindow", "encode", "window_frames"]

FULL_WINDOW_FRAMES = 3000
FRAMES_PER_SECOND = 100

_MIN_FIT_SECONDS = {"fit": 2, "fit10": 10}


def window_frames(content_frames: int, window: EncoderWindow) -> int:
    """How many mel frames the encoder sees for a window holding `content_frames` of audio."""
    if window == "full":
        return FULL_WINDOW_FRAMES
    seconds = max(_MIN_FIT_SECONDS[window], math.ceil(content_frames / FRAMES_PER_SECOND) + 1)
    return min(FULL_WINDOW_FRAMES, seconds * FRAMES_PER_SECOND)


def encode(encoder: Any, mel: Tensor) -> Tensor:
    """[batch, n_mels, frames <= 3000] -> [batch, frames // 2, d_model]

    `encoder` is a transformers `WhisperEncoder`. The same computation as its `forward`, without
    the insistence on exactly 3000 frames.
    """
    hidden = nn.functional.gelu(encoder.conv1(mel))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    hidden = hidden + encoder.embed_positions(positions)
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    output: Tensor = encoder.layer_norm(hidden)
    return output
