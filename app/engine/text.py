"""Word error rate as published Whisper numbers are computed, used everywhere transcripts are
scored (enrolment's gate, tests, benchmarks): both texts pass Whisper's English normaliser
(transformers' `EnglishTextNormalizer` with OpenAI's British-to-American spelling table), then
jiwer counts the word edits. One departure: numbers are scored digit by digit. Whisper's
normaliser joins spoken digits into one number ("three five one" -> "351") but keeps written
ones apart ("3, 5, 1" -> "3 5 1"), so digit strings (FSDD, speechocean762) would score a right
answer as three errors; with each digit a word (and "one", which it leaves a word when it
stands alone, the digit 1) they score what was heard."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

import jiwer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

__all__ = ["normalise_text", "wer", "word_errors"]

_BETWEEN_DIGITS = re.compile(r"(?<=\d)(?=\d)")
_LONE_ONE = re.compile(r"\bone\b")


@cache
def _normaliser() -> EnglishTextNormalizer:
    spelling = resources.files("app.data").joinpath("english_spelling.json").read_text()
    return EnglishTextNormalizer(json.loads(spelling))


def normalise_text(text: str) -> str:
    """Whisper's English normalisation (lower case, no punctuation or fillers, numbers as
    digits, American spelling, contractions expanded), digits apart: "It's 8:30, Dr. Smith!"
    -> "it is 8 3 0 doctor smith"."""
    normalised: str = _normaliser()(text)
    return _BETWEEN_DIGITS.sub(" ", _LONE_ONE.sub("1", normalised))


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) after normalising both texts."""
    ref_text, hyp_text = normalise_text(ref), normalise_text(hyp)
    ref_words = len(ref_text.split())
    if ref_words == 0:  # jiwer refuses empty references: every hypothesis word is an insertion
        return len(hyp_text.split()), 0
    counts = jiwer.process_words(ref_text, hyp_text)
    return counts.substitutions + counts.deletions + counts.insertions, ref_words


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: all edits over all reference words (not a mean of per-item WERs).

    With no reference words at all it is 0.0 when the hypotheses are empty too, else inf.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        item_edits, item_words = word_errors(ref, hyp)
        edits += item_edits
        words += item_words
    if words == 0:
        return 0.0 if edits == 0 else math.inf
    return edits / words
