"""The resident tier of the adapter cache: a bounded pool of bank slots in the model's memory.

Each adapter in use occupies one slot of every `LoraLinear`'s bank (its factors transposed,
zero-padded to the bank's rank, the LoRA scale folded into B). Slot 0 stays all zeros: the base
model. Slots are pinned while a request uses them and otherwise evicted least recently used, so
the pool's memory is fixed by its capacity, whatever the number of users.

Adapters are keyed by object identity, and the pool holds a strong reference to every resident
adapter, so an identity can never be reused by another adapter while its slot is resident.
"""

import logging
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from app.engine.adapter_file import AdapterWeights
from app.engine.lora import LoraLinear

__all__ = ["AdapterSlots", "SlotStats"]

logger = logging.getLogger(__name__)

BASE_SLOT = 0


@dataclass(frozen=True, slots=True)
class SlotStats:
    capacity: int
    resident: int
    hits: int
    misses: int
    evictions: int
    bank_rank: int
    bank_bytes: int


class AdapterSlots:
    def __init__(self, layers: Mapping[str, LoraLinear], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the adapter pool needs at least one slot")
        self._layers = dict(layers)
        self._capacity = capacity
        for layer in self._layers.values():
            layer.bank_ranks = [0] * (capacity + 1)
        self._resident: OrderedDict[int, tuple[int, AdapterWeights]] = OrderedDict()
        self._free = list(range(capacity, 0, -1))
        self._pins: Counter[int] = Counter()
        self._forgotten: set[int] = set()
        """Slots to free as soon as the last request using them finishes."""
        self._rank = 0
        self._hits = self._misses = self._evictions = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def stats(self) -> SlotStats:
        bank_bytes = sum(
            t.numel() * t.element_size()
            for layer in self._layers.values()
            for t in (layer.bank_a, layer.bank_b)
            if t is not None
        )
        return SlotStats(
            capacity=self._capacity,
            resident=len(self._resident),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            bank_rank=self._rank,
            bank_bytes=bank_bytes,
        )

    def acquire(self, adapter: AdapterWeights | None) -> int | None:
        """Pins `adapter`'s slot (loading it first if needed) and returns it; the base model is
        slot 0. None when every slot is pinned by requests in flight: try again later."""
        if adapter is None:
            return BASE_SLOT
        entry = self._resident.get(id(adapter))
        if entry is not None:
            self._resident.move_to_end(id(adapter))
            self._hits += 1
            slot = entry[0]
            self._forgotten.discard(slot)  # wanted again after all
        else:
            free = self._free_slot()
            if free is None:
                return None
            self._misses += 1
            slot = free
            self._write(slot, adapter)
            self._resident[id(adapter)] = (slot, adapter)
        self._pins[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        if slot == BASE_SLOT:
            return
        self._pins[slot] -= 1
        if self._pins[slot] <= 0:
            del self._pins[slot]
            if slot in self._forgotten:
                self._free_resident(slot)

    def forget(self, adapter: AdapterWeights) -> None:
        """Drops `adapter` from the pool (e.g. it was deleted): now if no request uses it, else
        when the last one finishes."""
        entry = self._resident.get(id(adapter))
        if entry is None:
            return
        if self._pins[entry[0]]:
            self._forgotten.add(entry[0])
        else:
            self._free_resident(entry[0])

    def _free_resident(self, slot: int) -> None:
        self._forgotten.discard(slot)
        for key, (resident_slot, _) in list(self._resident.items()):
            if resident_slot == slot:
                del self._resident[key]
                self._free.append(slot)

    def _free_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        for key, (slot, _) in self._resident.items():  # least recently used first
            if not self._pins[slot]:
                del self._resident[key]
                self._evictions += 1
                return slot
        return None

    def _write(self, slot: int, adapter: AdapterWeights) -> None:
        if adapter.rank > self._rank:
            self._grow(adapter.rank)
        scale = adapter.scale
        with torch.no_grad():
            for name, layer in self._layers.items():
                assert layer.bank_a is not None
                assert layer.bank_b is not None
                layer.bank_a[slot].zero_()
                layer.bank_b[slot].zero_()
                layer.bank_ranks[slot] = 0
                a = adapter.tensors.get(f"{name}.lora_A")
                b = adapter.tensors.get(f"{name}.lora_B")
                if a is None or b is None:
                    continue
                rank = a.shape[0]
                layer.bank_ranks[slot] = rank
                layer.bank_a[slot, :rank] = a.to(layer.bank_a)
                layer.bank_b[slot, :rank, :] = (b * scale).T.to(layer.bank_b)

    def _grow(self, rank: int) -> None:
        """(Re)allocates every bank at `rank`, keeping what resident slots hold."""
        logger.info("adapter banks grow", extra={"rank": rank, "slots": self._capacity + 1})
        for layer in self._layers.values():
            device = _device_of(layer)
            a = torch.zeros(self._capacity + 1, rank, layer.in_features, device=device)
            b = torch.zeros(self._capacity + 1, rank, layer.out_features, device=device)
            if layer.bank_a is not None and layer.bank_b is not None:
                a[:, : self._rank] = layer.bank_a
                b[:, : self._rank, :] = layer.bank_b
            layer.bank_a, layer.bank_b = a, b
        self._rank = rank


def _device_of(layer: LoraLinear) -> torch.device:
    for tensor in layer.base.parameters():
        return tensor.device
    return torch.device("cpu")
