"""The enrolment prompt corpus and the benchmarks' held-out sentences."""

import re
from pathlib import Path

import pytest

from app.data.prompts import PROMPTS, load_prompts, sample_prompts
from app.engine.text import normalise_text

HELDOUT = Path(__file__).resolve().parents[2] / "bench" / "data" / "heldout_sentences.txt"
ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.?!;:'\-]*[.?!]")
# Words too common to say anything about topic overlap.
_STOPWORD_TEXT = """
a an the and or but if of to in on at by for with from as is are was were be been it its this
that these those there their they them he she his her him we our us you your i my me not no so
than then too very can could would should will shall may might must do does did have has had
which who whom whose what when where why how all any some such each every other more most much
many few own same only also into over under about after before between through during without
within upon whether while because although
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _heldout() -> list[str]:
    return [line.strip() for line in HELDOUT.read_text().splitlines() if line.strip()]


def _content_words(sentences: list[str]) -> set[str]:
    return {w for s in sentences for w in normalise_text(s).split() if w not in STOPWORDS}


def test_corpus_is_large_and_distinct() -> None:
    prompts = load_prompts()
    assert prompts is PROMPTS
    assert len(prompts) >= 450
    assert len(set(prompts)) == len(prompts)
    # Distinct even after normalisation (no two differ only in punctuation or case).
    assert len({normalise_text(p) for p in prompts}) == len(prompts)


def test_sentences_are_readable_ascii_of_bounded_length() -> None:
    for prompt in load_prompts():
        assert prompt.isascii(), prompt
        assert ALLOWED.fullmatch(prompt), prompt
        assert not re.search(r"\d", prompt), prompt  # numbers are written as words
        assert 6 <= len(prompt.split()) <= 20, prompt


def test_the_file_has_no_duplicates_or_blank_lines() -> None:
    from importlib import resources

    lines = resources.files("app.data").joinpath("prompts.txt").read_text("utf-8").splitlines()
    assert lines == list(PROMPTS)


def test_sample_is_distinct_and_deterministic_with_a_seed() -> None:
    first = sample_prompts(60, seed=7)
    assert len(first) == len(set(first)) == 60
    assert set(first) <= set(PROMPTS)
    assert sample_prompts(60, seed=7) == first
    assert sample_prompts(60, seed=8) != first
    assert sample_prompts(0, seed=1) == []
    everything = sample_prompts(len(PROMPTS), seed=3)
    assert sorted(everything) == sorted(PROMPTS)


@pytest.mark.parametrize("n", [-1, len(PROMPTS) + 1])
def test_sample_rejects_impossible_sizes(n: int) -> None:
    with pytest.raises(ValueError, match="n must be"):
        sample_prompts(n, seed=0)


def test_heldout_set_is_separate_from_the_corpus() -> None:
    heldout = _heldout()
    assert len(heldout) == len(set(heldout)) == 80
    for sentence in heldout:
        assert sentence.isascii(), sentence
        assert 14 <= len(sentence.split()) <= 30, sentence
    corpus = {normalise_text(p) for p in PROMPTS}
    assert not corpus & {normalise_text(s) for s in heldout}
    # Few shared content words: it measures generalisation beyond the enrolment vocabulary.
    held_vocab = _content_words(heldout)
    shared = held_vocab & _content_words(list(PROMPTS))
    assert len(shared) / len(held_vocab) < 0.10, sorted(shared)
