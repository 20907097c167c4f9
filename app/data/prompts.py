"""The sentences a speaker reads aloud when enrolling (served by GET /v1/prompts).

The corpus is `prompts.txt` in this package: one sentence a line, read once at import (it is
read-only data, shipped in the wheel as package data).
"""

from __future__ import annotations

import random
from importlib import resources

__all__ = ["PROMPTS", "load_prompts", "sample_prompts"]

_RESOURCE = "prompts.txt"


def _read() -> tuple[str, ...]:
    text = resources.files(__package__ or "app.data").joinpath(_RESOURCE).read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    # Blank lines are tolerated; a repeated sentence is kept once (first occurrence).
    return tuple(dict.fromkeys(line for line in lines if line))


PROMPTS: tuple[str, ...] = _read()


def load_prompts() -> tuple[str, ...]:
    """Every prompt sentence, in file order, without duplicates."""
    return PROMPTS


def sample_prompts(n: int, seed: int | None = None) -> list[str]:
    """`n` distinct sentences in random order; the same `seed` gives the same list.

    Raises `ValueError` when `n` is negative or larger than the corpus.
    """
    if n < 0 or n > len(PROMPTS):
        raise ValueError(f"n must be between 0 and {len(PROMPTS)}, got {n}")
    return random.Random(seed).sample(PROMPTS, n)
