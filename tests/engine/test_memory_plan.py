"""The memory plan's arithmetic against real allocations on tiny.en, and the pool's sizing."""

from pathlib import Path
from typing import Any

import pytest
import torch

from app.config import Settings
from app.engine.adaptation.lora.bank import LoraBanks
from app.engine.adaptation.lora.layer import inject_lora
from app.engine.adaptation.registry import adaptable_projections
from app.engine.adaptation.saml.config import RouterKind
from app.engine.adaptation.saml.routing import SamlRouting
from app.engine.device_slots import resident_slots_for
from app.engine.loading import load_model, weight_bytes
from app.engine.memory_plan import (
    FLOAT32,
    SlotCosts,
    SlotSizing,
    WhisperShape,
    compute_copy_bytes,
    lora_slot_bytes,
    nf4_weight_bytes,
    saml_slot_bytes,
    size_resident_slots,
)
from app.engine.whisper import WhisperEngine
from app.services.model_loading import MAX_BEAM_ROWS, resident_slots
from bench.memory_report import SHAPES
from tests.support.adapters import random_adapter, random_saml
from tests.support.whisper_family import FAMILIES


def _shape(engine: WhisperEngine) -> WhisperShape:
    model: Any = engine.model
    return WhisperShape.from_config("tiny.en", model.config.to_dict())


def test_nf4_weights_match_the_loaded_model(nf4_engine: WhisperEngine) -> None:
    planned = nf4_weight_bytes(_shape(nf4_engine))

    assert planned == weight_bytes(nf4_engine.model)
    assert planned == nf4_engine.info.weight_bytes


def test_compute_copies_match_the_dequantised_weights(nf4_engine: WhisperEngine) -> None:
    model: Any = nf4_engine.model
    head = model.proj_out
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # NF4 ones too
    projections = [m for m in linears if m is not head]
    encoder = model.model.encoder
    numel = sum(m.in_features * m.out_features for m in projections)
    numel += encoder.conv1.weight.numel() + encoder.conv2.weight.numel()

    assert compute_copy_bytes(_shape(nf4_engine), FLOAT32) == numel * FLOAT32
    assert compute_copy_bytes(_shape(nf4_engine), 2) == (numel + head.weight.numel()) * 2


def test_lora_slots_match_a_real_bank(tiny_en_dir: Path, nf4_engine: WhisperEngine) -> None:
    # A model of its own: the banks live in the layers, and the session's engine keeps its own.
    model = load_model(tiny_en_dir, precision="fp32", device="cpu").model
    banks = LoraBanks(inject_lora(model, adaptable_projections()))
    banks.create(3)
    banks.set(1, random_adapter(nf4_engine, seed=0, rank=8))

    assert banks.nbytes == 3 * lora_slot_bytes(_shape(nf4_engine), rank=8)


@pytest.mark.parametrize("router", ["depthwise", "conv"])
def test_saml_slots_match_a_real_routing(nf4_engine: WhisperEngine, router: RouterKind) -> None:
    adapter = random_saml(nf4_engine, seed=0, experts=10, router=router)
    routing = SamlRouting(adapter, torch.device("cpu"))

    planned = saml_slot_bytes(_shape(nf4_engine), 10, 1, depthwise=router == "depthwise")
    assert routing.nbytes == planned


def test_report_dimensions_agree_with_the_bundled_and_family_configs(
    nf4_engine: WhisperEngine,
) -> None:
    shapes = {shape.name: shape for shape in SHAPES}
    tiny_en = _shape(nf4_engine)
    tiny = shapes["tiny"]
    assert (tiny.d_model, tiny.heads, tiny.ffn, tiny.n_mels) == (
        tiny_en.d_model,
        tiny_en.heads,
        tiny_en.ffn,
        tiny_en.n_mels,
    )
    assert (tiny.encoder_layers, tiny.decoder_layers) == (4, 4)
    assert tiny.vocab == tiny_en.vocab + 1  # English-only drops one language token
    for family in FAMILIES:
        shape = shapes.get(family.name)
        if shape is None:
            continue
        assert (shape.encoder_layers, shape.decoder_layers) == family.layers
        assert (shape.n_mels, shape.vocab, shape.heads) == (
            family.n_mels,
            family.vocab_size,
            family.decoder_heads,
        )


COSTS = SlotCosts(per_slot=100, per_row=10, working=50)


def test_slots_fill_what_is_left_after_headroom_working_copies_and_kv() -> None:
    sizing = SlotSizing(rows=4, minimum=2, headroom=0.1)
    # 2000 free: 1800 after headroom, 1750 after the copies, 1710 after 4 rows of KV: 17 slots
    # of 100, one of them the base model's.
    assert size_resident_slots(2000, COSTS, sizing) == 16


def test_slots_never_go_below_a_full_batch_nor_above_the_cap() -> None:
    assert size_resident_slots(100, COSTS, SlotSizing(rows=4, minimum=8)) == 8
    assert size_resident_slots(10**12, COSTS, SlotSizing(rows=4, minimum=8, maximum=64)) == 64


def test_large_v3_on_an_h100_leaves_room_for_a_full_batch() -> None:
    large = next(shape for shape in SHAPES if shape.name == "large-v3")
    costs = SlotCosts.of(
        large, compute_bytes=2, kv_bytes=FLOAT32, lora_rank=8, saml_experts=10, saml_rank=1
    )
    sizing = SlotSizing(rows=64, minimum=8)
    free = 78 * 1024**3
    slots = size_resident_slots(free, costs, sizing)

    used = costs.working + sizing.rows * costs.per_row + (slots + 1) * costs.per_slot
    assert used <= free * (1 - sizing.headroom) < used + costs.per_slot
    assert sizing.minimum < slots < sizing.maximum


def test_the_cpu_keeps_a_fixed_pool(nf4_engine: WhisperEngine) -> None:
    loaded = nf4_engine.loaded
    assert resident_slots_for(loaded, torch.float32, SlotSizing(rows=64, minimum=8)) == 16
    assert resident_slots_for(loaded, torch.float32, SlotSizing(rows=64, minimum=24)) == 24


def test_settings_size_the_pool_unless_they_set_it(tmp_path: Path) -> None:
    open_pool = Settings(data_dir=tmp_path, queue={"max_batch_size": 4})
    assert resident_slots(open_pool) == SlotSizing(rows=4 * 8, minimum=4)
    long_batches = Settings(
        data_dir=tmp_path, queue={"max_batch_size": 4}, longform={"batch_windows": 12}
    )
    assert resident_slots(long_batches) == SlotSizing(rows=4 * 12, minimum=4)

    fixed = Settings(data_dir=tmp_path, adapters={"resident_slots": 12})
    assert resident_slots(fixed) == 12


def test_beam_rows_are_the_apis_widest_beam() -> None:
    from app.api.audio import MAX_BEAM_SIZE

    assert MAX_BEAM_ROWS == MAX_BEAM_SIZE
