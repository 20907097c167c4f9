"""Whisper's decoder, run over a batch whose rows differ in prefix, audio length and adapter.

transformers' decoder assumes every row shares one prefix length and one encoder length, and
builds a cache object per call; a batch of independent requests needs neither assumption, and on
a CPU the per-step overhead matters. This runs the same modules (so the same weights, NF4 or not,
with the same LoRA layers) with:

* left-padded prefixes: positions counted per row, padded keys masked out;
* encoder outputs zero-padded to the longest row, padded frames masked out of cross-attention;
* a preallocated self-attention key/value cache, compacted when rows leave the batch;
* NF4 projections dequantised once per decode into a transient dense workspace, instead of
  once per token (bitsandbytes dequantises on every call). The same kernel then runs for a
  batch of one as for many, which keeps a request's transcript independent of its neighbours.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.lora import LoraLinear, LoraRouting

__all__ = ["DecoderPass", "dense_weights", "project", "routed"]

DenseWeights = dict[nn.Module, Tensor]


def dense_weights(modules: list[nn.Module]) -> DenseWeights:
    """Dense fp32 copies of the 4-bit weights among `modules` (plain linears need none)."""
    import bitsandbytes as bnb

    dense: DenseWeights = {}
    for module in modules:
        base = module.base if isinstance(module, LoraLinear) else module
        if not isinstance(base, bnb.nn.Linear4bit) or base in dense:
            continue
        state = base.weight.quant_state
        if state is None or getattr(state, "packing_format_for_cpu", False):
            continue  # bitsandbytes' own repacked CPU layout: leave it to the module
        weight = bnb.functional.dequantize_4bit(base.weight.data, state)
        dense[base] = weight.to(torch.float32)
    return dense


def project(module: nn.Module, x: Tensor, dense: DenseWeights) -> Tensor:
    """`module(x)`, through the dense workspace when it holds the module's weight."""
    base: Any = module.base if isinstance(module, LoraLinear) else module
    weight = dense.get(base)
    output = functional.linear(x, weight, base.bias) if weight is not None else base(x)
    return module.adapt(x, output) if isinstance(module, LoraLinear) else output


@dataclass(slots=True)
class _Cache:
    self_k: list[Tensor]  # per layer [batch, heads, max tokens, head_dim]
    self_v: list[Tensor]
    cross_k: list[Tensor]  # per layer [batch, heads, frames, head_dim]
    cross_v: list[Tensor]
    key_valid: Tensor  # [batch, max tokens]: False for left padding
    cross_valid: Tensor | None  # [batch, frames]; None when no row is padded
    pads: Tensor  # [batch] left padding of each row's prefix
    length: int = 0


class DecoderPass:
    """One batch decode: `start` with the prefixes, then `step` one token per row at a time."""

    def __init__(
        self,
        model: Any,
        routing: LoraRouting | None,
        encoded: list[Tensor],
        prefixes: list[list[int]],
        slots: list[int],
        max_new_tokens: int,
        pad_token: int,
    ) -> None:
        self._decoder = model.model.decoder
        self._proj_out = model.proj_out
        self._routing = routing
        self._device = encoded[0].device
        self._slots = torch.tensor(slots, dtype=torch.long, device=self._device)
        layers = list(self._decoder.layers)
        self._heads = layers[0].self_attn.num_heads
        self._dense = dense_weights([m for layer in layers for m in layer.modules()])
        self._prefix_len = max(len(prefix) for prefix in prefixes)
        self._input = _left_padded(prefixes, self._prefix_len, pad_token).to(self._device)
        self._cache = self._new_cache(encoded, prefixes, max_new_tokens)

    def _new_cache(
        self, encoded: list[Tensor], prefixes: list[list[int]], max_new_tokens: int
    ) -> _Cache:
        device = encoded[0].device
        frames = [e.shape[0] for e in encoded]
        longest = max(frames)
        batch = torch.zeros(len(encoded), longest, encoded[0].shape[1], device=device)
        for row, e in enumerate(encoded):
            batch[row, : e.shape[0]] = e
        cross_valid = None
        if min(frames) != longest:
            cross_valid = (
                torch.arange(longest, device=device)[None]
                < torch.tensor(frames, device=device)[:, None]
            )
        pads = torch.tensor([self._prefix_len - len(p) for p in prefixes], device=device)
        capacity = self._prefix_len + max_new_tokens
        key_valid = torch.arange(capacity, device=device)[None] >= pads[:, None]
        cross_k, cross_v = [], []
        with self._routed():
            for layer in self._decoder.layers:
                attention = layer.encoder_attn
                cross_k.append(self._split(project(attention.k_proj, batch, self._dense)))
                cross_v.append(self._split(project(attention.v_proj, batch, self._dense)))
        d_model = encoded[0].shape[1]
        shape = (len(encoded), self._heads, capacity, d_model // self._heads)
        count = len(cross_k)
        return _Cache(
            self_k=[torch.zeros(shape, device=device) for _ in range(count)],
            self_v=[torch.zeros(shape, device=device) for _ in range(count)],
            cross_k=cross_k,
            cross_v=cross_v,
            key_valid=key_valid,
            cross_valid=cross_valid,
            pads=pads,
        )

    @property
    def prefix_length(self) -> int:
        return self._prefix_len

    @property
    def pads(self) -> Tensor:
        return self._cache.pads

    def start(self, positions: Tensor) -> Tensor:
        """Runs the prefixes; returns logits at `positions` ([batch, n] indices into the padded
        prefix) as [batch, n, vocab]."""
        tokens = self._input
        length = tokens.shape[1]
        cache = self._cache
        causal = torch.ones(length, length, dtype=torch.bool, device=self._device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=self._device)
        mask = (causal[None] & cache.key_valid[:, None, :length]) | diagonal
        return self._forward(tokens, mask[:, None], positions)

    def step(self, tokens: Tensor) -> Tensor:
        """Feeds one token per row ([batch]); returns the next logits [batch, vocab]."""
        cache = self._cache
        length = cache.length + 1
        mask = None
        if not bool(cache.key_valid[:, :length].all()):
            mask = cache.key_valid[:, None, None, :length]
        last = torch.zeros(tokens.shape[0], 1, dtype=torch.long, device=self._device)
        return self._forward(tokens[:, None], mask, last)[:, 0]

    def keep(self, rows: Tensor) -> None:
        """Drops every row not in `rows` (indices into the current batch)."""
        cache = self._cache
        for tensors in (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v):
            tensors[:] = [t.index_select(0, rows) for t in tensors]
        cache.key_valid = cache.key_valid.index_select(0, rows)
        cache.pads = cache.pads.index_select(0, rows)
        if cache.cross_valid is not None:
            cache.cross_valid = cache.cross_valid.index_select(0, rows)
        self._slots = self._slots.index_select(0, rows)

    def _forward(self, tokens: Tensor, self_mask: Tensor | None, wanted: Tensor) -> Tensor:
        cache = self._cache
        start, new = cache.length, tokens.shape[1]
        steps = torch.arange(start, start + new, device=self._device)
        positions = (steps[None] - cache.pads[:, None]).clamp(min=0)
        decoder = self._decoder
        hidden = decoder.embed_tokens(tokens) + decoder.embed_positions.weight[positions]
        cross_mask = None if cache.cross_valid is None else cache.cross_valid[:, None, None]
        with self._routed():
            for index, layer in enumerate(decoder.layers):
                hidden = hidden + self._self_attention(layer, hidden, index, self_mask)
                hidden = hidden + self._cross_attention(layer, hidden, index, cross_mask)
                hidden = hidden + self._feed_forward(layer, hidden)
            cache.length += new
            hidden = decoder.layer_norm(hidden.gather(1, _expand(wanted, hidden.shape[-1])))
            logits: Tensor = self._proj_out(hidden)
        return logits

    def _self_attention(
        self, layer: Any, hidden: Tensor, index: int, mask: Tensor | None
    ) -> Tensor:
        attention = layer.self_attn
        cache = self._cache
        h = layer.self_attn_layer_norm(hidden)
        start, end = cache.length, cache.length + h.shape[1]
        query = self._split(project(attention.q_proj, h, self._dense) * attention.scaling)
        cache.self_k[index][:, :, start:end] = self._split(
            project(attention.k_proj, h, self._dense)
        )
        cache.self_v[index][:, :, start:end] = self._split(
            project(attention.v_proj, h, self._dense)
        )
        keys = cache.self_k[index][:, :, :end]
        values = cache.self_v[index][:, :, :end]
        output = functional.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=1.0
        )
        return project(attention.out_proj, self._merge(output), self._dense)

    def _cross_attention(
        self, layer: Any, hidden: Tensor, index: int, mask: Tensor | None
    ) -> Tensor:
        attention = layer.encoder_attn
        h = layer.encoder_attn_layer_norm(hidden)
        query = self._split(project(attention.q_proj, h, self._dense) * attention.scaling)
        output = functional.scaled_dot_product_attention(
            query, self._cache.cross_k[index], self._cache.cross_v[index], attn_mask=mask, scale=1.0
        )
        return project(attention.out_proj, self._merge(output), self._dense)

    def _feed_forward(self, layer: Any, hidden: Tensor) -> Tensor:
        h = layer.final_layer_norm(hidden)
        h = layer.activation_fn(project(layer.fc1, h, self._dense))
        return project(layer.fc2, h, self._dense)

    def _split(self, x: Tensor) -> Tensor:
        """[batch, tokens, d_model] -> [batch, heads, tokens, head_dim]"""
        batch, tokens, d_model = x.shape
        return x.view(batch, tokens, self._heads, d_model // self._heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def _routed(self) -> "_Routed":
        return _Routed(self._routing, self._slots)


class _Routed:
    """Points the LoRA layers at this batch's slots for the duration of a forward pass."""

    def __init__(self, routing: LoraRouting | None, slots: Tensor) -> None:
        self._routing = routing
        self._slots = slots if bool((slots != 0).any()) else None

    def __enter__(self) -> None:
        if self._routing is not None:
            self._routing.slots = self._slots

    def __exit__(self, *_: object) -> None:
        if self._routing is not None:
            self._routing.slots = None


def routed(routing: LoraRouting | None, slots: list[int], device: torch.device) -> _Routed:
    """Routes the LoRA layers to `slots` (one per batch row) inside the block."""
    return _Routed(routing, torch.tensor(slots, dtype=torch.long, device=device))


def _left_padded(prefixes: list[list[int]], length: int, pad: int) -> Tensor:
    rows = [[pad] * (length - len(prefix)) + prefix for prefix in prefixes]
    return torch.tensor(rows, dtype=torch.long)


def _expand(indices: Tensor, width: int) -> Tensor:
    """[batch, n] positions -> gather index [batch, n, width]"""
    return indices[:, :, None].expand(-1, -1, width)
