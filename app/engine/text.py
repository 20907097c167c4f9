"""Text normalisation and word error rate, as used to score transcripts everywhere
(enrolment's dev-set gate, tests and benchmarks): lower case, no punctuation, numbers as words,
so "8" and "eight." score as the same word."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["edit_distance", "normalise_text", "number_to_words", "wer", "word_errors"]


_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:st|nd|rd|th)?")
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at "}
_APOSTROPHES = re.compile(r"['’‘`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def number_to_words(n: int) -> str:
    """Cardinal English words without "and": 105 -> "one hundred five"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            words = number_to_words(high) + " " + name
            return words if rest == 0 else words + " " + number_to_words(rest)
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """21 -> "twenty first", 12 -> "twelfth"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _spell_number(match: re.Match[str]) -> str:
    token = match.group(0).replace(",", "")
    if token[-2:] in ("st", "nd", "rd", "th"):
        return f" {ordinal_words(int(token[:-2]))} "
    whole, _, fraction = token.partition(".")
    words = number_to_words(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(digit)] for digit in fraction)
    return f" {words} "


def normalise_text(text: str) -> str:
    """Lower case, numerals spelled out, punctuation dropped, whitespace collapsed.

    "It's 8:30, Dr. Smith!" -> "its eight thirty dr smith". Hyphens split words
    ("twenty-one" -> "twenty one"); apostrophes join them ("don't" -> "dont").
    """
    text = text.lower()
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _NUMBER.sub(_spell_number, text)
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over tokens (substitutions, deletions, insertions all cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, ref_token in enumerate(ref, start=1):
        current = [i]
        for j, hyp_token in enumerate(hyp, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_token != hyp_token),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) after normalising both texts."""
    ref_words = normalise_text(ref).split()
    hyp_words = normalise_text(hyp).split()
    return edit_distance(ref_words, hyp_words), len(ref_words)


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
