"""bench.enrolment's pooled statistics: what is served after the gate, against the NF4 base."""

from typing import Any

import pytest

from bench.enrolment import gate, pooled


def entry(name: str, activate: bool, nf4: list[int], pqm: list[int]) -> dict[str, Any]:
    def scored(errors: list[int]) -> dict[str, Any]:
        return {"utterances": [{"errors": e, "words": 5} for e in errors]}

    return {
        "speaker": name,
        "suite": "s",
        "splits": {"test": {"nf4": scored(nf4), "pqm": scored(pqm)}},
        "training": {"metrics": {"gate": {"activate": activate}}},
    }


def test_served_is_the_adapter_only_where_the_gate_activated_it() -> None:
    entries = [
        entry("helped", True, [2, 2, 2], [1, 1, 0]),
        entry("refused-but-better", False, [1, 1, 1], [0, 0, 1]),
        entry("hurt", True, [0, 1, 0], [1, 2, 1]),
    ]
    stats = pooled(entries, "test")

    assert (stats["utterances"], stats["words"]) == (9, 45)
    assert stats["wer"] == {"nf4": round(10 / 45, 4), "pqm": round(7 / 45, 4), "served": 0.2}
    assert stats["served_vs_nf4"]["relative_reduction"] == pytest.approx(0.1)
    assert stats["pqm_vs_nf4"]["relative_reduction"] == pytest.approx(0.3)
    low, high = stats["served_vs_nf4"]["ci95"]
    assert low < 0.1 < high
    assert stats["worst_served_extra_words"] == {"words": 3, "speaker": "hurt"}
    assert stats["gate_confusion"] == {
        "activated_helps": 1,
        "activated_hurts": 1,
        "refused_helps": 1,
        "refused_not": 0,
    }


def test_reports_from_before_the_k_fold_gate_still_read() -> None:
    old = {"training": {"metrics": {"wer_before": 0.3, "wer_after": 0.2}}}
    assert gate(old) is True
    assert gate({"training": None}) is None
