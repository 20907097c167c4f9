"""Enrolment recordings joined into long-form windows.

Serving long audio shows an adapter many utterances in one 30 s window, with pauses between
them, decoded with timestamps (the sequential long-form always is) or without (a batched window
of a plain-text request); single enrolment utterances show it neither. With
`TrainingConfig.joined_windows` the training set also holds such windows: the recordings in a
seeded order, consecutive ones joined by seeded pauses while the window stays within 30 s, each
recording in at most one window, every window at least two recordings long. Every other window
is transcribed with Whisper's segment timestamps (where each recording starts and ends), the rest
without, as serving decodes them.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.engine.encoder import EncoderWindow
from app.engine.features import SAMPLE_RATE
from app.engine.tokens import SpecialTokens
from app.engine.training.data import (
    MAX_DECODER_TOKENS,
    MAX_UTTERANCE_SECONDS,
    Example,
    Utterance,
    prompt_tokens,
    target_tokens,
    training_window,
)
from app.engine.training.errors import TrainingDataError

__all__ = [
    "PAUSES_S",
    "TIMESTAMP_STEP_S",
    "JoinedWindow",
    "join_utterances",
    "joined_example",
    "timed_tokens",
]

PAUSES_S = (0.3, 1.2)
"""Silence between joined recordings: the pauses of read speech (as `bench.longform` reads)."""
TIMESTAMP_STEP_S = 0.02
"""Whisper's timestamp tokens are 20 ms apart."""


@dataclass(frozen=True, slots=True)
class JoinedWindow:
    parts: tuple[Utterance, ...]
    starts_s: tuple[float, ...]
    """Where each part starts in `audio`."""
    audio: np.ndarray
    with_timestamps: bool

    @property
    def text(self) -> str:
        return " ".join(part.text.strip() for part in self.parts)


def join_utterances(
    utterances: Sequence[Utterance], seed: int, *, timestamps: bool
) -> list[JoinedWindow]:
    """The windows of `utterances` (see the module docstring); `timestamps=False`: none has
    them (SAML's decoder routers see one fixed prefix)."""
    rng = random.Random(seed)
    order = list(range(len(utterances)))
    rng.shuffle(order)
    groups: list[list[tuple[Utterance, float]]] = []
    group: list[tuple[Utterance, float]] = []
    length = 0.0
    for index in order:
        utterance = utterances[index]
        pause = rng.uniform(*PAUSES_S) if group else 0.0
        seconds = len(utterance.audio) / SAMPLE_RATE
        if group and length + pause + seconds > MAX_UTTERANCE_SECONDS:
            groups.append(group)
            group, length, pause = [], 0.0, 0.0
        group.append((utterance, pause))
        length += pause + seconds
    groups.append(group)
    joined = [g for g in groups if len(g) >= 2]
    return [_window(g, timestamps and i % 2 == 0) for i, g in enumerate(joined)]


def _window(group: Sequence[tuple[Utterance, float]], with_timestamps: bool) -> JoinedWindow:
    pieces: list[np.ndarray] = []
    starts: list[float] = []
    at = 0
    for utterance, pause in group:
        silence = round(pause * SAMPLE_RATE)
        pieces += [np.zeros(silence, np.float32), utterance.audio]
        at += silence
        starts.append(at / SAMPLE_RATE)
        at += len(utterance.audio)
    return JoinedWindow(
        parts=tuple(utterance for utterance, _ in group),
        starts_s=tuple(starts),
        audio=np.concatenate(pieces).astype(np.float32, copy=False),
        with_timestamps=with_timestamps,
    )


def joined_example(
    window: JoinedWindow,
    *,
    feature_extractor: Any,
    tokenizer: Any,
    tokens: SpecialTokens,
    device: torch.device,
    encoder_window: EncoderWindow,
    language: str = "en",
) -> Example:
    """The window as a training example, with the prefix serving uses for it."""
    prefix = prompt_tokens(tokens, language, timestamps=window.with_timestamps)
    sequence = (*prefix, *timed_tokens(window, tokenizer, tokens))
    if len(sequence) > MAX_DECODER_TOKENS:
        raise TrainingDataError(
            f"a joined window is {len(sequence)} tokens long, more than the decoder's "
            f"{MAX_DECODER_TOKENS}"
        )
    mel = training_window(feature_extractor, window.audio, device, encoder_window)
    return Example(
        mel=mel, tokens=sequence, prefix_length=len(prefix), utterances=len(window.parts)
    )


def timed_tokens(window: JoinedWindow, tokenizer: Any, tokens: SpecialTokens) -> list[int]:
    """The window's transcript as the decoder writes it: per part `<|start|> text<|end|>` with
    timestamps, or the parts' text in one run without; then `<|endoftext|>`."""
    if not window.with_timestamps:
        return target_tokens(tokenizer, tokens, window.text)
    sequence: list[int] = []
    for part, start in zip(window.parts, window.starts_s, strict=True):
        end = start + len(part.audio) / SAMPLE_RATE
        text: list[int] = tokenizer.encode(" " + part.text.strip(), add_special_tokens=False)
        sequence += [_timestamp(tokens, start), *text, _timestamp(tokens, end)]
    return [*sequence, tokens.eot]


def _timestamp(tokens: SpecialTokens, seconds: float) -> int:
    steps = min(round(seconds / TIMESTAMP_STEP_S), round(MAX_UTTERANCE_SECONDS / TIMESTAMP_STEP_S))
    return tokens.timestamp_begin + steps
