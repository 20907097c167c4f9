"""Whisper's projections as dense compute weights plus per-row LoRA, for one forward pass.

The serving path never calls the model's linear modules. For each pass it builds `Projection`s:
the dequantised base weight in the compute dtype (see `dense`) and, for the rows of the batch
that use an adapter, that row's low-rank factors from the adapter bank.

Row independence (the transcript of a request must not depend on its neighbours):
* the base product never sees more than `INVARIANT_ROWS` rows in one matmul;
* LoRA runs in float32 as batched matmuls of a fixed batch size (`LORA_BATCH` rows, the
  batch zero-padded to whole blocks, one stack of factors per adapter rank): every row then
  goes through the very same kernel, whatever its neighbours. (A bmm whose batch size varies
  with the load changes a row's bits: measured, for fp32 between one and two rows, and rarely
  for bf16 at any size.)
* attention (in the passes) runs per group of rows with identical shapes.
Rows are views at offsets that are multiples of the model width (a multiple of 16 floats in
every Whisper), so every row starts as aligned as a tensor of its own.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.dense import INVARIANT_ROWS, dense_weight, packed_linear, prepack
from app.engine.lora import LoraLinear

__all__ = [
    "LORA_BATCH",
    "BaseWeights",
    "Factors",
    "LoraStack",
    "Projection",
    "RowFactors",
    "fused",
    "fused_factors",
    "lora_stacks",
    "padded_rows",
    "row_factors",
    "slot_factors",
    "with_factors",
]

Factors = tuple[Tensor, Tensor]
"""An adapter's A [in, r] and B [r, out] for one projection (float32, LoRA scale in B)."""
RowFactors = dict[int, Factors]
"""Batch row -> its adapter's factors; rows served by the base model are absent."""

LORA_BATCH = 8
"""Rows per LoRA matmul, always (padded with zero rows)."""


@dataclass(frozen=True, slots=True)
class LoraStack:
    """One projection's factors for every row of a batch padded to whole blocks of
    `LORA_BATCH` rows: the factors of rows whose adapter has this rank, zeros for the others."""

    a: Tensor  # [padded rows, in, r]
    b: Tensor  # [padded rows, r, out]


def padded_rows(rows: int) -> int:
    return -(-rows // LORA_BATCH) * LORA_BATCH


def lora_stacks(factors: RowFactors, rows: int) -> list[LoraStack]:
    """The adapted rows' factors as stacks over the padded batch, one stack per rank."""
    by_rank: dict[int, list[int]] = {}
    for row in sorted(factors):
        by_rank.setdefault(factors[row][0].shape[1], []).append(row)
    stacks = []
    for members in by_rank.values():
        first_a, first_b = factors[members[0]]
        a = first_a.new_zeros(padded_rows(rows), *first_a.shape)
        b = first_b.new_zeros(padded_rows(rows), *first_b.shape)
        for row in members:
            a[row], b[row] = factors[row]
        stacks.append(LoraStack(a, b))
    return stacks


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
    packed: Tensor | None = None
    """`weight` prepacked for repeated small products (decoder steps), where supported."""

    @classmethod
    def build(
        cls,
        base: BaseWeights,
        dtype: torch.dtype,
        merged: Tensor | None = None,
        *,
        pack: bool = False,
    ) -> "Projection":
        """`merged`: an adapter's [out, in] update folded into the weight (one request).
        `pack`: the projection will be applied many times to few rows."""
        weight = (base.weight if merged is None else base.weight + merged).to(dtype)
        bias = None if base.bias is None else base.bias.to(dtype)
        return cls(weight, bias, prepack(weight) if pack else None)

    def __call__(
        self, x: Tensor, *, chunked: bool = True, lora: list[LoraStack] | None = None
    ) -> Tensor:
        """[rows, tokens, in] float32 -> [rows, tokens, out] float32

        `chunked`: the rows belong to different requests, so no matmul may see more than
        `INVARIANT_ROWS` of them; one request's rows (an encoder window) go through whole.
        `lora`: the batch rows' factors (`lora_stacks`).
        """
        output = self._base(x, chunked)
        if lora:
            _add_lora(output, x, lora)
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
        elif chunked:
            output = _linear(inputs, self.weight, self.bias)
        else:
            output = functional.linear(inputs, self.weight, self.bias)
        return output.float()

    def _packed(self, x: Tensor) -> Tensor:
        assert self.packed is not None
        rows = x.reshape(-1, x.shape[-1])
        chunks = [
            packed_linear(chunk, self.packed, self.bias)
            for chunk in torch.split(rows, INVARIANT_ROWS)
        ]
        output = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return output.reshape(*x.shape[:-1], self.weight.shape[0])


def _add_lora(output: Tensor, x: Tensor, stacks: list[LoraStack]) -> None:
    """Adds every row's low-rank update to `output`: the rows, padded with zero rows to whole
    blocks of `LORA_BATCH`, go through two fixed-size batched matmuls per block."""
    rows = x.shape[0]
    padding = padded_rows(rows) - rows
    padded = torch.cat([x, x.new_zeros(padding, *x.shape[1:])]) if padding else x
    for stack in stacks:
        for start in range(0, rows, LORA_BATCH):
            block = slice(start, start + LORA_BATCH)
            low = torch.bmm(padded[block], stack.a[block])  # [LORA_BATCH, tokens, r]
            update = torch.bmm(low, stack.b[block])  # [LORA_BATCH, tokens, out]
            count = min(LORA_BATCH, rows - start)
            output[start : start + count] += update[:count]


def with_factors(output: Tensor, x: Tensor, factors: Factors | None) -> Tensor:
    """`output` ([1, t, out] float32, one request's rows) plus that request's own low-rank
    update of `x` ([1, t, in]); for work that is never batched with other requests."""
    if factors is not None:
        output[0].addmm_(x[0] @ factors[0], factors[1])
    return output


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ weight.T + bias`, in chunks of at most `INVARIANT_ROWS` rows."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= INVARIANT_ROWS:
        return functional.linear(x, weight, bias)
    chunks = [functional.linear(chunk, weight, bias) for chunk in torch.split(rows, INVARIANT_ROWS)]
    return torch.cat(chunks).reshape(*x.shape[:-1], weight.shape[0])


def slot_factors(module: nn.Module, slot: int) -> Factors | None:
    """The factors of the adapter in bank `slot` for this layer, at the adapter's own rank
    (None for the base model, or an adapter that leaves this layer alone)."""
    layer = module if isinstance(module, LoraLinear) else None
    if layer is None or layer.bank_a is None or layer.bank_b is None:
        return None
    rank = layer.bank_ranks[slot]
    if rank == 0:
        return None
    # The adapter's own rank, not the bank's zero padding: a product over more terms would
    # round differently, and a row's bits would change as the bank grows.
    return layer.bank_a[slot, :, :rank].contiguous(), layer.bank_b[slot, :rank].contiguous()


def row_factors(module: nn.Module, slots: list[int]) -> RowFactors:
    """Each adapted row's factors (rows the base model serves here are left out)."""
    factors: RowFactors = {}
    by_slot: dict[int, Factors | None] = {}
    for row, slot in enumerate(slots):
        if slot not in by_slot:
            by_slot[slot] = slot_factors(module, slot)
        found = by_slot[slot]
        if found is not None:
            factors[row] = found
    return factors


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
    """The factors of stacked projections: A side by side [in, sum r], B block diagonal
    [sum r, sum out], so each part's update lands in its own output range."""
    present = [part for part in parts if part is not None]
    if not present:
        return None
    in_features, device = present[0][0].shape[0], present[0][0].device
    ranks = [part[0].shape[1] if part is not None else 0 for part in parts]
    a = torch.zeros(in_features, sum(ranks), device=device)
    b = torch.zeros(sum(ranks), sum(out_features), device=device)
    r0 = o0 = 0
    for part, rank, width in zip(parts, ranks, out_features, strict=True):
        if part is not None:
            a[:, r0 : r0 + rank] = part[0]
            b[r0 : r0 + rank, o0 : o0 + width] = part[1]
        r0, o0 = r0 + rank, o0 + width
    return a, b
