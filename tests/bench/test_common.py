"""The benchmarks' WER and text normalisation give exact, known values."""

import math

import pytest

from bench.common import (
    edit_distance,
    format_table,
    latency_stats_ms,
    normalise_text,
    number_to_words,
    ordinal_words,
    wer,
    word_errors,
)


def test_identical_text_has_no_errors() -> None:
    assert wer(["the cat sat"], ["the cat sat"]) == 0


def test_one_substitution_in_three_words() -> None:
    assert wer(["the cat sat"], ["the dog sat"]) == pytest.approx(1 / 3)


def test_empty_hypothesis_is_all_deletions() -> None:
    assert wer(["the cat sat"], [""]) == 1.0


def test_insertions_can_push_wer_above_one() -> None:
    assert wer(["hi"], ["oh hi there you"]) == 3.0


def test_wer_pools_edits_over_all_reference_words() -> None:
    # 1 edit in 1 word plus 0 edits in 3 words: 1/4, not the mean of 1.0 and 0.0.
    assert wer(["yes", "the cat sat"], ["no", "the cat sat"]) == pytest.approx(0.25)


def test_wer_without_reference_words() -> None:
    assert wer([""], [""]) == 0.0
    assert math.isinf(wer([""], ["noise"]))


def test_wer_needs_matching_lengths() -> None:
    with pytest.raises(ValueError, match="hypotheses"):
        wer(["a", "b"], ["a"])


def test_spoken_and_written_numbers_normalise_equal() -> None:
    assert normalise_text("Eight.") == normalise_text("8") == "eight"
    assert normalise_text("We need 8 more chairs.") == "we need eight more chairs"


def test_case_punctuation_and_whitespace_are_ignored() -> None:
    assert normalise_text("  Hello,   World!  ") == "hello world"
    assert word_errors("Don't stop.", "dont   STOP") == (0, 2)


def test_hyphens_split_and_apostrophes_join() -> None:
    assert normalise_text("twenty-one") == "twenty one"
    assert normalise_text("it's") == "its"


@pytest.mark.parametrize(
    ("numeral", "words"),
    [
        ("0", "zero"),
        ("13", "thirteen"),
        ("40", "forty"),
        ("21", "twenty one"),
        ("105", "one hundred five"),
        ("1,250", "one thousand two hundred fifty"),
        ("2000000", "two million"),
        ("3.5", "three point five"),
        ("50%", "fifty percent"),
        ("1st", "first"),
        ("22nd", "twenty second"),
        ("12th", "twelfth"),
        ("30th", "thirtieth"),
    ],
)
def test_numerals_are_spelled_out(numeral: str, words: str) -> None:
    assert normalise_text(numeral) == words


def test_clock_times_read_as_two_numbers() -> None:
    assert normalise_text("at 8:30") == "at eight thirty"


def test_number_helpers() -> None:
    assert number_to_words(999) == "nine hundred ninety nine"
    assert number_to_words(-7) == "minus seven"
    assert ordinal_words(3) == "third"


def test_edit_distance_counts_each_kind_of_edit() -> None:
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1  # deletion
    assert edit_distance(["a", "c"], ["a", "b", "c"]) == 1  # insertion
    assert edit_distance(["a", "b", "c"], ["a", "x", "c"]) == 1  # substitution
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["kitten"], []) == 1


def test_latency_stats_are_in_milliseconds() -> None:
    stats = latency_stats_ms([0.1, 0.2, 0.3, 0.4, 0.5])
    assert stats["p50"] == pytest.approx(300.0)
    assert stats["mean"] == pytest.approx(300.0)
    assert stats["p95"] == pytest.approx(480.0)
    assert stats["min"] == pytest.approx(100.0)
    assert stats["max"] == pytest.approx(500.0)


def test_format_table_aligns_numbers_right() -> None:
    table = format_table(["name", "ms"], [["fp32", "12"], ["nf4", "3"], ["gone", None]])
    assert table.splitlines() == [
        "name  ms",
        "----  --",
        "fp32  12",
        "nf4    3",
        "gone   -",
    ]
