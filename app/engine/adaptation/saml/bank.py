"""SAML's serving banks: a slot holds one resident adapter's routing (routers and experts on the
device); a request's factors are mixed from it per request (`routing`), not stored per slot."""

import torch

from app.engine.adaptation.saml.routing import SamlRouting
from app.engine.adaptation.saml.weights import SamlWeights

__all__ = ["SamlBanks"]


class SamlBanks:
    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._routings: list[SamlRouting | None] = []
        self._rank = 0

    @property
    def rank(self) -> int:
        """The largest expert rank of any adapter written so far."""
        return self._rank

    @property
    def nbytes(self) -> int:
        return sum(routing.nbytes for routing in self._routings if routing is not None)

    def create(self, slots: int) -> None:
        self._routings = [None] * slots

    def set(self, slot: int, adapter: SamlWeights) -> None:
        self._routings[slot] = SamlRouting(adapter, self._device)
        self._rank = max(self._rank, adapter.rank)

    def reset(self, slot: int) -> None:
        self._routings[slot] = None

    def routing(self, slot: int) -> SamlRouting:
        routing = self._routings[slot]
        if routing is None:
            raise RuntimeError(f"SAML slot {slot} holds no adapter")
        return routing
