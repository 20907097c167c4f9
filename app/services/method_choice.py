"""`method=auto`: which of the adapters an enrolment trained (LoRA, then SAML when an expert bank
exists) the job offers for activation, decided on the activation gate's held-out evidence."""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.adaptation.lora.config import METHOD as LORA

__all__ = ["MethodChoice", "choose_method"]


@dataclass(frozen=True, slots=True)
class MethodChoice:
    winner: str
    """The method whose adapter may be activated (if its own gate says so)."""
    loser_note: str
    """Why the others' adapters are stored but not activated."""
    gates: Mapping[str, Mapping[str, Any]]

    def to_metrics(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "reason": self.loser_note,
            "gates": {method: dict(gate) for method, gate in self.gates.items()},
        }


def choose_method(
    gates: Mapping[str, Mapping[str, Any]], unservable: Collection[str] = ()
) -> MethodChoice:
    """`gates`: each trained method's gate evidence (`GateEvidence.to_metrics()`), in training
    order. The fewest held-out word errors wins (the folds' adapters on the same recordings);
    a tie goes to LoRA, the smaller adapter, then to the one trained first. A method in
    `unservable` (its adapter is quarantined) wins only when every method is."""
    if not gates:
        raise ValueError("no trained method to choose from")
    order = [method for method in gates if method not in unservable] or list(gates)
    if len(gates) == 1:
        return MethodChoice(order[0], f"{order[0]} was the only method trained", gates)
    if len(order) == 1:
        others = ", ".join(method for method in gates if method != order[0])
        return MethodChoice(order[0], f"not activated: {others} cannot be served", gates)

    def rank(method: str) -> tuple[int, bool, int]:
        return int(gates[method]["errors_new"]), method != LORA, order.index(method)

    winner = min(order, key=rank)
    return MethodChoice(winner, _loser_note(winner, order, gates), gates)


def _loser_note(winner: str, order: list[str], gates: Mapping[str, Mapping[str, Any]]) -> str:
    errors = int(gates[winner]["errors_new"])
    others = [method for method in order if method != winner]
    if all(int(gates[method]["errors_new"]) == errors for method in others):
        return (
            f"not activated: {winner} made as many held-out word errors ({errors}) "
            "and is preferred on a tie"
        )
    counts = ", ".join(f"{method} {int(gates[method]['errors_new'])}" for method in others)
    return f"not activated: {winner} made fewer held-out word errors ({winner} {errors}, {counts})"
