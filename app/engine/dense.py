"""Dense compute weights for Whisper's projections, whatever precision they are stored in.

Weights stay quantised at rest (NF4 or int8: the memory the service promises). For a forward
pass they are dequantised once into a transient dense matrix of the *compute dtype* and used
with the platform's matmul: bfloat16 on CPUs with AVX512-BF16/AMX and on CUDA, float32
elsewhere. bitsandbytes' own CPU kernels dequantise inside every call (once per decoded token)
and run at a fraction of oneDNN's speed.

Batch invariance on the CPU: with a weight packed for oneDNN (`backend.OneDnnWeight`; bf16
where the CPU has it, fp32 on any x86 CPU), a row's result does not depend on the other rows of
the matmul (from two up to `INVARIANT_ROWS` rows, checked by the engine tests), which is what
lets a request be decoded alone or in any batch with the same transcript. A plain fp32 `linear`
(MKL) switches kernels with the row count, so its rows are deterministic per batch, not across
batches."""

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.types import ComputeDtype, Precision

__all__ = [
    "INVARIANT_ROWS",
    "ComputeDtype",
    "compute_dtype",
    "dense_weight",
    "linear",
]

INVARIANT_ROWS = 32
"""Largest row count for which oneDNN's bf16 matmul gives every row the bits it gets alone."""


def compute_dtype(precision: Precision, fast_bf16: bool, choice: ComputeDtype) -> torch.dtype:
    """The dtype projections compute in. `auto`: bf16 for quantised weights where the hardware
    has fast bf16 matmuls (`fast_bf16`, the backend's word), fp32 otherwise (and always for the
    fp32 reference precision)."""
    if choice == "float32":
        return torch.float32
    if choice == "bfloat16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    return torch.bfloat16 if fast_bf16 else torch.float32


def dense_weight(module: nn.Module) -> Tensor:
    """The [out, in] float32 weight of a linear layer (plain, bitsandbytes 4-bit or 8-bit).

    Plain layers return their own parameter (no copy); quantised ones a fresh dequantised
    tensor.
    """
    import bitsandbytes as bnb

    if isinstance(module, bnb.nn.Linear4bit):
        return _dequantize_4bit(module)
    if isinstance(module, bnb.nn.Linear8bitLt):
        return _dequantize_8bit(module)
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.float() if weight.dtype != torch.float32 else weight


def _dequantize_4bit(module: Any) -> Tensor:
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    data, state = module.weight.data, module.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        # bitsandbytes repacked it for its own CPU kernel (an eval-mode call went through the
        # module); read it back in the standard layout without touching the module.
        data, state = _convert_weight_packed_for_cpu_inverse(data, state)
    weight: Tensor = bnb.functional.dequantize_4bit(data, state)
    return weight.float()


def _dequantize_8bit(module: Any) -> Tensor:
    weight = module.weight
    scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    dense: Tensor = weight.data.float() * (scales.float()[:, None] / 127.0)
    return dense


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ weight.T + bias` in `weight`'s dtype, returned as float32 (the residual stream)."""
    dtype = weight.dtype
    output = functional.linear(x.to(dtype), weight, None if bias is None else bias.to(dtype))
    return output.float()
