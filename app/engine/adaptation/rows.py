"""What the serving passes see of a batch row's adapter.

* `BankSlot`: a slot of every projection's LoRA bank (slot 0: the base model);
* `Routed`: a SAML adapter, whose factors the passes obtain layer by layer from the request's
  own activations (`saml.routing`).
"""

from dataclasses import dataclass

from app.engine.adaptation.saml.routing import SamlRouting

__all__ = ["BASE_ROW", "BankSlot", "Routed", "RowAdapter", "is_base"]


@dataclass(frozen=True, slots=True)
class BankSlot:
    slot: int


@dataclass(frozen=True, slots=True)
class Routed:
    slot: int
    """Its slot in the SAML pool (what the request pins)."""
    routing: SamlRouting


RowAdapter = BankSlot | Routed
BASE_ROW = BankSlot(0)


def is_base(row: RowAdapter) -> bool:
    return isinstance(row, BankSlot) and row.slot == 0
