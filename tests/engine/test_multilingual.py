"""A multilingual Whisper (the bundled base, the `[base]` extra) through the engine: the spoken
language is detected, and speech in another language is translated into English."""

import numpy as np
import pytest

from app.engine.text import normalise_text
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.audio import speech_16k

SPOKEN = {  # language -> (espeak-ng voice, what it says)
    "en": ("en-us", "The quick brown fox jumps over the lazy dog."),
    "de": ("de", "Das Wetter ist heute sehr schön und warm."),
    "es": ("es", "Mañana vamos a la playa con nuestros amigos."),
    "fr": ("fr", "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans."),
    "nl": ("nl", "Ik woon al tien jaar in Amsterdam en ik fiets elke dag."),
}
ENGLISH_WORDS = {"the", "is", "and", "i", "we", "you", "with", "to", "of", "my", "are"}


def _speech(language: str) -> np.ndarray:
    voice, text = SPOKEN[language]
    return speech_16k(text, voice=voice, speed=150 if language != "en" else 130)


@pytest.mark.parametrize("language", list(SPOKEN))
def test_the_spoken_language_is_detected(base_engine: WhisperEngine, language: str) -> None:
    assert base_engine.transcribe(_speech(language), TranscriptionOptions()).language == language


@pytest.mark.parametrize("language", ["de", "es"])
def test_speech_in_another_language_is_translated_into_english(
    base_engine: WhisperEngine, language: str
) -> None:
    audio = _speech(language)
    spoken = base_engine.transcribe(audio, TranscriptionOptions())
    translated = base_engine.transcribe(audio, TranscriptionOptions(task="translate"))

    assert translated.language == language  # the language it was translated from
    words = set(normalise_text(translated.text).split())
    assert words & ENGLISH_WORDS, translated.text
    assert not set(normalise_text(spoken.text).split()) & ENGLISH_WORDS, spoken.text


def test_an_english_only_model_does_not_translate(nf4_engine: WhisperEngine) -> None:
    with pytest.raises(ValueError, match="multilingual"):
        nf4_engine.open(_speech("en"), TranscriptionOptions(task="translate"))
