"""Training examples built exactly as serving sees audio, and their batching.

One utterance (at most one 30 s window) becomes one example: the log-mel window that
`WhisperEngine` encodes for the same audio (`log_mel`, then the first window cut to
`window_frames(content_frames, encoder_window)`), the serving prefix without timestamps
(`<|startoftranscript|>` [language, `<|transcribe|>`] `<|notimestamps|>`) and the transcript's
tokens followed by `<|endoftext|>`. The loss only covers the transcript and the end token.
"""

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.engine.encoder import EncoderWindow, window_frames
from app.engine.features import HOP_LENGTH, SAMPLE_RATE, WINDOW_FRAMES, log_mel, pad_or_trim
from app.engine.tokens import SpecialTokens
from app.engine.training.errors import TrainingDataError

__all__ = [
    "IGNORE_INDEX",
    "MAX_DECODER_TOKENS",
    "MAX_UTTERANCE_SECONDS",
    "BaseTargets",
    "Batch",
    "Example",
    "Utterance",
    "build_example",
    "check_utterance",
    "collate",
    "prompt_tokens",
    "spec_augment",
    "split_train_dev",
    "step_batches",
    "target_tokens",
    "training_window",
]

IGNORE_INDEX = -100
"""Label of positions the loss skips (the prefix and padding)."""
MAX_UTTERANCE_SECONDS = WINDOW_FRAMES * HOP_LENGTH / SAMPLE_RATE
MAX_DECODER_TOKENS = 448
"""Whisper's decoder context (prefix, transcript and end token together)."""


@dataclass(frozen=True, slots=True)
class Utterance:
    audio: np.ndarray
    """Mono float32 samples at 16 kHz, at most 30 s."""
    text: str
    """What is said, as the speaker would like it written."""


@dataclass(frozen=True, slots=True)
class BaseTargets:
    """The base model's most likely next tokens at each scored position of one example
    (`kld.base_targets`)."""

    tokens: Tensor
    """[targets, k] token ids."""
    probabilities: Tensor
    """[targets, k], each row summing to 1."""


@dataclass(frozen=True, slots=True)
class Example:
    mel: Tensor
    """[n_mels, frames]: the encoder window serving uses for this audio."""
    tokens: tuple[int, ...]
    """Prefix, transcript tokens, `<|endoftext|>`."""
    prefix_length: int
    base: BaseTargets | None = None
    """What the base model predicts, where training is KL-regularised."""
    utterances: int = 1
    """Recordings in the window (`joined`): the work an example counts for in progress."""

    @property
    def frames(self) -> int:
        return int(self.mel.shape[-1])

    @property
    def target_count(self) -> int:
        return len(self.tokens) - self.prefix_length


@dataclass(frozen=True, slots=True)
class Batch:
    mel: Tensor
    """[batch, n_mels, frames], all examples with the same window length."""
    input_ids: Tensor
    """[batch, length]: tokens fed to the decoder (right-padded)."""
    labels: Tensor
    """[batch, length]: the next token at each position, `IGNORE_INDEX` where not scored."""

    @property
    def target_count(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def check_utterance(utterance: Utterance, index: int) -> None:
    audio = utterance.audio
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
        raise TrainingDataError(f"utterance {index}: audio must be 1-D float32 samples at 16 kHz")
    if audio.size < HOP_LENGTH:
        raise TrainingDataError(f"utterance {index}: audio is shorter than one mel frame")
    if audio.size // HOP_LENGTH > WINDOW_FRAMES:
        raise TrainingDataError(
            f"utterance {index} is {audio.size / SAMPLE_RATE:.2f} s long; training takes "
            f"utterances of at most {MAX_UTTERANCE_SECONDS:.0f} s (one encoder window)"
        )
    if not utterance.text.strip():
        raise TrainingDataError(f"utterance {index} has an empty transcript")


def training_window(
    feature_extractor: Any, audio: np.ndarray, device: torch.device, window: EncoderWindow
) -> Tensor:
    """[n_mels, frames]: the first (only) window `WhisperEngine._transcribe` encodes for audio
    of at most 30 s, with the same features, cut and padding."""
    mel = log_mel(feature_extractor, audio, device)
    content_frames = len(audio) // HOP_LENGTH
    chunk = min(WINDOW_FRAMES, content_frames)
    return pad_or_trim(mel[:, :chunk], window_frames(chunk, window))


def prompt_tokens(tokens: SpecialTokens, language: str, *, timestamps: bool = False) -> list[int]:
    """The decoder prefix serving uses without a prompt (and, unless `timestamps`, without
    timestamps)."""
    prefix = [tokens.sot]
    if tokens.multilingual:
        prefix.append(tokens.language_ids.get(language, tokens.language_ids["en"]))
        if tokens.transcribe is not None:
            prefix.append(tokens.transcribe)
    if not timestamps:
        prefix.append(tokens.no_timestamps)
    return prefix


def target_tokens(tokenizer: Any, tokens: SpecialTokens, text: str) -> list[int]:
    """The transcript's tokens (with Whisper's leading space) and `<|endoftext|>`."""
    ids: list[int] = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return [*ids, tokens.eot]


def build_example(
    utterance: Utterance,
    *,
    feature_extractor: Any,
    tokenizer: Any,
    tokens: SpecialTokens,
    device: torch.device,
    window: EncoderWindow,
    language: str = "en",
    index: int = 0,
) -> Example:
    check_utterance(utterance, index)
    prefix = prompt_tokens(tokens, language)
    sequence = (*prefix, *target_tokens(tokenizer, tokens, utterance.text))
    if len(sequence) > MAX_DECODER_TOKENS:
        raise TrainingDataError(
            f"utterance {index}: transcript is {len(sequence) - len(prefix)} tokens long, "
            f"more than the decoder's {MAX_DECODER_TOKENS - len(prefix)}"
        )
    mel = training_window(feature_extractor, utterance.audio, device, window)
    return Example(mel=mel, tokens=sequence, prefix_length=len(prefix))


def collate(examples: Sequence[Example], pad_token: int) -> Batch:
    """Stacks examples of equal window length; labels are the next tokens of the transcript.
    Everything on the examples' device."""
    frames = {example.frames for example in examples}
    if len(frames) != 1:
        raise ValueError(f"examples of one batch must share a window length, got {frames}")
    length = max(len(example.tokens) for example in examples) - 1
    input_ids = torch.full((len(examples), length), pad_token, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        sequence = torch.tensor(example.tokens, dtype=torch.long)
        size = len(example.tokens) - 1
        input_ids[row, :size] = sequence[:-1]
        labels[row, :size] = sequence[1:]
        labels[row, : example.prefix_length - 1] = IGNORE_INDEX
    mel = torch.stack([example.mel for example in examples])
    return Batch(mel=mel, input_ids=input_ids.to(mel.device), labels=labels.to(mel.device))


def step_batches(
    examples: Sequence[Example], batch_size: int, rng: random.Random
) -> Iterator[list[list[int]]]:
    """One epoch of optimiser steps: a shuffled batch of `batch_size` example indices per step,
    each cut into micro-batches of equal window length (their gradients are accumulated)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        groups: dict[int, list[int]] = {}
        for index in order[start : start + batch_size]:
            groups.setdefault(examples[index].frames, []).append(index)
        yield [groups[frames] for frames in sorted(groups)]


def split_train_dev(
    utterances: Sequence[Utterance], dev_fraction: float, seed: int, *, min_dev: int = 3
) -> tuple[list[Utterance], list[Utterance]]:
    """A deterministic held-out split: `max(min_dev, round(n * dev_fraction))` utterances (never
    all of them) go to dev, chosen by `seed`; both lists keep the input order."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError("dev_fraction must be in [0, 1)")
    count = len(utterances)
    if count < 2:
        return list(utterances), []
    size = min(count - 1, max(min_dev, round(count * dev_fraction)))
    dev = set(random.Random(seed).sample(range(count), size))
    train = [u for i, u in enumerate(utterances) if i not in dev]
    return train, [u for i, u in enumerate(utterances) if i in dev]


FREQUENCY_MASKS = (2, 10)
"""SpecAugment's frequency masks: how many, and the widest in mel bins."""
TIME_MASKS = (2, 0.05)
"""Its time masks: how many, and the widest as a fraction of the window's frames."""


def spec_augment(mel: Tensor, rng: random.Random) -> Tensor:
    """A copy of `mel` [batch, bins, frames] with SpecAugment's masks (Park et al., 2019) drawn
    per example and filled with that example's mean: regularisation for small uploads."""
    masked = mel.clone()
    _, bins, frames = mel.shape
    count, widest = FREQUENCY_MASKS
    time_count, time_fraction = TIME_MASKS
    widest_time = max(1, int(time_fraction * frames))
    for row in masked:
        fill = row.mean()
        for _ in range(count):
            width = rng.randint(0, widest)
            start = rng.randint(0, bins - width)
            row[start : start + width, :] = fill
        for _ in range(time_count):
            width = rng.randint(0, widest_time)
            start = rng.randint(0, frames - width)
            row[:, start : start + width] = fill
    return masked
