"""The activation gate decides on held-out word errors with a bootstrap bound, not on chance."""

import pytest

from app.engine.training.gate import GateConfig, HeldOutScore, decide, fold_assignment

GATE = GateConfig()


def scores(*pairs: tuple[int, int], words: int = 8) -> list[HeldOutScore]:
    return [HeldOutScore(words, served, new) for served, new in pairs]


def test_a_consistent_gain_is_activated_and_said_in_words() -> None:
    evidence = decide(scores(*[(2, 1)] * 6, *[(1, 1)] * 14), GATE, folds=5, served="the base model")

    assert evidence.activate
    assert (evidence.errors_served, evidence.errors_new, evidence.words) == (26, 20, 160)
    assert evidence.saved_low > 0
    assert evidence.reason.startswith("activated: on 20 recordings")
    assert "the base model made 26 word errors in 160 words and the new adapter 20" in (
        evidence.reason
    )
    metrics = evidence.to_metrics()
    assert metrics["wer_served"] == pytest.approx(26 / 160, abs=1e-4)
    assert metrics["activate"] is True
    assert metrics["recordings"][:2] == [[8, 2, 1], [8, 2, 1]]
    assert len(metrics["recordings"]) == 20


def test_a_gain_carried_by_one_lucky_recording_is_not_enough() -> None:
    """Two words saved on one recording, one lost on each of two others: a net gain of zero
    or less is refused, and a fragile net gain is refused for want of evidence."""
    mixed = scores((3, 0), (1, 2), (1, 2), *[(1, 1)] * 17)
    assert not decide(mixed, GATE, folds=5, served="the base model").activate

    lucky = scores((4, 0), (1, 2), (1, 2), *[(1, 1)] * 17)
    evidence = decide(lucky, GATE, folds=5, served="the base model")
    assert not evidence.activate
    assert "too few recordings to be sure" in evidence.reason


def test_an_adapter_that_is_worse_is_refused() -> None:
    evidence = decide(scores(*[(0, 1)] * 5, *[(1, 1)] * 10), GATE, folds=5, served="x")
    assert not evidence.activate
    assert evidence.reason.endswith("no fewer")


def test_the_margin_is_required() -> None:
    sure_gain = scores(*[(1, 0)] * 10)
    assert decide(sure_gain, GATE, folds=5, served="x").activate
    strict = GateConfig(min_words_saved=11)
    assert not decide(sure_gain, strict, folds=5, served="x").activate


def test_the_decision_is_deterministic() -> None:
    data = scores((3, 1), (0, 1), (2, 1), (1, 1), (2, 0))
    assert decide(data, GATE, folds=5, served="x") == decide(data, GATE, folds=5, served="x")


def test_folds_cover_every_utterance_once_with_balanced_sizes() -> None:
    assignment = fold_assignment(22, 5, seed=3)
    sizes = sorted(assignment.count(fold) for fold in range(5))
    assert sizes == [4, 4, 4, 5, 5]
    assert assignment == fold_assignment(22, 5, seed=3)
    assert assignment != fold_assignment(22, 5, seed=4)


@pytest.mark.parametrize(("count", "folds"), [(3, 4), (5, 1)])
def test_impossible_folds_are_refused(count: int, folds: int) -> None:
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(count, folds, seed=0)
