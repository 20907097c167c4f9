"""The seam between the engine and its device: each device gets its own way, from one place."""

import pytest
import torch
from torch.nn import functional

from app.engine.backend import CpuBackend, CudaBackend, OneDnnWeight, backend_for
from app.engine.dense import INVARIANT_ROWS
from app.engine.row_adapters import Gathered, PerRequest


def test_the_cpu_packs_for_onednn_and_adds_adapters_per_request() -> None:
    backend = backend_for(torch.device("cpu"))
    assert isinstance(backend, CpuBackend)
    assert isinstance(backend.row_adapters(), PerRequest)
    assert isinstance(backend.pack(torch.randn(8, 16)), OneDnnWeight)
    assert backend.max_rows == INVARIANT_ROWS


def test_cuda_packs_nothing_and_gathers_the_rows_adapters() -> None:
    """Nothing here touches a GPU: choosing the backend does not."""
    backend = backend_for(torch.device("cuda", 1))
    assert isinstance(backend, CudaBackend)
    assert backend.device == torch.device("cuda", 1)
    assert backend.pack(torch.randn(8, 16)) is None
    assert backend.max_rows is None, "one matmul over the whole batch"
    assert isinstance(backend.row_adapters(), Gathered)


def test_a_strategy_can_be_chosen_over_the_devices_own() -> None:
    assert isinstance(backend_for(torch.device("cpu"), "gathered").row_adapters(), Gathered)
    assert isinstance(backend_for(torch.device("cuda"), "per_request").row_adapters(), PerRequest)


def test_other_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="CPU or CUDA"):
        backend_for(torch.device("meta"))


@pytest.mark.parametrize("rows", [1, 2, 7])
def test_a_packed_bf16_weight_gives_the_plain_products_bits(rows: int) -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16 kernels")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(384, 1536, generator=generator).to(torch.bfloat16)
    bias = torch.randn(384, generator=generator).to(torch.bfloat16)
    x = torch.randn(rows, 1536, generator=generator).to(torch.bfloat16)
    packed = OneDnnWeight.of(weight)
    assert packed is not None
    assert packed.nbytes > 0

    assert torch.equal(packed(x, bias), functional.linear(x, weight, bias))
