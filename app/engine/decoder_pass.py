"""Whisper's decoder over a batch that requests join and leave between tokens.

The batch is a sequence of *groups*: the rows of one request (its beam hypotheses), which
joined together and so share a prefix length, a cache length and an encoder length. Every
step feeds one token per row. The projections, nearly all of the work, run over all rows at
once, each row with its adapter's low-rank factors (a LoRA adapter's, or a SAML adapter's mixture,
resolved while the request's prefix runs, then added as the backend's `row_adapters` add them);
attention runs per group, so no row ever sees padding or another row's lengths. On the CPU,
with row-independent matmuls (see `projections`), a row's logits are the same bits whether it
is decoded alone or with others, whenever it joined: batching never changes a transcript. On
CUDA they are the same within a bound (`tests/engine/test_cuda.py` states and tests it).

A request joins with a prefix pass over its own rows (`add`), leaves when its search ends
(`keep` drops its rows, or reorders them for beam search). The decoder's weights are
dequantised once while the engine is busy (not once per token, nor once per request: see
`release`); each group preallocates the self-attention cache it can need.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from app.engine.adaptation.lora.bank import Factors
from app.engine.adaptation.rows import BankSlot, RowAdapter
from app.engine.backend import ComputeBackend
from app.engine.projections import BaseWeights, Projection, fused, fused_factors, slot_factors
from app.engine.row_adapters import LayerFactors, RowAdapters, RowSpan

__all__ = ["DecodeBatch", "OutputHead"]

_MODULES = ("self_out", "cross_q", "cross_k", "cross_v", "cross_out", "fc1", "fc2")
_STEPPED = ("self_qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")
"""The projections a decoder step runs (cross-attention keys and values are computed once, when
a request joins)."""


class OutputHead:
    """The final projection to the vocabulary, tied to the token embeddings, held once in the
    compute dtype (for bf16 a half-size copy: this matrix is read at every decoded token)."""

    def __init__(self, model: Any, dtype: torch.dtype, backend: ComputeBackend) -> None:
        weight: Tensor = model.proj_out.weight
        weight = weight if weight.dtype == dtype else weight.detach().to(dtype)
        self._projection = Projection(weight, None, backend.pack(weight), backend.max_rows)
        self._own = weight is model.proj_out.weight

    @property
    def nbytes(self) -> int:
        """Bytes held beyond the model's own weights (a converted copy, a prepacked one)."""
        weight = self._projection.weight
        held = 0 if self._own else weight.numel() * weight.element_size()
        packed = self._projection.packed
        return held + (0 if packed is None else packed.nbytes)

    def __call__(self, hidden: Tensor) -> Tensor:
        """[rows, n, d_model] -> [rows, n, vocab] float32 logits"""
        return self._projection(hidden)


def _modules(layer: Any) -> dict[str, Any]:
    own, cross = layer.self_attn, layer.encoder_attn
    return {
        "self_out": own.out_proj,
        "cross_q": cross.q_proj,
        "cross_k": cross.k_proj,
        "cross_v": cross.v_proj,
        "cross_out": cross.out_proj,
        "fc1": layer.fc1,
        "fc2": layer.fc2,
    }


def _base_projections(
    layer: Any, dtype: torch.dtype, backend: ComputeBackend
) -> dict[str, Projection]:
    """One layer's dense compute weights; q/k/v of self-attention stacked into one; the
    projections of every step packed by the backend."""
    own = layer.self_attn
    qkv = fused([BaseWeights.of(m) for m in (own.q_proj, own.k_proj, own.v_proj)])
    rows = backend.max_rows
    built = {"self_qkv": Projection.build(qkv, dtype, pack=backend.pack, max_rows=rows)}
    for name, module in _modules(layer).items():
        pack = backend.pack if name in _STEPPED else None
        built[name] = Projection.build(BaseWeights.of(module), dtype, pack=pack, max_rows=rows)
    return built


def _self_factors(
    layer: Any, index: int, adapter: RowAdapter, attention_input: Tensor
) -> dict[str, Factors | None]:
    """One request's factors for a layer's self-attention and feed-forward projections (None:
    the base model's): from its bank slot, or mixed from the layer's input over its prefix."""
    own = layer.self_attn
    qkv = (own.q_proj, own.k_proj, own.v_proj)
    widths = [m.out_features for m in qkv]
    if isinstance(adapter, BankSlot):
        slot = adapter.slot
        return {
            "self_qkv": fused_factors([slot_factors(m, slot) for m in qkv], widths),
            "self_out": slot_factors(own.out_proj, slot),
            "fc1": slot_factors(layer.fc1, slot),
            "fc2": slot_factors(layer.fc2, slot),
        }
    mixed = adapter.routing.factors("decoder_self", index, attention_input)
    return {
        "self_qkv": fused_factors([mixed["q_proj"], mixed["k_proj"], mixed["v_proj"]], widths),
        "self_out": mixed["out_proj"],
        "fc1": None,
        "fc2": None,
    }


def _cross_factors(
    layer: Any, index: int, adapter: RowAdapter, attention_input: Tensor, encoded: Tensor
) -> dict[str, Factors | None]:
    """One request's factors for a layer's cross-attention projections."""
    cross = layer.encoder_attn
    names = {"cross_q": "q_proj", "cross_k": "k_proj", "cross_v": "v_proj", "cross_out": "out_proj"}
    if isinstance(adapter, BankSlot):
        return {
            name: slot_factors(getattr(cross, own), adapter.slot) for name, own in names.items()
        }
    mixed = adapter.routing.factors("decoder_cross", index, attention_input, encoded)
    return {name: mixed[own] for name, own in names.items()}


@dataclass(frozen=True, slots=True)
class _Joining:
    """A request joining the batch: its prefix pass resolves its factors layer by layer (a
    SAML adapter's depend on the layer's input) and fills its cross-attention cache."""

    group: "_Group"
    encoded: Tensor
    """[frames, d_model]"""
    adapter: RowAdapter
    heads: Mapping[int, list[int]]
    """Per layer, the cross-attention heads whose weights are kept in `attention`."""
    attention: list[Tensor] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    rows: int
    length: int
    """Tokens in the self-attention cache so far."""
    self_k: list[Tensor]  # per layer [rows, heads, capacity, head_dim]
    self_v: list[Tensor]
    cross_k: list[Tensor]  # per layer [rows, heads, frames, head_dim]
    cross_v: list[Tensor]
    factors: list[dict[str, Factors | None]]
    """Per layer, the request's factors of each projection (the same for all its rows)."""
    slot: int = 0
    """Its slot in the batch's `RowAdapters`, once it joined."""


class DecodeBatch:
    def __init__(
        self, model: Any, head: OutputHead, dtype: torch.dtype, backend: ComputeBackend
    ) -> None:
        self._decoder = model.model.decoder
        self._layers = list(self._decoder.layers)
        self._head = head
        self._dtype = dtype
        self._backend = backend
        self._heads = self._layers[0].self_attn.num_heads
        self._scaling = self._layers[0].self_attn.scaling
        self._weights: list[dict[str, Projection]] | None = None
        self._groups: list[_Group] = []
        self._adapters: RowAdapters = backend.row_adapters()
        self._arranged = True
        """Whether `_adapters` knows the rows as they are."""

    @property
    def rows(self) -> int:
        return sum(group.rows for group in self._groups)

    @property
    def groups(self) -> list[int]:
        """Rows per group, in batch order (one group per request, in the order they joined)."""
        return [group.rows for group in self._groups]

    def add(
        self,
        encoded: Tensor,
        prefix: list[int],
        adapter: RowAdapter,
        capacity: int,
        wanted: list[int],
    ) -> Tensor:
        """A request joins as one row at the end of the batch: runs its prefix and returns the
        logits at prefix positions `wanted` ([n, vocab]). `capacity`: most tokens it may add.
        `encoded`: its window's encoder output [frames, d_model]; `adapter`: its adapter."""
        joining = self._joining(encoded, len(prefix) + capacity, adapter)
        hidden = self._forward(torch.tensor([prefix], device=encoded.device), [], joining)
        group = joining.group
        group.slot = self._adapters.admit([_stepped(factors) for factors in group.factors])
        self._groups.append(group)
        self._arranged = False
        picked = hidden[0, torch.tensor(wanted, device=encoded.device)]
        logits: Tensor = self._head(self._decoder.layer_norm(picked)[None])[0]
        return logits

    def cross_attention(
        self,
        encoded: Tensor,
        tokens: list[int],
        adapter: RowAdapter,
        heads: Sequence[tuple[int, int]],
    ) -> Tensor:
        """The cross-attention weights of `heads` ((layer, head) pairs) over `encoded`'s frames
        while `tokens` run through the decoder with `adapter`: [len(heads), len(tokens),
        frames], float32. The batch is left as it was."""
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        joining = self._joining(encoded, len(tokens), adapter, by_layer)
        self._forward(torch.tensor([tokens], device=encoded.device), [], joining)
        return torch.cat(joining.attention)

    def _joining(
        self,
        encoded: Tensor,
        length: int,
        adapter: RowAdapter,
        heads: Mapping[int, list[int]] | None = None,
    ) -> "_Joining":
        shape = (1, self._heads, length, encoded.shape[1] // self._heads)
        group = _Group(
            rows=1,
            length=0,
            self_k=[torch.zeros(shape, device=encoded.device) for _ in self._layers],
            self_v=[torch.zeros(shape, device=encoded.device) for _ in self._layers],
            cross_k=[],
            cross_v=[],
            factors=[],
        )
        return _Joining(group, encoded, adapter, heads or {})

    def step(self, tokens: Tensor) -> Tensor:
        """Feeds one token per row ([rows]); returns the next logits [rows, vocab]."""
        hidden = self._forward(tokens[:, None], self._groups)
        logits: Tensor = self._head(self._decoder.layer_norm(hidden))[:, 0]
        return logits

    def drop_newest(self) -> None:
        """Drops the request that joined last (its `add` ran, but it cannot be decoded)."""
        self.keep([list(range(group.rows)) for group in self._groups[:-1]] + [[]])

    def keep(self, rows: list[list[int]]) -> None:
        """For each group, in order, the rows (local indices) to keep: `[]` drops the group's
        request, `[0, 0, 1]` forks a beam. Caches are compacted accordingly."""
        if len(rows) != len(self._groups):
            raise ValueError("keep needs one entry per group")
        if all(local == list(range(g.rows)) for g, local in zip(self._groups, rows, strict=True)):
            return  # every row stays where it is
        kept: list[_Group] = []
        for group, local in zip(self._groups, rows, strict=True):
            if not local:
                self._adapters.release(group.slot)
                continue
            if local != list(range(group.rows)):
                index = torch.tensor(local, device=group.self_k[0].device)
                group.self_k = [cache.index_select(0, index) for cache in group.self_k]
                group.self_v = [cache.index_select(0, index) for cache in group.self_v]
                if group.rows != len(local) or any(i != 0 for i in local):
                    group.cross_k = [_rows_of(cache, len(local)) for cache in group.cross_k]
                    group.cross_v = [_rows_of(cache, len(local)) for cache in group.cross_v]
                group.rows = len(local)
            kept.append(group)
        self._groups = kept
        self._arranged = False

    @property
    def holds_weights(self) -> bool:
        return self._weights is not None

    def release(self) -> None:
        """Drops the dense weights (the engine went idle); the next request rebuilds them."""
        if self._groups:
            raise RuntimeError("the decode batch is busy")
        self._weights = None
        self._adapters = self._backend.row_adapters()

    def _dense_weights(self) -> list[dict[str, Projection]]:
        if self._weights is None:
            dtype, backend = self._dtype, self._backend
            self._weights = [_base_projections(layer, dtype, backend) for layer in self._layers]
        return self._weights

    def _forward(
        self, tokens: Tensor, groups: list[_Group], joining: _Joining | None = None
    ) -> Tensor:
        """`tokens` [rows, new] through the decoder layers: the prefix pass of the one group
        `joining` (`groups` is then ignored), or one step of every group. Returns hidden
        states [rows, new, d]."""
        if joining is not None:
            groups = [joining.group]
        elif not self._arranged:
            self._adapters.arrange([(group.slot, group.rows) for group in groups])
            self._arranged = True
        decoder = self._decoder
        weights = self._dense_weights()
        new = tokens.shape[1]
        starts = torch.tensor(
            [g.length for g in groups for _ in range(g.rows)], device=tokens.device
        )
        positions = starts[:, None] + torch.arange(new, device=tokens.device)[None]
        hidden: Tensor = decoder.embed_tokens(tokens) + decoder.embed_positions.weight[positions]
        for index, (layer, layer_weights) in enumerate(zip(self._layers, weights, strict=True)):
            h = layer.self_attn_layer_norm(hidden)
            if joining is not None:
                joining.group.factors.append(_self_factors(layer, index, joining.adapter, h))
            project = _Projector(layer_weights, index, joining, self._adapters)
            attended = self._self_attention(project("self_qkv", h), groups, index, new)
            hidden = hidden + project("self_out", attended)
            h = layer.encoder_attn_layer_norm(hidden)
            if joining is not None:
                self._join_cross(joining, layer, index, h)
            q = self._split(project("cross_q", h))
            if joining is not None and index in joining.heads:
                joining.attention.append(
                    self._attention_weights(q, joining.group, index, joining.heads[index])
                )
            attended = self._cross_attention(q, groups, index)
            hidden = hidden + project("cross_out", attended)
            h = layer.final_layer_norm(hidden)
            ffn = layer.activation_fn(project("fc1", h))
            hidden = hidden + project("fc2", ffn)
        for group in groups:
            group.length += new
        return hidden

    def _join_cross(
        self, joining: _Joining, layer: Any, index: int, attention_input: Tensor
    ) -> None:
        """Resolves the joining request's cross-attention factors of layer `index` and projects
        its encoder output into that layer's cross-attention keys and values, once."""
        group, encoded = joining.group, joining.encoded
        factors = _cross_factors(layer, index, joining.adapter, attention_input, encoded)
        group.factors[index].update(factors)
        weights = self._dense_weights()[index]
        for name, cache in (("cross_k", group.cross_k), ("cross_v", group.cross_v)):
            own = factors[name]
            lora = [] if own is None else [RowSpan(0, 1, own)]
            cache.append(self._split(weights[name](encoded[None], chunked=False, lora=lora)))

    def _self_attention(self, qkv: Tensor, groups: list[_Group], index: int, new: int) -> Tensor:
        q, k, v = (self._split(part) for part in qkv.chunk(3, dim=-1))
        outputs = []
        first = 0
        for group in groups:
            rows = slice(first, first + group.rows)
            end = group.length + new
            group.self_k[index][:, :, group.length : end] = k[rows]
            group.self_v[index][:, :, group.length : end] = v[rows]
            outputs.append(
                functional.scaled_dot_product_attention(
                    q[rows],
                    group.self_k[index][:, :, :end],
                    group.self_v[index][:, :, :end],
                    is_causal=new > 1,
                    scale=self._scaling,
                )
            )
            first += group.rows
        return self._merge(torch.cat(outputs) if len(outputs) > 1 else outputs[0])

    def _cross_attention(self, q: Tensor, groups: list[_Group], index: int) -> Tensor:
        outputs = []
        first = 0
        for group in groups:
            rows = slice(first, first + group.rows)
            outputs.append(
                functional.scaled_dot_product_attention(
                    q[rows], group.cross_k[index], group.cross_v[index], scale=self._scaling
                )
            )
            first += group.rows
        return self._merge(torch.cat(outputs) if len(outputs) > 1 else outputs[0])

    def _attention_weights(self, q: Tensor, group: _Group, index: int, heads: list[int]) -> Tensor:
        """[len(heads), tokens, frames]: a one-row group's attention weights in layer `index`."""
        selected = torch.tensor(heads, device=q.device)
        keys = group.cross_k[index][0, selected].float()
        scores = q[0, selected].float() @ keys.transpose(-1, -2)
        weights: Tensor = (scores * self._scaling).softmax(dim=-1)
        return weights

    def _split(self, x: Tensor) -> Tensor:
        """[rows, tokens, d_model] -> [rows, heads, tokens, head_dim]"""
        rows, tokens, d_model = x.shape
        return x.view(rows, tokens, self._heads, d_model // self._heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        rows, heads, tokens, head_dim = x.shape
        merged: Tensor = x.transpose(1, 2).reshape(rows, tokens, heads * head_dim)
        return merged


def _rows_of(cache: Tensor, rows: int) -> Tensor:
    """A group's cross-attention cache for `rows` rows (all rows of a request see the same
    audio): row 0 repeated, contiguous, as a group of that size gets it from the start."""
    return cache[:1].expand(rows, -1, -1, -1).contiguous()


def _stepped(factors: dict[str, Factors | None]) -> LayerFactors:
    """A layer's factors of the projections every step runs."""
    return {name: factors.get(name) for name in _STEPPED}


@dataclass(frozen=True, slots=True)
class _Projector:
    """One layer's projections with the rows' adapters: the joining request's own factors in
    its prefix pass, the batch's `RowAdapters` in a step."""

    weights: dict[str, Projection]
    layer: int
    joining: _Joining | None
    adapters: RowAdapters

    def __call__(self, name: str, x: Tensor) -> Tensor:
        if self.joining is not None:
            own = self.joining.group.factors[self.layer].get(name)
            return self.weights[name](x, lora=[] if own is None else [RowSpan(0, 1, own)])
        output = self.weights[name](x)
        self.adapters.apply(self.layer, name, x, output)
        return output
