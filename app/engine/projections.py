"""Whisper's projections as dense compute weights plus per-row LoRA, for one forward pass.

The serving path never calls the model's linear modules. For each pass it builds `Projection`s:
the dequantised base weight in the compute dtype (see `dense`) and, for the rows of the batch
that use an adapter, that row's low-rank factors from the adapter bank.

Row independence (the transcript of a request must not depend on its neighbours):
* the base product never sees more than `INVARIANT_ROWS` rows in one matmul (nor one row
  alone on the CPU, see `backend.OneDnnWeight`);
* LoRA runs in float32; in a decode batch, as the backend's `row_adapters` add it (on the
  CPU one pair of matmuls per request over exactly that request's rows: the same shapes, so
  the same kernel and bits, whether the request runs alone or in any batch), and for one
  request's own pass, as `RowSpan`s here;
* attention (in the passes) runs per group of rows with identical shapes.
Rows are views at offsets that are multiples of the model width (a multiple of 16 floats in
every Whisper), so every row starts as aligned as a tensor of its own. (On CUDA these rules do
not make a row's bits independent of its batch: cuBLAS picks kernels by shape.)
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.adaptation.lora.bank import Factors
from app.engine.adaptation.lora.layer import LoraLinear
from app.engine.backend import PackedWeight
from app.engine.dense import INVARIANT_ROWS, dense_weight
from app.engine.row_adapters import RowSpan, add_span

__all__ = [
    "BaseWeights",
    "Projection",
    "fused",
    "fused_factors",
    "slot_factors",
]


@dataclass(frozen=True, slots=True)
class BaseWeights:
    """A projection's dense base weight [out, in] (float32) and bias [out]."""

    weight: Tensor
    bias: Tensor | None

    @classmethod
    def of(cls, module: nn.Module) -> "BaseWeights":
        base = module.base if isinstance(module, LoraLinear) else module
        bias = getattr(base, "bias", None)
        return cls(dense_weight(base), None if bias is None else bias.float())


@dataclass(frozen=True, slots=True)
class Projection:
    weight: Tensor
    """[out, in] in the compute dtype."""
    bias: Tensor | None
    packed: PackedWeight | None = None
    """`weight` packed for repeated small products (decoder steps), where the backend does."""
    max_rows: int | None = INVARIANT_ROWS
    """Most rows of different requests one matmul may take (None: any), as the backend says."""

    @classmethod
    def build(
        cls,
        base: BaseWeights,
        dtype: torch.dtype,
        merged: Tensor | None = None,
        *,
        pack: Callable[[Tensor], PackedWeight | None] | None = None,
        max_rows: int | None = INVARIANT_ROWS,
    ) -> "Projection":
        """`merged`: an adapter's [out, in] update folded into the weight (one request).
        `pack`: the backend's packing, for a projection applied many times to few rows."""
        weight = (base.weight if merged is None else base.weight + merged).to(dtype)
        bias = None if base.bias is None else base.bias.to(dtype)
        return cls(weight, bias, None if pack is None else pack(weight), max_rows)

    def __call__(self, x: Tensor, *, chunked: bool = True, lora: Sequence[RowSpan] = ()) -> Tensor:
        """[rows, tokens, in] float32 -> [rows, tokens, out] float32

        `chunked`: the rows belong to different requests, so no matmul may see more than
        `max_rows` of them; one request's rows (an encoder window) go through whole.
        `lora`: the adapted requests' rows and factors (rows of no span get the base model).
        """
        output = self._base(x, chunked)
        for span in lora:
            add_span(output, x, span)
        return output

    def in_compute_dtype(self, x: Tensor, factors: Factors | None = None) -> Tensor:
        """`x @ weight.T + bias` for one request's rows (one matmul), left in the compute dtype
        (for a consumer that computes in it too: attention, the activation, the next
        projection). `factors`: the request's adapter, merged into the weight first
        (`W + B^T A^T` in one matmul)."""
        weight = self.weight
        if factors is not None:
            a, b = (factor.to(weight.dtype) for factor in factors)
            weight = torch.addmm(weight, b.T, a.T)
        return functional.linear(x.to(weight.dtype), weight, self.bias)

    def _base(self, x: Tensor, chunked: bool) -> Tensor:
        inputs = x.to(self.weight.dtype)
        if self.packed is not None:
            output = self._packed(inputs)
        elif chunked and self.max_rows is not None:
            output = _linear(inputs, self.weight, self.bias, self.max_rows)
        else:
            output = functional.linear(inputs, self.weight, self.bias)
        return output.float()

    def _packed(self, x: Tensor) -> Tensor:
        assert self.packed is not None
        rows = x.reshape(-1, x.shape[-1])
        chunks = [self.packed(chunk, self.bias) for chunk in torch.split(rows, INVARIANT_ROWS)]
        output = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return output.reshape(*x.shape[:-1], self.weight.shape[0])


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, max_rows: int) -> Tensor:
    """`x @ weight.T + bias`, in chunks of at most `max_rows` rows."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= max_rows:
        return functional.linear(x, weight, bias)
    chunks = [functional.linear(chunk, weight, bias) for chunk in torch.split(rows, max_rows)]
    return torch.cat(chunks).reshape(*x.shape[:-1], weight.shape[0])


def slot_factors(module: nn.Module, slot: int) -> Factors | None:
    """The factors of the adapter in bank `slot` for this projection (None for the base model,
    an adapter that leaves it alone, or a projection without a bank)."""
    return module.bank.factors(slot) if isinstance(module, LoraLinear) else None


def fused(parts: list[BaseWeights]) -> BaseWeights:
    """Projections of the same input stacked into one (e.g. q, k and v): their weights along
    the output dimension, a missing bias as zeros."""
    weight = torch.cat([part.weight for part in parts])
    biases = [
        part.bias
        if part.bias is not None
        else torch.zeros(part.weight.shape[0], device=part.weight.device)
        for part in parts
    ]
    return BaseWeights(weight, torch.cat(biases))


def fused_factors(parts: list[Factors | None], out_features: list[int]) -> Factors | None:
    """The factors of stacked projections: A side by side [in, sum r] (column-major, as every
    `Factors`), B block diagonal [sum r, sum out], so each part's update lands in its own
    output range."""
    present = [part for part in parts if part is not None]
    if not present:
        return None
    in_features, device = present[0][0].shape[0], present[0][0].device
    ranks = [part[0].shape[1] if part is not None else 0 for part in parts]
    a_rows = torch.zeros(sum(ranks), in_features, device=device)
    b = torch.zeros(sum(ranks), sum(out_features), device=device)
    r0 = o0 = 0
    for part, rank, width in zip(parts, ranks, out_features, strict=True):
        if part is not None:
            a_rows[r0 : r0 + rank] = part[0].T
            b[r0 : r0 + rank, o0 : o0 + width] = part[1]
        r0, o0 = r0 + rank, o0 + width
    return a_rows.T, b
