"""Whisper's decoder, run over a batch whose rows differ in prefix, audio length and adapter.

Rows are kept in *groups* of identical shape (prefix length, encoder frames). The projections,
nearly all of the work, run over every row of the batch at once, each row with its own LoRA
factors; attention runs per group, so no row ever sees padding or another row's lengths. With
row-independent matmuls (see `projections`), a row's logits are the same bits whether it is
decoded alone or with others, so batching never changes a transcript.

The decoder's weights are dequantised once per pass into dense compute weights, instead of once
per token; the self-attention key/value cache is preallocated and compacted (or, for beams,
reordered) when rows leave the batch.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from app.engine.dense import prepack
from app.engine.projections import BaseWeights, Projection, fused, fused_factors, row_factors

__all__ = ["DecoderPass", "DecoderWeights", "OutputHead"]


class OutputHead:
    """The final projection to the vocabulary, tied to the token embeddings, held once in the
    compute dtype (for bf16 a half-size copy: this matrix is read at every decoded token)."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        weight: Tensor = model.proj_out.weight
        weight = weight if weight.dtype == dtype else weight.detach().to(dtype)
        self._projection = Projection(weight, None, packed=prepack(weight))
        self._own = weight is model.proj_out.weight

    @property
    def nbytes(self) -> int:
        """Bytes held beyond the model's own weights."""
        if self._own:
            return 0
        weight = self._projection.packed
        weight = weight if weight is not None else self._projection.weight
        return weight.numel() * weight.element_size()

    def __call__(self, hidden: Tensor) -> Tensor:
        """[rows, n, d_model] -> [rows, n, vocab] float32 logits"""
        return self._projection(hidden)


class DecoderWeights:
    """The decoder's dense base weights (float32) for one pass: the 4-bit (or 8-bit) matrices
    dequantised once, q/k/v of self-attention stacked into one projection."""

    def __init__(self, decoder: Any) -> None:
        self.layers = [_layer_weights(layer) for layer in decoder.layers]


def _layer_weights(layer: Any) -> dict[str, BaseWeights]:
    own, cross = layer.self_attn, layer.encoder_attn
    return {
        "self_qkv": fused([BaseWeights.of(m) for m in (own.q_proj, own.k_proj, own.v_proj)]),
        "self_out": BaseWeights.of(own.out_proj),
        "cross_q": BaseWeights.of(cross.q_proj),
        "cross_k": BaseWeights.of(cross.k_proj),
        "cross_v": BaseWeights.of(cross.v_proj),
        "cross_out": BaseWeights.of(cross.out_proj),
        "fc1": BaseWeights.of(layer.fc1),
        "fc2": BaseWeights.of(layer.fc2),
    }


@dataclass(frozen=True, slots=True)
class _Group:
    start: int
    end: int
    length: int
    """Tokens in this group's self-attention cache so far."""
    frames: int


class DecoderPass:
    """One batch decode: `start` with the prefixes, then `step` one token per row at a time.

    Rows are reordered so that groups are contiguous: `order[i]` is the caller's index of pass
    row i, and every tensor in and out is in pass order.
    """

    def __init__(
        self,
        model: Any,
        weights: DecoderWeights,
        head: OutputHead,
        encoded: list[Tensor],
        prefixes: list[list[int]],
        slots: list[int],
        max_new_tokens: int,
        dtype: torch.dtype,
    ) -> None:
        self._decoder = model.model.decoder
        self._head = head
        self._dtype = dtype
        self._device = encoded[0].device
        layers = list(self._decoder.layers)
        self._heads = layers[0].self_attn.num_heads
        self._scaling = layers[0].self_attn.scaling
        self.order = sorted(
            range(len(prefixes)), key=lambda i: (len(prefixes[i]), encoded[i].shape[0])
        )
        encoded = [encoded[i] for i in self.order]
        self._prefixes = [prefixes[i] for i in self.order]
        self._slots = torch.tensor(
            [slots[i] for i in self.order], dtype=torch.long, device=self._device
        )
        self._proj = [
            self._projections(layer, w) for layer, w in zip(layers, weights.layers, strict=True)
        ]
        self._keys = [(len(p), e.shape[0]) for p, e in zip(self._prefixes, encoded, strict=True)]
        self._lengths = [0] * len(self._keys)
        capacity = max(len(p) for p in self._prefixes) + max_new_tokens
        d_model = encoded[0].shape[1]
        shape = (len(encoded), self._heads, capacity, d_model // self._heads)
        self._self_k = [torch.zeros(shape, device=self._device) for _ in layers]
        self._self_v = [torch.zeros(shape, device=self._device) for _ in layers]
        self._cross_k, self._cross_v = self._cross_cache(encoded)

    def _projections(self, layer: Any, weights: dict[str, BaseWeights]) -> dict[str, Projection]:
        own, cross = layer.self_attn, layer.encoder_attn
        slots = self._slots.tolist()
        qkv = (own.q_proj, own.k_proj, own.v_proj)
        self_qkv = fused_factors(
            [row_factors(m, slots) for m in qkv], [m.out_features for m in qkv]
        )
        modules = {
            "self_out": own.out_proj,
            "cross_q": cross.q_proj,
            "cross_k": cross.k_proj,
            "cross_v": cross.v_proj,
            "cross_out": cross.out_proj,
            "fc1": layer.fc1,
            "fc2": layer.fc2,
        }
        dtype = self._dtype
        built = {"self_qkv": Projection.build(weights["self_qkv"], dtype, lora=self_qkv, pack=True)}
        for name, module in modules.items():
            # Cross-attention keys and values are computed once per pass, over many frames.
            pack = name not in ("cross_k", "cross_v")
            lora = row_factors(module, slots)
            built[name] = Projection.build(weights[name], dtype, lora=lora, pack=pack)
        return built

    def _cross_cache(self, encoded: list[Tensor]) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """Cross-attention keys and values, computed once per row (its own adapter), stacked
        per group: per layer, per group [rows, heads, frames, head_dim]."""
        keys: list[list[Tensor]] = []
        values: list[list[Tensor]] = []
        groups = self._groups()
        for proj in self._proj:
            per_row_k, per_row_v = [], []
            for row, output in enumerate(encoded):
                key, value = proj["cross_k"].rows([row]), proj["cross_v"].rows([row])
                per_row_k.append(self._split(key(output[None], chunked=False)))
                per_row_v.append(self._split(value(output[None], chunked=False)))
            keys.append([torch.cat(per_row_k[g.start : g.end]) for g in groups])
            values.append([torch.cat(per_row_v[g.start : g.end]) for g in groups])
        return keys, values

    def _groups(self) -> list[_Group]:
        groups: list[_Group] = []
        start = 0
        for row in range(1, len(self._keys) + 1):
            if row == len(self._keys) or self._keys[row] != self._keys[start]:
                frames = self._keys[start][1]
                groups.append(_Group(start, row, self._lengths[start], frames))
                start = row
        return groups

    @property
    def rows(self) -> int:
        return len(self._keys)

    def start(self, wanted: list[list[int]]) -> Tensor:
        """Runs every row's prefix; returns logits at `wanted[i]` (positions in pass row i's
        prefix, the same count for all rows) as [rows, n, vocab]."""
        outputs: list[Tensor] = []
        for group in self._groups():
            tokens = torch.tensor(self._prefixes[group.start : group.end], device=self._device)
            hidden = self._forward(tokens, group)
            index = torch.tensor(wanted[group.start : group.end], device=self._device)
            outputs.append(hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1])))
        for row, (prefix, _) in enumerate(self._keys):
            self._lengths[row] = prefix
        return self._head(self._decoder.layer_norm(torch.cat(outputs)))

    def step(self, tokens: Tensor) -> Tensor:
        """Feeds one token per row ([rows]); returns the next logits [rows, vocab]."""
        hidden = self._forward(tokens[:, None], None)
        self._lengths = [length + 1 for length in self._lengths]
        logits: Tensor = self._head(self._decoder.layer_norm(hidden))[:, 0]
        return logits

    def keep(self, rows: list[int]) -> None:
        """Keeps pass rows `rows` (in that order; a row may repeat, e.g. a beam that forks).
        Rows must stay grouped: every kept row of a group before any row of the next group."""
        keys = [self._keys[row] for row in rows]
        if any(keys[i] > keys[i + 1] for i in range(len(keys) - 1)):
            raise ValueError("kept rows must stay in group order")
        old_groups = self._groups()
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        self._self_k = [cache.index_select(0, index) for cache in self._self_k]
        self._self_v = [cache.index_select(0, index) for cache in self._self_v]
        self._cross_k = [self._regroup(layer, old_groups, rows) for layer in self._cross_k]
        self._cross_v = [self._regroup(layer, old_groups, rows) for layer in self._cross_v]
        self._proj = [{name: p.rows(rows) for name, p in proj.items()} for proj in self._proj]
        self._lengths = [self._lengths[row] for row in rows]
        self.order = [self.order[row] for row in rows]
        self._keys = keys

    @staticmethod
    def _regroup(per_group: list[Tensor], groups: list[_Group], rows: list[int]) -> list[Tensor]:
        kept: list[Tensor] = []
        for group, cache in zip(groups, per_group, strict=True):
            local = [row - group.start for row in rows if group.start <= row < group.end]
            if local:
                kept.append(cache.index_select(0, torch.tensor(local, device=cache.device)))
        return kept

    def _forward(self, tokens: Tensor, prefix_group: _Group | None) -> Tensor:
        """Runs `tokens` ([rows, new]) through the decoder layers; `prefix_group`: the prefix
        pass of that group (else one step of every row). Returns hidden states [rows, new, d]."""
        decoder = self._decoder
        groups = [prefix_group] if prefix_group is not None else self._groups()
        first = 0 if prefix_group is None else prefix_group.start
        rows = slice(first, first + tokens.shape[0])
        positions = self._positions(groups, tokens.shape[1])
        hidden: Tensor = decoder.embed_tokens(tokens) + decoder.embed_positions.weight[positions]
        for index, (layer, proj) in enumerate(zip(decoder.layers, self._proj, strict=True)):
            p = proj if prefix_group is None else _rows(proj, rows)
            hidden = hidden + self._self_attention(layer, p, hidden, index, groups, first)
            hidden = hidden + self._cross_attention(layer, p, hidden, index, groups, first)
            ffn = layer.activation_fn(p["fc1"](layer.final_layer_norm(hidden)))
            hidden = hidden + p["fc2"](ffn)
        return hidden

    def _positions(self, groups: list[_Group], new: int) -> Tensor:
        """[rows, new] position of every new token (each group continues its own cache)."""
        starts = torch.tensor(
            [g.length for g in groups for _ in range(g.end - g.start)], device=self._device
        )
        return starts[:, None] + torch.arange(new, device=self._device)[None]

    def _self_attention(
        self,
        layer: Any,
        proj: dict[str, Projection],
        hidden: Tensor,
        index: int,
        groups: list[_Group],
        first: int,
    ) -> Tensor:
        q, k, v = proj["self_qkv"](layer.self_attn_layer_norm(hidden)).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        new = hidden.shape[1]
        outputs = []
        for group in groups:
            local = slice(group.start - first, group.end - first)
            end = group.length + new
            cache_k = self._self_k[index][group.start : group.end]
            cache_v = self._self_v[index][group.start : group.end]
            cache_k[:, :, group.length : end] = k[local]
            cache_v[:, :, group.length : end] = v[local]
            outputs.append(
                functional.scaled_dot_product_attention(
                    q[local],
                    cache_k[:, :, :end],
                    cache_v[:, :, :end],
                    is_causal=new > 1,
                    scale=self._scaling,
                )
            )
        return proj["self_out"](self._merge(torch.cat(outputs)))

    def _cross_attention(
        self,
        layer: Any,
        proj: dict[str, Projection],
        hidden: Tensor,
        index: int,
        groups: list[_Group],
        first: int,
    ) -> Tensor:
        q = self._split(proj["cross_q"](layer.encoder_attn_layer_norm(hidden)))
        all_groups = self._groups()
        outputs = []
        for group in groups:
            local = slice(group.start - first, group.end - first)
            position = next(i for i, g in enumerate(all_groups) if g.start == group.start)
            outputs.append(
                functional.scaled_dot_product_attention(
                    q[local],
                    self._cross_k[index][position],
                    self._cross_v[index][position],
                    scale=self._scaling,
                )
            )
        return proj["cross_out"](self._merge(torch.cat(outputs)))

    def _split(self, x: Tensor) -> Tensor:
        """[rows, tokens, d_model] -> [rows, heads, tokens, head_dim]"""
        rows, tokens, d_model = x.shape
        return x.view(rows, tokens, self._heads, d_model // self._heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        rows, heads, tokens, head_dim = x.shape
        merged: Tensor = x.transpose(1, 2).reshape(rows, tokens, heads * head_dim)
        return merged


def _rows(proj: dict[str, Projection], rows: slice) -> dict[str, Projection]:
    """The projections restricted to a contiguous range of rows (a group's prefix pass)."""
    index = list(range(rows.start, rows.stop))
    return {name: p.rows(index) for name, p in proj.items()}
