"""The memory plan against real CUDA allocations, and the adapter pool sized from the device's
free memory. The lent GPU machine has no bundled model, so the weights are random (tiny.en's
shape and tokenizer: `bench.gpu_bench`); `PQM_GPU_MODEL_FILES` names tiny.en's files there."""

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.adaptation.lora.bank import LoraBanks
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.lora.layer import inject_lora
from app.engine.adaptation.registry import adaptable_projections
from app.engine.adaptation.rows import BASE_ROW
from app.engine.backend import backend_for
from app.engine.decoder_pass import DecodeBatch, OutputHead
from app.engine.dense import compute_dtype
from app.engine.device_slots import KV_BYTES, resident_slots_for, slot_costs
from app.engine.loading import load_model, weight_bytes
from app.engine.memory_plan import (
    SlotSizing,
    WhisperShape,
    kv_cross_bytes,
    kv_token_bytes,
    lora_slot_bytes,
    nf4_weight_bytes,
    size_resident_slots,
)
from bench.gpu_bench import model_files, random_checkpoint, served_shape
from bench.memory_report import SHAPES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TOLERANCE = 0.02
"""The caching allocator rounds every tensor up (to 512 bytes) and bitsandbytes keeps a small
code table per layer."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WhisperShape]:
    scratch = tmp_path_factory.mktemp("gpu-model")
    given = os.environ.get("PQM_GPU_MODEL_FILES")
    files = Path(given) if given else model_files(scratch / "files")
    shape = served_shape(next(s for s in SHAPES if s.name == "tiny"), files)
    return random_checkpoint(files, shape, scratch / "model"), shape


def _allocated() -> int:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def test_nf4_weights_on_the_device_match_the_plan(checkpoint: tuple[Path, WhisperShape]) -> None:
    model_dir, shape = checkpoint
    before = _allocated()
    loaded = load_model(model_dir, precision="nf4", device="cuda")
    held = _allocated() - before

    assert weight_bytes(loaded.model) == nf4_weight_bytes(shape)
    assert held == pytest.approx(nf4_weight_bytes(shape), rel=TOLERANCE)


def test_a_lora_bank_on_the_device_matches_the_plan(checkpoint: tuple[Path, WhisperShape]) -> None:
    model_dir, shape = checkpoint
    model: Any = load_model(model_dir, precision="nf4", device="cuda").model
    layers = inject_lora(model, adaptable_projections())
    banks = LoraBanks(layers)
    banks.create(9)
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = torch.randn(8, layer.in_features)
        tensors[f"{name}.lora_B"] = torch.randn(layer.out_features, 8) * 1e-4
    before = _allocated()
    banks.set(1, AdapterWeights(tensors, rank=8, alpha=16.0, base_fingerprint="random"))
    held = _allocated() - before

    assert banks.nbytes == 9 * lora_slot_bytes(shape, rank=8)
    assert held == pytest.approx(banks.nbytes, rel=TOLERANCE)


def test_the_pool_is_sized_from_free_device_memory(checkpoint: tuple[Path, WhisperShape]) -> None:
    model_dir, shape = checkpoint
    loaded = load_model(model_dir, precision="nf4", device="cuda")
    dtype = compute_dtype("nf4", backend_for(loaded.device).fast_bf16(), "auto")
    sizing = SlotSizing(rows=64, minimum=8)

    free, _ = torch.cuda.mem_get_info()
    slots = resident_slots_for(loaded, dtype, sizing)

    assert slots == size_resident_slots(free, slot_costs(shape, dtype), sizing)
    assert sizing.minimum <= slots <= sizing.maximum


def test_a_decoder_rows_kv_on_the_device_matches_the_plan(
    checkpoint: tuple[Path, WhisperShape],
) -> None:
    model_dir, shape = checkpoint
    model: Any = load_model(model_dir, precision="nf4", device="cuda").model
    backend = backend_for(torch.device("cuda"))
    dtype = compute_dtype("nf4", backend.fast_bf16(), "auto")
    batch = DecodeBatch(model, OutputHead(model, dtype, backend), dtype, backend)
    encoded = torch.randn(shape.source_positions, shape.d_model, device="cuda")
    prefix, capacity = [50257, 50362], 100
    batch.add(encoded, prefix, BASE_ROW, capacity, [1])  # builds the compute weights once

    before = _allocated()
    logits = batch.add(encoded, prefix, BASE_ROW, capacity, [1])
    del logits
    held = _allocated() - before

    planned = kv_token_bytes(shape, KV_BYTES) * (len(prefix) + capacity)
    planned += kv_cross_bytes(shape, KV_BYTES)
    assert held == pytest.approx(planned, rel=TOLERANCE)
