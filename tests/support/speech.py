"""Short real speech clips (espeak-ng), encoded as uploads, cached per process."""

from functools import cache

import numpy as np

from tests.support.audio import SAMPLE_RATE, silence, speech_16k, to_bytes

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
