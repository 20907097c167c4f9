"""Real speech (espeak-ng): short clips encoded as uploads (cached per process), and
sentences read aloud one after another."""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from tests.support.audio import SAMPLE_RATE, scale_to_dbfs, silence, speech_16k, to_bytes

SENTENCES = (
    "Please open the window in the kitchen.",
    "The weather will be warm and sunny tomorrow.",
    "My brother works at the hospital downtown.",
    "We need more milk, bread and butter.",
    "Turn left after the old church on the corner.",
    "The meeting starts at nine in the morning.",
)


@cache
def wav_of(text: str) -> bytes:
    return to_bytes(speech_16k(text), SAMPLE_RATE)


@cache
def long_wav(seconds: float) -> bytes:
    """Speech padded with silence to `seconds`."""
    speech = speech_16k(SENTENCES[0])
    padding = silence(max(seconds - len(speech) / SAMPLE_RATE, 0.0))
    return to_bytes(np.concatenate([speech, padding]), SAMPLE_RATE)


@dataclass(frozen=True)
class ReadAloud:
    """Sentences read one after another with pauses, and when each was said (seconds)."""

    audio: np.ndarray
    spans: list[tuple[float, float]]
    reference: str


def read_aloud(sentences: Sequence[str], pause_s: float, level_dbfs: float = -3.0) -> ReadAloud:
    parts: list[np.ndarray] = [silence(0.5)]
    spans: list[tuple[float, float]] = []
    position = len(parts[0])
    for text in sentences:
        speech = scale_to_dbfs(speech_16k(text, voice="en-us", speed=130), level_dbfs)
        spans.append((position / SAMPLE_RATE, (position + len(speech)) / SAMPLE_RATE))
        parts += [speech, silence(pause_s)]
        position += len(speech) + int(pause_s * SAMPLE_RATE)
    return ReadAloud(np.concatenate(parts), spans, " ".join(sentences))


def speechocean_on_disk() -> bool:
    from bench.speechocean import speechocean_dir

    return (speechocean_dir() / "manifest.tsv").is_file()


def real_reading(speaker: str, pause_s: float = 0.8) -> ReadAloud:
    """Every recording of a speechocean762 pool-half speaker, read one after another."""
    from bench.speakers import load
    from bench.speechocean import build_suite

    data = build_suite("pool", [speaker]).speakers[speaker]
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    position = 0
    for utterance in [*data.train, *data.dev, *data.test]:
        speech = load(utterance)
        spans.append((position / SAMPLE_RATE, (position + len(speech)) / SAMPLE_RATE))
        parts += [speech, silence(pause_s)]
        position += len(speech) + int(pause_s * SAMPLE_RATE)
    text = " ".join(u.text for u in [*data.train, *data.dev, *data.test])
    return ReadAloud(np.concatenate(parts), spans, text)


HOUSEHOLD = (
    # (sentence, a word of it that only it holds)
    ("Please close the kitchen window before you go to bed tonight.", "kitchen"),
    ("Could you help me carry these heavy boxes up to the attic?", "attic"),
    ("We painted the living room a pale shade of green last spring.", "painted"),
    ("Remember to take the rubbish out on Tuesday evening.", "tuesday"),
    ("My grandmother keeps her old photographs in a tin under the stairs.", "grandmother"),
    ("The cat likes to sleep on the warm radiator in the hallway.", "hallway"),
    ("Where did you put the spare key for the garden shed?", "garden"),
    ("I need to fix the dripping tap in the upstairs bathroom.", "bathroom"),
    ("The vacuum cleaner is in the cupboard next to the boiler.", "vacuum"),
    ("Please fold the towels and put them in the second drawer.", "towels"),
    ("The smoke alarm beeps every few minutes because the battery is low.", "minutes"),
    ("We finally bought a new sofa after looking for three months.", "sofa"),
)
HOUSEHOLD_PAUSE_S = 1.5


def read_household(level_dbfs: float = -3.0) -> ReadAloud:
    """Twelve household sentences read one after another: about a minute, two 30 s windows."""
    return read_aloud([text for text, _ in HOUSEHOLD], HOUSEHOLD_PAUSE_S, level_dbfs)
