"""bench.methods: LoRA, SAML and auto side by side, pooled against the NF4 base."""

from typing import Any

import pytest

from bench.enrolment import add_pooled
from bench.methods import auto_choice, parse_methods, pooled_methods, served_model


def _scored(errors: list[int]) -> dict[str, Any]:
    return {"utterances": [{"errors": e, "words": 5} for e in errors]}


def _training(activate: bool, held_out_errors: int) -> dict[str, Any]:
    return {"metrics": {"gate": {"activate": activate, "errors_new": held_out_errors}}}


def entry(
    name: str,
    nf4: list[int],
    lora: tuple[list[int], bool, int],
    saml: tuple[list[int], bool, int],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "speaker": name,
        "suite": "fsdd",
        "splits": {
            "test": {"nf4": _scored(nf4), "pqm": _scored(lora[0]), "saml": _scored(saml[0])}
        },
        "adapter": {"bounds": {"refused": None}},
        "training": _training(lora[1], lora[2]),
        "saml": {"adapter": {"bounds": {"refused": None}}, "training": _training(saml[1], saml[2])},
    }
    result["auto"] = auto_choice(result)
    return result


def test_auto_serves_the_method_with_fewer_held_out_errors_where_its_gate_activates() -> None:
    saml_wins = entry("a", [2, 2], ([1, 1], True, 9), ([0, 0], True, 4))
    tie = entry("b", [2, 2], ([1, 1], True, 4), ([0, 0], True, 4))
    winner_refused = entry("c", [2, 2], ([1, 1], True, 9), ([3, 3], False, 4))

    assert (saml_wins["auto"]["winner"], served_model(saml_wins, "auto")) == ("saml", "saml")
    assert (tie["auto"]["winner"], served_model(tie, "auto")) == ("lora", "pqm")
    assert served_model(winner_refused, "auto") == "nf4"
    assert served_model(winner_refused, "lora") == "pqm"


def test_an_adapter_out_of_bounds_is_never_served_by_auto() -> None:
    result = entry("a", [2, 2], ([1, 1], True, 9), ([0, 0], True, 4))
    result["saml"]["adapter"]["bounds"]["refused"] = "update too large"

    assert auto_choice(result) == {
        "winner": "saml",
        "activated": False,
        "reason": result["auto"]["reason"],
    }


def test_pooled_methods_compare_each_method_and_the_difference_against_the_base() -> None:
    entries = [
        entry("helped-by-saml", [2, 2, 2], ([2, 1, 2], True, 5), ([0, 0, 1], True, 2)),
        entry("hurt-by-lora", [0, 0, 0], ([2, 1, 1], True, 1), ([0, 0, 0], False, 3)),
    ]
    stats = pooled_methods(entries, "test", ("lora", "saml", "auto"))

    assert (stats["utterances"], stats["words"], stats["speakers"]) == (6, 30, 2)
    assert stats["wer"]["nf4"] == pytest.approx(6 / 30, abs=1e-4)
    assert stats["vs_nf4"]["lora trained"]["relative_reduction"] == pytest.approx(-3 / 6, abs=1e-4)
    assert stats["vs_nf4"]["saml trained"]["relative_reduction"] == pytest.approx(5 / 6, abs=1e-4)
    # auto: saml for the first speaker; lora (fewer held-out errors) for the second, served
    assert stats["vs_nf4"]["auto served"]["relative_reduction"] == pytest.approx(1 / 6, abs=1e-4)
    assert stats["saml_minus_lora_points"]["trained"]["points"] == pytest.approx(133.33)
    low, high = stats["saml_minus_lora_points"]["trained"]["ci95"]
    assert low <= 133.33 <= high
    worse = stats["served_worse_than_nf4"]
    assert worse["lora"] == [{"speaker": "hurt-by-lora", "extra_words": 4}]
    assert worse["saml"] == []
    assert worse["auto"] == [{"speaker": "hurt-by-lora", "extra_words": 4}]


def test_reports_pool_methods_only_when_they_compared_them() -> None:
    speakers = [entry("a", [2, 2], ([1, 1], True, 9), ([0, 0], True, 4))]
    lora_only: dict[str, Any] = {"suites": {"fsdd": {}}, "speakers": speakers, "options": {}}
    compared = {
        **lora_only,
        "suites": {"fsdd": {}},
        "options": {"methods": ["lora", "saml", "auto"]},
    }

    add_pooled(lora_only)
    add_pooled(compared)

    assert "pooled_methods" not in lora_only["suites"]["fsdd"]
    assert compared["suites"]["fsdd"]["pooled_methods"]["test"]["speakers"] == 1


def test_methods_parse_in_canonical_order_and_auto_trains_both() -> None:
    assert parse_methods("auto") == ("lora", "saml", "auto")
    assert parse_methods("saml, lora") == ("lora", "saml")
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("lora,adapterx")
