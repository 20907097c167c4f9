"""What differs between the devices the engine computes on, behind one seam.

The passes and the engine ask their backend, never the device type, for:
* whether bf16 matmuls are fast there (`dense.compute_dtype`);
* a weight prepared for many small products (`pack`): on the CPU, oneDNN's blocked layout,
  which a decoder step would otherwise pay for at every call; on CUDA nothing (cuBLAS reads
  the plain weight);
* how many rows of different requests one matmul may take (`max_rows`): on the CPU as many as
  oneDNN keeps independent of each other (`dense.INVARIANT_ROWS`), on CUDA all of them;
* how a decode batch adds its rows' adapters (`row_adapters`): gathered into batched matmuls
  on CUDA; per request on the CPU. On a CPU gathered measured faster per step at every batch
  size but two (even there), and far dearer whenever the batch's rows change
  (`docs/benchmarks/adapter_matmul.json`); but there a row's bits vary with the batch's row
  count and padded rank (shape cases counted in the same file), and the CPU promises a request
  the very bits it gets alone, which per request keeps: a request's own shapes in any batch;
* giving freed memory back: glibc's heap on the CPU (`memory`), also while busy; on CUDA the
  caching allocator's free blocks once the engine goes idle (for a training process on the
  same GPU).
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from app.engine.dense import INVARIANT_ROWS
from app.engine.memory import release_free_memory
from app.engine.row_adapters import AdapterRowsKind, RowAdapters, row_adapters

__all__ = [
    "ComputeBackend",
    "CpuBackend",
    "CudaBackend",
    "OneDnnWeight",
    "PackedWeight",
    "backend_for",
]


class PackedWeight(Protocol):
    @property
    def nbytes(self) -> int: ...

    def __call__(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """`x @ weight.T + bias`, [rows, in] -> [rows, out]."""


class ComputeBackend(Protocol):
    @property
    def device(self) -> torch.device: ...

    def fast_bf16(self) -> bool: ...

    @property
    def max_rows(self) -> int | None:
        """Most rows of different requests one base matmul may take (None: any)."""

    def pack(self, weight: Tensor) -> PackedWeight | None:
        """`weight` [out, in] prepared for repeated products with few rows, or None."""

    def row_adapters(self) -> RowAdapters: ...

    def release_free_memory(self, *, idle: bool) -> None:
        """Between rounds now and then, and once when the engine goes `idle`."""


@dataclass(frozen=True, slots=True)
class OneDnnWeight:
    """A weight reordered once into oneDNN's blocked layout.

    A plain bf16 matmul on the CPU reorders its weight on every call, which for a decoder step
    (a handful of rows) costs more than the product itself. bf16 products are bit-identical to
    `functional.linear`; fp32 ones differ from MKL's in the last bits, and unlike MKL's do not
    depend on the row count (see `dense`).
    """

    packed: Tensor

    @classmethod
    def of(cls, weight: Tensor, rows_hint: int = 8) -> "OneDnnWeight | None":
        if weight.dtype not in (torch.float32, torch.bfloat16):
            return None
        if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            return None
        if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None  # oneDNN has no bf16 kernels for this CPU (no AVX512BW/VL/DQ)
        return cls(torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint))

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def __call__(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """A lone row goes through as the first of two: oneDNN's one-row kernel may sum in
        another order than its kernel for several rows (seen for K = 1536 on an AMD EPYC with
        AVX512-BF16, in about one row in ten), and a request decoded alone would then not get
        the bits it gets in a batch."""
        if x.shape[0] == 1:
            pair = torch.cat([x, x.new_zeros(1, x.shape[1])])
            return self(pair, bias)[:1]
        output: Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        return output


@dataclass(frozen=True, slots=True)
class CpuBackend:
    adapter_rows: AdapterRowsKind = "per_request"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def fast_bf16(self) -> bool:
        return torch.cpu._is_avx512_bf16_supported()

    @property
    def max_rows(self) -> int | None:
        return INVARIANT_ROWS  # what keeps oneDNN's rows independent of each other

    def pack(self, weight: Tensor) -> PackedWeight | None:
        return OneDnnWeight.of(weight)

    def row_adapters(self) -> RowAdapters:
        return row_adapters(self.adapter_rows, self.device)

    def release_free_memory(self, *, idle: bool) -> None:
        release_free_memory()


@dataclass(frozen=True, slots=True)
class CudaBackend:
    device: torch.device
    adapter_rows: AdapterRowsKind = "gathered"

    def fast_bf16(self) -> bool:
        return bool(torch.cuda.is_bf16_supported())

    @property
    def max_rows(self) -> int | None:
        return None

    def pack(self, weight: Tensor) -> PackedWeight | None:
        return None

    def row_adapters(self) -> RowAdapters:
        return row_adapters(self.adapter_rows, self.device)

    def release_free_memory(self, *, idle: bool) -> None:
        if idle:  # while busy, the freed blocks are about to be used again
            torch.cuda.empty_cache()


def backend_for(
    device: torch.device, adapter_rows: AdapterRowsKind | None = None
) -> ComputeBackend:
    """The backend of `device`; `adapter_rows`: another strategy than the device's own (tests
    and benchmarks compare them)."""
    if device.type == "cuda":
        if adapter_rows is None:
            return CudaBackend(device)
        return CudaBackend(device, adapter_rows)
    if device.type != "cpu":
        raise ValueError(f"the engine runs on CPU or CUDA, not {device.type}")
    return CpuBackend() if adapter_rows is None else CpuBackend(adapter_rows)
