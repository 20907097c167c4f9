"""`method=auto`'s decision on the gates' held-out evidence: fewer word errors win, a tie goes to
LoRA (the smaller adapter)."""

import pytest

from app.services.method_choice import choose_method


def _gate(errors_new: int, activate: bool = True) -> dict[str, object]:
    return {"errors_new": errors_new, "activate": activate, "reason": "its own reason"}


@pytest.mark.parametrize(
    ("lora", "saml", "winner"),
    [(9, 7, "saml"), (7, 9, "lora"), (8, 8, "lora")],
    ids=["saml-fewer-errors", "lora-fewer-errors", "tie"],
)
def test_the_fewest_held_out_errors_win_and_a_tie_goes_to_lora(
    lora: int, saml: int, winner: str
) -> None:
    choice = choose_method({"lora": _gate(lora), "saml": _gate(saml)})
    assert choice.winner == winner
    assert choice.loser_note.startswith("not activated: ")
    assert f"{winner} made" in choice.loser_note


def test_a_tie_goes_to_lora_whichever_was_trained_first() -> None:
    assert choose_method({"saml": _gate(4), "lora": _gate(4)}).winner == "lora"


def test_the_winner_is_chosen_whatever_its_gate_says() -> None:
    """The gate decides activation afterwards: a loser never stands in for a refused winner."""
    choice = choose_method({"lora": _gate(9), "saml": _gate(7, activate=False)})
    assert choice.winner == "saml"


def test_the_notes_say_why_the_loser_waits() -> None:
    fewer = choose_method({"lora": _gate(9), "saml": _gate(7)})
    assert fewer.loser_note == (
        "not activated: saml made fewer held-out word errors (saml 7, lora 9)"
    )
    tie = choose_method({"lora": _gate(8), "saml": _gate(8)})
    assert "as many held-out word errors (8)" in tie.loser_note


def test_one_method_trained_is_the_winner() -> None:
    choice = choose_method({"lora": {"activate": True, "reason": "r"}})
    assert choice.winner == "lora"
    assert choice.to_metrics()["gates"] == {"lora": {"activate": True, "reason": "r"}}


def test_the_metrics_hold_the_winner_and_every_gate() -> None:
    gates = {"lora": _gate(9), "saml": _gate(7)}
    metrics = choose_method(gates).to_metrics()
    assert (metrics["winner"], metrics["gates"]) == ("saml", gates)
    assert metrics["reason"].startswith("not activated: saml")


def test_a_quarantined_adapter_loses_to_one_that_can_be_served() -> None:
    choice = choose_method({"lora": _gate(7), "saml": _gate(9)}, unservable=["lora"])
    assert (choice.winner, choice.loser_note) == ("saml", "not activated: lora cannot be served")


def test_when_every_adapter_is_quarantined_the_evidence_decides() -> None:
    gates = {"lora": _gate(7), "saml": _gate(9)}
    assert choose_method(gates, unservable=["lora", "saml"]).winner == "lora"
