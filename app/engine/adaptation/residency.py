"""Which adapters are resident in the serving model's memory, for every method: LoRA adapters
in slots of the projections' banks, SAML adapters as routings ready to mix. What a request
pins while it runs and gives back when it ends (`rows.RowAdapter`)."""

from collections.abc import Mapping

import torch

from app.engine.adaptation.lora.bank import LoraBanks
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.lora.layer import LoraLinear
from app.engine.adaptation.rows import BASE_ROW, BankSlot, Routed, RowAdapter
from app.engine.adaptation.saml.bank import SamlBanks
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.adaptation.slots import AdapterSlots, SlotStats

__all__ = ["AnyAdapter", "ResidentAdapters"]

AnyAdapter = AdapterWeights | SamlWeights
"""An adapter as the engine serves it, of any method."""


class ResidentAdapters:
    def __init__(
        self, lora_layers: Mapping[str, LoraLinear], device: torch.device, capacity: int
    ) -> None:
        self._lora = AdapterSlots(LoraBanks(lora_layers), capacity)
        self._saml_banks = SamlBanks(device)
        self._saml = AdapterSlots(self._saml_banks, capacity)

    def stats(self) -> SlotStats:
        """The LoRA pool's."""
        return self._lora.stats()

    def saml_stats(self) -> SlotStats:
        return self._saml.stats()

    def acquire(self, adapter: AnyAdapter | None) -> RowAdapter | None:
        """Pins `adapter` (loading it first if needed) for one request. None when every slot
        of its method is pinned by requests in flight: try again later."""
        if adapter is None:
            return BASE_ROW
        if isinstance(adapter, AdapterWeights):
            slot = self._lora.acquire(adapter)
            return None if slot is None else BankSlot(slot)
        slot = self._saml.acquire(adapter)
        return None if slot is None else Routed(slot, self._saml_banks.routing(slot))

    def release(self, row: RowAdapter) -> None:
        if isinstance(row, BankSlot):
            self._lora.release(row.slot)
        else:
            self._saml.release(row.slot)

    def forget(self, adapter: AnyAdapter) -> None:
        """Drops `adapter` (now, or when the last request using it finishes)."""
        if isinstance(adapter, AdapterWeights):
            self._lora.forget(adapter)
        else:
            self._saml.forget(adapter)
