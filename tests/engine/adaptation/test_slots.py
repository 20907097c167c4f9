"""The resident tier: a fixed pool of bank slots, LRU eviction, pins, memory fixed by capacity."""

import pytest
import torch
from torch import nn

from app.engine.adaptation.lora.bank import LoraBanks
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.lora.layer import LoraLinear
from app.engine.adaptation.slots import BASE_SLOT, AdapterSlots
from app.engine.projections import slot_factors

IN, OUT = 16, 12


def merged_update(layer: LoraLinear, slot: int) -> torch.Tensor | None:
    """The [out, in] update the slot's adapter adds to the layer's weight."""
    factors = slot_factors(layer, slot)
    return None if factors is None else (factors[0] @ factors[1]).T


def layers() -> dict[str, LoraLinear]:
    return {name: LoraLinear(nn.Linear(IN, OUT), IN, OUT) for name in ("a.q_proj", "a.v_proj")}


def pool(layers: dict[str, LoraLinear], capacity: int) -> AdapterSlots[AdapterWeights]:
    return AdapterSlots(LoraBanks(layers), capacity)


def adapter(
    seed: int, rank: int = 2, targets: tuple[str, ...] = ("a.q_proj", "a.v_proj")
) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in targets:
        tensors[f"{name}.lora_A"] = torch.randn(rank, IN, generator=generator)
        tensors[f"{name}.lora_B"] = torch.randn(OUT, rank, generator=generator)
    return AdapterWeights(tensors=tensors, rank=rank, alpha=2.0 * rank, base_fingerprint="f")


def test_an_adapter_lands_in_its_slot_exactly() -> None:
    pool_layers = layers()
    slots = pool(pool_layers, capacity=2)
    weights = adapter(1)
    slot = slots.acquire(weights)
    assert slot is not None
    assert slot != BASE_SLOT
    for name, layer in pool_layers.items():
        a, b = weights.tensors[f"{name}.lora_A"], weights.tensors[f"{name}.lora_B"]
        expected = (b @ a) * weights.scale  # [out, in]
        update = merged_update(layer, slot)
        assert update is not None
        torch.testing.assert_close(update, expected)
        assert slot_factors(layer, BASE_SLOT) is None, "the base row gets no factors at all"
    assert slots.acquire(None) == BASE_SLOT


def test_slot_factors_are_views_of_the_bank_with_a_column_major() -> None:
    pool_layers = layers()
    slots = pool(pool_layers, capacity=2)
    slots.acquire(adapter(1, rank=4))
    slot = slots.acquire(adapter(2, rank=2))
    assert slot is not None
    layer = pool_layers["a.q_proj"]
    factors = slot_factors(layer, slot)
    assert factors is not None
    a, b = factors
    assert layer.bank.a is not None
    assert layer.bank.b is not None
    assert a.shape == (IN, 2)
    assert a.stride() == (1, IN), "one-row products take the BLAS's fast path"
    assert a.untyped_storage().data_ptr() == layer.bank.a.untyped_storage().data_ptr()
    assert b.untyped_storage().data_ptr() == layer.bank.b.untyped_storage().data_ptr()


def test_least_recently_used_unpinned_slot_is_evicted() -> None:
    slots = pool(layers(), capacity=2)
    first, second, third = adapter(1), adapter(2), adapter(3)
    s1 = slots.acquire(first)
    s2 = slots.acquire(second)
    assert s1 is not None
    assert s2 is not None
    slots.release(s1)
    slots.release(s2)
    assert slots.acquire(first) == s1  # a hit makes `first` the most recently used
    slots.release(s1)
    s3 = slots.acquire(third)
    assert s3 == s2, "the least recently used (second) made room"
    stats = slots.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.resident) == (1, 3, 1, 2)


def test_pinned_slots_are_never_evicted() -> None:
    slots = pool(layers(), capacity=1)
    first = adapter(1)
    s1 = slots.acquire(first)
    assert s1 is not None
    assert slots.acquire(adapter(2)) is None, "the only slot is in use: wait"
    slots.release(s1)
    assert slots.acquire(adapter(2)) == s1


def test_memory_is_fixed_by_capacity_and_rank_not_by_adapters_seen() -> None:
    slots = pool(layers(), capacity=3)
    for seed in range(50):
        slot = slots.acquire(adapter(seed))
        assert slot is not None
        slots.release(slot)
    stats = slots.stats()
    assert stats.resident == 3
    assert stats.bank_bytes == 2 * 4 * (3 + 1) * (IN * 2 + 2 * OUT)


def test_a_higher_rank_grows_the_banks_and_keeps_what_they_hold() -> None:
    pool_layers = layers()
    slots = pool(pool_layers, capacity=2)
    low = adapter(1, rank=2)
    s_low = slots.acquire(low)
    assert s_low is not None
    before = merged_update(pool_layers["a.q_proj"], s_low)
    assert before is not None
    high = adapter(2, rank=5)
    s_high = slots.acquire(high)
    assert s_high is not None
    assert slots.stats().bank_rank == 5
    after = merged_update(pool_layers["a.q_proj"], s_low)
    assert after is not None
    assert torch.equal(after, before)
    factors = slot_factors(pool_layers["a.q_proj"], s_low)
    assert factors is not None
    a, b = factors
    assert a.shape == (IN, 2), "a row uses its adapter's own rank"
    assert b.shape == (2, OUT)


def test_an_adapter_that_skips_a_layer_leaves_it_to_the_base_model() -> None:
    pool_layers = layers()
    slots = pool(pool_layers, capacity=2)
    slot = slots.acquire(adapter(1, targets=("a.q_proj",)))
    assert slot is not None
    assert merged_update(pool_layers["a.v_proj"], slot) is None
    assert slot_factors(pool_layers["a.v_proj"], slot) is None


def test_a_reused_slot_keeps_nothing_of_its_previous_adapter() -> None:
    pool_layers = layers()
    slots = pool(pool_layers, capacity=1)
    first = slots.acquire(adapter(1, rank=4))
    assert first is not None
    slots.release(first)
    second = adapter(2, rank=2, targets=("a.q_proj",))
    slot = slots.acquire(second)
    assert slot == first, "the only slot was evicted and reused"
    assert merged_update(pool_layers["a.v_proj"], slot) is None
    q = pool_layers["a.q_proj"]
    expected = (second.tensors["a.q_proj.lora_B"] @ second.tensors["a.q_proj.lora_A"]) * 2.0
    update = merged_update(q, slot)
    assert update is not None
    torch.testing.assert_close(update, expected)
    assert q.bank.a is not None
    assert not q.bank.a[slot, 2:].any(), "the bank's padding beyond the rank is zero again"


def test_forget_frees_an_idle_slot_but_not_a_busy_one() -> None:
    slots = pool(layers(), capacity=2)
    weights = adapter(1)
    slot = slots.acquire(weights)
    assert slot is not None
    slots.forget(weights)
    assert slots.stats().resident == 1, "still pinned by a request in flight"
    slots.release(slot)
    assert slots.stats().resident == 0, "freed when the last request finished"
    slots.forget(adapter(3))  # not resident: nothing to do
    assert slots.stats().resident == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        pool(layers(), capacity=0)
