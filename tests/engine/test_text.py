"""WER as published Whisper numbers are computed: Whisper's English normaliser, then jiwer."""

import math

import pytest

from app.engine.text import normalise_text, wer, word_errors


def test_identical_text_has_no_errors() -> None:
    assert wer(["the cat sat"], ["the cat sat"]) == 0


def test_one_substitution_in_three_words() -> None:
    assert wer(["the cat sat"], ["the dog sat"]) == pytest.approx(1 / 3)


def test_empty_hypothesis_is_all_deletions() -> None:
    assert wer(["the cat sat"], [""]) == 1.0


def test_insertions_can_push_wer_above_one() -> None:
    assert wer(["hi"], ["oh hi there you"]) == 3.0


def test_wer_pools_edits_over_all_reference_words() -> None:
    """One error in four words, not the mean of 1.0 and 0.0."""
    assert wer(["yes", "the cat sat"], ["no", "the cat sat"]) == pytest.approx(0.25)


def test_wer_without_reference_words() -> None:
    assert wer([""], [""]) == 0.0
    assert math.isinf(wer([""], ["noise"]))
    assert word_errors("", "two words") == (2, 0)


def test_wer_needs_matching_lengths() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("We need 8 more chairs.", "We need eight more chairs"),
        ("It's Dr. Smith!", "it is doctor smith"),
        ("twenty-one", "21"),
        ("The colour of the centre", "the color of the center"),
        ("Um, I don't know.", "I do not know"),
        ("50%", "fifty percent"),
        ("  Hello,   World!  ", "hello world"),
    ],
)
def test_what_whisper_normalises_away_is_no_error(written: str, spoken: str) -> None:
    assert normalise_text(written) == normalise_text(spoken)
    assert word_errors(written, spoken)[0] == 0


@pytest.mark.parametrize(
    "heard", ["3 5 1", "3, 5, 1.", "351", "three, five, one", "Three five one"]
)
def test_digit_strings_score_a_word_per_digit_however_they_are_written(heard: str) -> None:
    assert word_errors("THREE FIVE ONE", heard) == (0, 3)


def test_a_wrong_digit_is_one_error() -> None:
    assert word_errors("zero three five one", "0 3 9 1") == (1, 4)
