"""LoRA's serving banks: every adapted projection holds the resident adapters' factors, one slot
each, and a pass reads a request's factors from its slot (vLLM's LoRA layers own their banks the
same way: create, set, reset).

A slot holds its adapter's A [rank, in] and B^T [rank, out] with the LoRA scale folded into B,
zero-padded to the bank's rank; slot 0 stays all zeros: the base model. Which adapter sits in
which slot is `slots.AdapterSlots`' business.
"""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from app.engine.adaptation.lora.file import AdapterWeights

if TYPE_CHECKING:
    from app.engine.adaptation.lora.layer import LoraLinear

__all__ = ["Factors", "LoraBank", "LoraBanks"]

logger = logging.getLogger(__name__)

Factors = tuple[Tensor, Tensor]
"""An adapter's A [in, r] and B [r, out] for one projection (float32, LoRA scale in B), A held
column-major (the transpose of a contiguous [r, in]): a product of one row with it (a decoder
step) takes a BLAS path 2-4x faster than with a row-major A (measured on 2 threads: 2.2 vs
5.9 us for a 384-wide row, 2.8 vs 10 us at 1536), and about as fast at five rows (beams) or
1500 (encoder frames)."""


class LoraBank:
    """One projection's bank."""

    def __init__(self, in_features: int, out_features: int) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.a: Tensor | None = None  # [slots, bank rank, in_features]
        self.b: Tensor | None = None  # [slots, bank rank, out_features]
        self.ranks: list[int] = []
        """The rank of each slot's adapter in this layer (0: none, or it does not adapt it)."""

    def create(self, slots: int) -> None:
        """Room for `slots` adapters (slot 0 included), all empty; tensors come with `grow`."""
        self.ranks = [0] * slots

    def grow(self, rank: int, device: torch.device) -> None:
        """(Re)allocates the bank at `rank`, keeping what its slots hold."""
        slots = len(self.ranks)
        a = torch.zeros(slots, rank, self.in_features, device=device)
        b = torch.zeros(slots, rank, self.out_features, device=device)
        if self.a is not None and self.b is not None:
            a[:, : self.a.shape[1]] = self.a
            b[:, : self.b.shape[1], :] = self.b
        self.a, self.b = a, b

    def reset(self, slot: int) -> None:
        assert self.a is not None
        assert self.b is not None
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.ranks[slot] = 0

    def set(self, slot: int, a: Tensor, b: Tensor, scale: float) -> None:
        """`a` [rank, in] and `b` [out, rank], as an adapter file holds them."""
        assert self.a is not None
        assert self.b is not None
        self.reset(slot)
        rank = a.shape[0]
        self.ranks[slot] = rank
        self.a[slot, :rank] = a.to(self.a)
        self.b[slot, :rank, :] = (b * scale).T.to(self.b)

    def factors(self, slot: int) -> Factors | None:
        """The factors of the adapter in `slot`, at the adapter's own rank (None for the base
        model, or an adapter that leaves this layer alone)."""
        if self.a is None or self.b is None:
            return None
        rank = self.ranks[slot]
        if rank == 0:
            return None
        # The adapter's own rank, not the bank's zero padding: a product over more terms would
        # round differently, and a row's bits would change as the bank grows. Both are views.
        return self.a[slot, :rank].T, self.b[slot, :rank]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.a, self.b) if t is not None)


class LoraBanks:
    """The banks of every adaptable projection of a model, written one adapter at a time: what
    `slots.AdapterSlots` fills."""

    def __init__(self, layers: Mapping[str, "LoraLinear"]) -> None:
        self._layers = dict(layers)
        self._slots = 0
        self._rank = 0

    @property
    def rank(self) -> int:
        """The banks' rank: the largest of any adapter written so far."""
        return self._rank

    @property
    def nbytes(self) -> int:
        return sum(layer.bank.nbytes for layer in self._layers.values())

    def create(self, slots: int) -> None:
        self._slots = slots
        for layer in self._layers.values():
            layer.bank.create(slots)

    def reset(self, slot: int) -> None:
        if self._rank == 0:
            return  # nothing allocated yet
        with torch.no_grad():
            for layer in self._layers.values():
                layer.bank.reset(slot)

    def set(self, slot: int, adapter: AdapterWeights) -> None:
        if adapter.rank > self._rank:
            self._grow(adapter.rank)
        scale = adapter.scale
        with torch.no_grad():
            for name, layer in self._layers.items():
                a = adapter.tensors.get(f"{name}.lora_A")
                b = adapter.tensors.get(f"{name}.lora_B")
                if a is None or b is None:
                    layer.bank.reset(slot)
                else:
                    layer.bank.set(slot, a, b, scale)

    def _grow(self, rank: int) -> None:
        logger.info("adapter banks grow", extra={"rank": rank, "slots": self._slots})
        for layer in self._layers.values():
            layer.bank.grow(rank, _device_of(layer))
        self._rank = rank


def _device_of(layer: "LoraLinear") -> torch.device:
    for tensor in layer.base.parameters():
        return tensor.device
    return torch.device("cpu")
