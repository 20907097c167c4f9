"""Whisper's projections as dense compute weights plus per-row LoRA, for one forward pass.

The serving path never calls the model's linear modules. For each pass it builds `Projection`s:
the dequantised base weight in the compute dtype (see `dense`) and, for the rows of the batch
that use an adapter, that row's low-rank factors from the adapter bank. A request encoded
alone has its adapter merged into the weights instead (`merged_update`).

Row independence (the transcript of a request must not depend on its neighbours):
* the base product never sees more than `INVARIANT_ROWS` rows in one matmul;
* LoRA runs row by row in float32 (`x_r @ A_r @ B_r`), the very operations a row alone gets:
  batched bf16 matmuls were seen to change a row's bits with the batch, rarely but really;
* attention (in the passes) runs per group of rows with identical shapes.
Rows are views at offsets that are multiples of the model width (a multiple of 16 floats in
every Whisper), so every row starts as aligned as a tensor of its own.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.dense import INVARIANT_ROWS, dense_weight, packed_linear, prepack
from app.engine.lora import LoraLinear

__all__ = [
    "BaseWeights",
    "Projection",
    "RowFactors",
    "fused",
    "fused_factors",
    "merged_update",
    "row_factors",
]

RowFactors = dict[int, tuple[Tensor, Tensor]]
"""Batch row -> its adapter's A [in, r] and B [r, out] (float32, LoRA scale folded into B);
rows served by the base model are absent."""


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
    lora: RowFactors = field(default_factory=dict)
    packed: Tensor | None = None
    """`weight` prepacked for repeated small products (decoder steps), where supported."""

    @classmethod
    def build(
        cls,
        base: BaseWeights,
        dtype: torch.dtype,
        merged: Tensor | None = None,
        lora: RowFactors | None = None,
        *,
        pack: bool = False,
    ) -> "Projection":
        """`merged`: an adapter's [out, in] update folded into the weight (one request).
        `pack`: the projection will be applied many times to few rows."""
        weight = (base.weight if merged is None else base.weight + merged).to(dtype)
        bias = None if base.bias is None else base.bias.to(dtype)
        return cls(weight, bias, lora or {}, prepack(weight) if pack else None)

    def __call__(self, x: Tensor, *, chunked: bool = True) -> Tensor:
        """[rows, tokens, in] float32 -> [rows, tokens, out] float32

        `chunked`: the rows belong to different requests, so no matmul may see more than
        `INVARIANT_ROWS` of them; one request's rows (an encoder window) go through whole.
        """
        inputs = x.to(self.weight.dtype)
        if self.packed is not None:
            output = self._packed(inputs)
        elif chunked:
            output = _linear(inputs, self.weight, self.bias)
        else:
            output = functional.linear(inputs, self.weight, self.bias)
        output = output.float()
        for row, (a, b) in self.lora.items():
            output[row] += (x[row] @ a) @ b
        return output

    def rows(self, index: list[int]) -> "Projection":
        """The same projection for a subset (or reordering, with repeats) of the batch rows."""
        if not self.lora:
            return self
        lora = {new: self.lora[old] for new, old in enumerate(index) if old in self.lora}
        return Projection(self.weight, self.bias, lora, self.packed)

    def _packed(self, x: Tensor) -> Tensor:
        assert self.packed is not None
        rows = x.reshape(-1, x.shape[-1])
        chunks = [
            packed_linear(chunk, self.packed, self.bias)
            for chunk in torch.split(rows, INVARIANT_ROWS)
        ]
        output = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return output.reshape(*x.shape[:-1], self.weight.shape[0])


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ weight.T + bias`, in chunks of at most `INVARIANT_ROWS` rows."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= INVARIANT_ROWS:
        return functional.linear(x, weight, bias)
    chunks = [functional.linear(chunk, weight, bias) for chunk in torch.split(rows, INVARIANT_ROWS)]
    return torch.cat(chunks).reshape(*x.shape[:-1], weight.shape[0])


def row_factors(module: nn.Module, slots: list[int]) -> RowFactors:
    """Each adapted row's factors from the layer's bank (rows the base model serves here, slot
    0 or an adapter that leaves this layer alone, are left out)."""
    layer = module if isinstance(module, LoraLinear) else None
    if layer is None or layer.bank_a is None or layer.bank_b is None:
        return {}
    factors: RowFactors = {}
    cache: dict[int, tuple[Tensor, Tensor]] = {}
    for row, slot in enumerate(slots):
        rank = layer.bank_ranks[slot]
        if rank == 0:
            continue
        if slot not in cache:
            # The adapter's own rank, not the bank's zero padding: a product over more terms
            # would round differently, and a row's bits would change as the bank grows.
            a = layer.bank_a[slot, :, :rank].contiguous()
            cache[slot] = (a, layer.bank_b[slot, :rank].contiguous())
        factors[row] = cache[slot]
    return factors


def merged_update(module: nn.Module, slot: int) -> Tensor | None:
    """The [out, in] float32 update of the adapter in bank `slot` (None for the base model)."""
    layer = module if isinstance(module, LoraLinear) else None
    if layer is None or layer.bank_a is None or layer.bank_b is None:
        return None
    rank = layer.bank_ranks[slot]
    if rank == 0:
        return None
    update: Tensor = (layer.bank_a[slot, :, :rank] @ layer.bank_b[slot, :rank]).T
    return update


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


def fused_factors(parts: list[RowFactors], out_features: list[int]) -> RowFactors:
    """Per-row factors of stacked projections: A side by side [in, sum r], B block diagonal
    [sum r, sum out], so each part's update lands in its own output range."""
    fused_rows: RowFactors = {}
    built: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}  # rows sharing an adapter share
    for row in sorted({row for part in parts for row in part}):
        key = tuple(id(part[row]) if row in part else 0 for part in parts)
        if key in built:
            fused_rows[row] = built[key]
            continue
        present = [part[row] for part in parts if row in part]
        in_features, device = present[0][0].shape[0], present[0][0].device
        ranks = [part[row][0].shape[1] if row in part else 0 for part in parts]
        a = torch.zeros(in_features, sum(ranks), device=device)
        b = torch.zeros(sum(ranks), sum(out_features), device=device)
        r0 = o0 = 0
        for part, rank, width in zip(parts, ranks, out_features, strict=True):
            if row in part:
                a[:, r0 : r0 + rank] = part[row][0]
                b[r0 : r0 + rank, o0 : o0 + width] = part[row][1]
            r0, o0 = r0 + rank, o0 + width
        fused_rows[row] = built[key] = (a, b)
    return fused_rows
