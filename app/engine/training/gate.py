"""The activation gate: whether a newly trained adapter should replace what a speaker is served,
decided on evidence that survives small uploads.

Every utterance of the upload is scored held out once (k-fold cross-validation: an adapter
trained on the other folds transcribes it) and by what the speaker is served today (their active
adapter, or the base model). The gate counts word errors, not per-utterance rates, and asks for
a paired-bootstrap lower confidence bound on the errors saved that is above zero, plus a minimum
number of words saved: "any improvement" on two dev utterances let chance decide.

Method-agnostic: it sees only per-utterance word counts and errors.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GateConfig", "GateEvidence", "HeldOutScore", "decide", "fold_assignment"]


@dataclass(frozen=True, slots=True)
class GateConfig:
    folds: int = 4
    """k of the k-fold cross-validation (at most the number of utterances)."""
    confidence: float = 0.7
    """One-sided level of the bootstrap bound on the errors saved."""
    min_words_saved: int = 2
    """Held-out word errors the new adapter must save at least (a margin against ties)."""
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError("the gate needs at least 2 folds")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError("confidence must be in [0.5, 1)")
        if self.min_words_saved < 0 or self.resamples < 100:
            raise ValueError("min_words_saved must be >= 0 and resamples >= 100")


@dataclass(frozen=True, slots=True)
class HeldOutScore:
    """One utterance, scored by an adapter that never trained on it and by what is served now."""

    words: int
    errors_served: int
    errors_new: int


@dataclass(frozen=True, slots=True)
class GateEvidence:
    folds: int
    utterances: int
    words: int
    errors_served: int
    errors_new: int
    saved_low: float
    """Lower bound (at `confidence`) of the word errors the new adapter saves, from resampling
    utterances with replacement (paired: both scores of an utterance move together)."""
    confidence: float
    activate: bool
    served: str
    """What the new adapter was compared with: "the base model" or "the active adapter <id>"."""
    scores: tuple[HeldOutScore, ...] = ()

    @property
    def reason(self) -> str:
        """The decision in words a person reads."""
        before = f"{self.errors_served} word errors in {self.words} words"
        after = f"{self.errors_new}"
        saved = self.errors_served - self.errors_new
        evidence = (
            f"on {self.utterances} recordings, each transcribed by an adapter trained without it "
            f"({self.folds}-fold), {self.served} made {before} and the new adapter {after}"
        )
        bound = f"{self.confidence:.0%} sure it saves at least {self.saved_low:g} word errors"
        if self.activate:
            return f"activated: {evidence}; {bound}"
        if saved <= 0:
            return f"not activated: {evidence}, no fewer"
        return f"not activated: {evidence}; too few recordings to be sure ({bound})"

    def to_metrics(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "utterances": self.utterances,
            "words": self.words,
            "errors_served": self.errors_served,
            "errors_new": self.errors_new,
            "wer_served": _rate(self.errors_served, self.words),
            "wer_new": _rate(self.errors_new, self.words),
            "saved_low": round(self.saved_low, 2),
            "confidence": self.confidence,
            "activate": self.activate,
            "reason": self.reason,
            "recordings": [[s.words, s.errors_served, s.errors_new] for s in self.scores],
        }


def fold_assignment(count: int, folds: int, seed: int) -> list[int]:
    """The fold of each of `count` utterances: shuffled by `seed`, sizes differing by at most
    one, never an empty fold."""
    if not 2 <= folds <= count:
        raise ValueError(f"cannot make {folds} folds of {count} utterances")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    assignment = [0] * count
    for position, index in enumerate(order):
        assignment[index] = position % folds
    return assignment


def decide(
    scores: Sequence[HeldOutScore], config: GateConfig, *, folds: int, served: str
) -> GateEvidence:
    if not scores:
        raise ValueError("the gate needs held-out scores")
    errors_served = sum(score.errors_served for score in scores)
    errors_new = sum(score.errors_new for score in scores)
    saved_low = _saved_lower_bound(scores, config)
    activate = errors_served - errors_new >= config.min_words_saved and saved_low > 0
    return GateEvidence(
        folds=folds,
        utterances=len(scores),
        words=sum(score.words for score in scores),
        errors_served=errors_served,
        errors_new=errors_new,
        saved_low=saved_low,
        confidence=config.confidence,
        activate=activate,
        served=served,
        scores=tuple(scores),
    )


def _saved_lower_bound(scores: Sequence[HeldOutScore], config: GateConfig) -> float:
    """The (1 - confidence) quantile of the errors saved over bootstrap resamples."""
    saved = [score.errors_served - score.errors_new for score in scores]
    rng = random.Random(config.seed)
    count = len(saved)
    totals = sorted(sum(rng.choices(saved, k=count)) for _ in range(config.resamples))
    return float(totals[int((1.0 - config.confidence) * config.resamples)])


def _rate(errors: int, words: int) -> float | None:
    return round(errors / words, 4) if words else None
