"""Speech for Chromium's fake microphone: one wav per sentence, with silence around it."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support.audio import SAMPLE_RATE, silence, speech_16k, write_wav

LEAD_S = 0.6
"""Silence first: the file starts when the page opens the microphone, a moment before the
recorder starts."""
TAIL_S = 0.6
"""Recorded after the speech, before the test presses Stop."""


@dataclass(frozen=True, slots=True)
class Voice:
    path: Path
    seconds: float
    """How long to record to hold all of the speech."""


def voice_for(sentence: str, directory: Path) -> Voice:
    speech = speech_16k(sentence)
    samples = np.concatenate([silence(LEAD_S), speech, silence(TAIL_S + 1.0)])
    name = hashlib.sha256(sentence.encode()).hexdigest()[:16]
    path = write_wav(directory / f"{name}.wav", samples, SAMPLE_RATE)
    return Voice(path, LEAD_S + len(speech) / SAMPLE_RATE + TAIL_S)
