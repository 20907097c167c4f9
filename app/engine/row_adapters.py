"""How a decode batch adds its requests' adapters to its rows: one strategy per device, chosen
by the `backend`.

A request's factors (a LoRA adapter's, or a SAML adapter's mixture) are resolved layer by layer
while its prefix runs (`decoder_pass`); it is then `admit`ted into the batch's strategy, which
adds, to a projection's output at every step, each row's `x A B` with its request's `A` [in, r]
and `B` [r, out] (float32). Rows of the base model get nothing added.

* `PerRequest` (the CPU's): one pair of matmuls per adapted request over exactly its rows. A
  request gets the shapes it gets alone, so the same kernels and the same bits in any batch.
* `Gathered` (CUDA's): the admitted requests' factors sit in per-projection banks of request
  slots, zero-padded to the largest rank admitted (slot 0 stays zero: the base model). When the
  batch's rows change, every row's factors are gathered from its request's slot (`index_select`);
  a step then adds all rows' updates with two batched matmuls, however many adapters the batch
  holds: the idea of Punica's BGMV and vLLM's LoRA kernels, in torch ops. A row's update is the
  same product up to rounding (the zero padding and the batched kernel sum in another order),
  and its bits may depend on the batch.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from app.engine.adaptation.lora.bank import Factors

__all__ = [
    "AdapterRowsKind",
    "Gathered",
    "LayerFactors",
    "PerRequest",
    "RowAdapters",
    "RowSpan",
    "add_span",
    "row_adapters",
]

AdapterRowsKind = Literal["per_request", "gathered"]

LayerFactors = Mapping[str, Factors | None]
"""One layer's factors of a request, by projection name (None: the base model's)."""


@dataclass(frozen=True, slots=True)
class RowSpan:
    """Consecutive rows of a batch that belong to one request (its beam hypotheses), with
    that request's adapter factors for one projection."""

    first: int
    rows: int
    factors: Factors


def add_span(output: Tensor, x: Tensor, span: RowSpan) -> None:
    """Adds one request's low-rank update of its rows of `x` [rows, tokens, in] to its rows of
    `output` [rows, tokens, out]."""
    rows = slice(span.first, span.first + span.rows)
    a, b = span.factors
    inputs = x[rows].reshape(-1, x.shape[-1])
    # A leading-dimension slice of a contiguous tensor: the view writes into `output`.
    output[rows].view(-1, output.shape[-1]).addmm_(inputs @ a, b)


class RowAdapters(Protocol):
    def admit(self, factors: Sequence[LayerFactors]) -> int:
        """Takes a joining request's factors (per layer); returns its slot."""

    def release(self, slot: int) -> None:
        """The request left the batch."""

    def arrange(self, requests: Sequence[tuple[int, int]]) -> None:
        """The batch's requests in row order, as (slot, rows): what `apply` works on next."""

    def apply(self, layer: int, name: str, x: Tensor, output: Tensor) -> None:
        """Adds every row's update of projection `name` in `layer`: `x` [rows, tokens, in],
        `output` [rows, tokens, out] (float32, in place)."""


class PerRequest:
    def __init__(self) -> None:
        self._factors: dict[int, Sequence[LayerFactors]] = {}
        self._next = 1
        self._spans: dict[tuple[int, str], list[RowSpan]] = {}

    def admit(self, factors: Sequence[LayerFactors]) -> int:
        slot = self._next
        self._next += 1
        self._factors[slot] = factors
        return slot

    def release(self, slot: int) -> None:
        del self._factors[slot]

    def arrange(self, requests: Sequence[tuple[int, int]]) -> None:
        spans: dict[tuple[int, str], list[RowSpan]] = {}
        first = 0
        for slot, rows in requests:
            for layer, layer_factors in enumerate(self._factors[slot]):
                for name, factors in layer_factors.items():
                    if factors is not None:
                        spans.setdefault((layer, name), []).append(RowSpan(first, rows, factors))
            first += rows
        self._spans = spans

    def apply(self, layer: int, name: str, x: Tensor, output: Tensor) -> None:
        for span in self._spans.get((layer, name), ()):
            add_span(output, x, span)


class _Bank:
    """One projection's factors of every request slot: A [slots, in, rank], B [slots, rank,
    out], and the slots that hold any."""

    def __init__(
        self, slots: int, in_features: int, out_features: int, device: torch.device
    ) -> None:
        self.a = torch.zeros(slots, in_features, 0, device=device)
        self.b = torch.zeros(slots, 0, out_features, device=device)
        self.holding: set[int] = set()

    def fit(self, slots: int, rank: int) -> None:
        """Zero-pads the bank to at least `slots` slots and `rank`."""
        more_slots, more_rank = slots - self.a.shape[0], rank - self.a.shape[2]
        if more_slots <= 0 and more_rank <= 0:
            return
        slots, rank = max(slots, self.a.shape[0]), max(rank, self.a.shape[2])
        a = self.a.new_zeros(slots, self.a.shape[1], rank)
        b = self.b.new_zeros(slots, rank, self.b.shape[2])
        a[: self.a.shape[0], :, : self.a.shape[2]] = self.a
        b[: self.b.shape[0], : self.b.shape[1]] = self.b
        self.a, self.b = a, b

    def write(self, slot: int, factors: Factors | None) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.holding.discard(slot)
        if factors is not None:
            a, b = factors
            self.a[slot, :, : a.shape[1]] = a
            self.b[slot, : b.shape[0]] = b
            self.holding.add(slot)


class Gathered:
    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._banks: dict[tuple[int, str], _Bank] = {}
        self._slots = 1
        """Slots in every bank; slot 0 is the base model's."""
        self._free: list[int] = []
        self._rows: dict[tuple[int, str], Factors] = {}
        """Per layer and projection, the rows' gathered A [rows, in, r] and B [rows, r, out]."""

    def admit(self, factors: Sequence[LayerFactors]) -> int:
        if not self._free:
            grown = self._slots * 2
            self._free = list(range(grown - 1, self._slots - 1, -1))
            self._slots = grown
        slot = self._free.pop()
        given = {
            (layer, name): own
            for layer, layer_factors in enumerate(factors)
            for name, own in layer_factors.items()
        }
        for key, own in given.items():
            if own is not None and key not in self._banks:
                in_features, out_features = own[0].shape[0], own[1].shape[1]
                self._banks[key] = _Bank(self._slots, in_features, out_features, self._device)
        for key, bank in self._banks.items():
            own = given.get(key)
            bank.fit(self._slots, 0 if own is None else own[0].shape[1])
            bank.write(slot, own)
        return slot

    def release(self, slot: int) -> None:
        for bank in self._banks.values():
            bank.holding.discard(slot)
        self._free.append(slot)

    def arrange(self, requests: Sequence[tuple[int, int]]) -> None:
        slots = [slot for slot, rows in requests for _ in range(rows)]
        index = torch.tensor(slots, dtype=torch.long, device=self._device)
        self._rows = {
            key: (bank.a.index_select(0, index), bank.b.index_select(0, index))
            for key, bank in self._banks.items()
            if bank.holding.intersection(slots)
        }

    def apply(self, layer: int, name: str, x: Tensor, output: Tensor) -> None:
        rows = self._rows.get((layer, name))
        if rows is not None:
            a, b = rows
            output.baddbmm_(torch.bmm(x, a), b)  # [rows, tokens, r] @ [rows, r, out]


def row_adapters(kind: AdapterRowsKind, device: torch.device) -> RowAdapters:
    if kind == "gathered":
        return Gathered(device)
    return PerRequest()
