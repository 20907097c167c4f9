"""The resident tier of the adapter cache: a bounded pool of bank slots in the model's memory.

Each adapter in use occupies one slot of its method's banks (for LoRA, `lora.bank.LoraBanks`:
one slot of every adapted projection's bank; for SAML, `saml.bank.SamlBanks`: the adapter's
routers and experts ready to mix). Slot 0 is the base model. Slots are pinned while a
request uses them and otherwise evicted least recently used, so the pool's memory is fixed by its
capacity, whatever the number of users.

Adapters are keyed by object identity, and the pool holds a strong reference to every resident
adapter, so an identity can never be reused by another adapter while its slot is resident.
"""

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["BASE_SLOT", "AdapterBanks", "AdapterSlots", "SlotStats"]

BASE_SLOT = 0


W = TypeVar("W")
W_contra = TypeVar("W_contra", contravariant=True)


class AdapterBanks(Protocol[W_contra]):
    """A method's serving banks over every layer it adapts, one slot per resident adapter."""

    @property
    def rank(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def create(self, slots: int) -> None:
        """Room for `slots` adapters, slot 0 (the base model) included, all empty."""

    def set(self, slot: int, adapter: W_contra) -> None:
        """Writes `adapter` into `slot`, replacing whatever the slot held."""

    def reset(self, slot: int) -> None:
        """Empties `slot` (its adapter left the pool)."""


@dataclass(frozen=True, slots=True)
class SlotStats:
    capacity: int
    resident: int
    hits: int
    misses: int
    evictions: int
    bank_rank: int
    bank_bytes: int


class AdapterSlots(Generic[W]):
    def __init__(self, banks: AdapterBanks[W], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the adapter pool needs at least one slot")
        self._banks = banks
        self._capacity = capacity
        banks.create(capacity + 1)
        self._resident: OrderedDict[int, tuple[int, W]] = OrderedDict()
        self._free = list(range(capacity, 0, -1))
        self._pins: Counter[int] = Counter()
        self._forgotten: set[int] = set()
        """Slots to free as soon as the last request using them finishes."""
        self._hits = self._misses = self._evictions = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def stats(self) -> SlotStats:
        return SlotStats(
            capacity=self._capacity,
            resident=len(self._resident),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            bank_rank=self._banks.rank,
            bank_bytes=self._banks.nbytes,
        )

    def acquire(self, adapter: W | None) -> int | None:
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
            self._banks.set(slot, adapter)
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

    def forget(self, adapter: W) -> None:
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
                self._banks.reset(slot)
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
