"""Whisper's encoder for serving: one window of one request at a time, its adapter merged in.

The encoder is compute-bound (hundreds to thousands of frames per window), so batching windows
of different requests buys nothing, while encoding each alone keeps its output independent of
whatever else is in flight. The base weights are dequantised once per round (`EncoderWeights`)
and each request's adapter is folded into them (`W + B A`): serving an adapter costs the
encoder nothing per frame. Training encodes through the modules instead (`encoder.encode`).
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.projections import BaseWeights, Projection, fused, merged_update

__all__ = ["EncoderWeights", "encode_window"]


class EncoderWeights:
    """The encoder's dense base weights (float32), computed on first use and kept for a round."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self._layers: list[dict[str, BaseWeights]] | None = None

    @property
    def encoder(self) -> Any:
        return self._encoder

    def layers(self) -> list[dict[str, BaseWeights]]:
        if self._layers is None:
            self._layers = [_layer_weights(layer) for layer in self._encoder.layers]
        return self._layers


def _layer_weights(layer: Any) -> dict[str, BaseWeights]:
    attention = layer.self_attn
    return {
        "qkv": fused(
            [
                BaseWeights.of(attention.q_proj),
                BaseWeights.of(attention.k_proj),
                BaseWeights.of(attention.v_proj),
            ]
        ),
        "out_proj": BaseWeights.of(attention.out_proj),
        "fc1": BaseWeights.of(layer.fc1),
        "fc2": BaseWeights.of(layer.fc2),
    }


def encode_window(weights: EncoderWeights, mel: Tensor, slot: int, dtype: torch.dtype) -> Tensor:
    """[n_mels, frames] -> [frames // 2, d_model] (float32), with bank `slot`'s adapter."""
    encoder = weights.encoder
    x = mel[None].to(dtype)
    hidden = functional.gelu(_conv(encoder.conv1, x, dtype))
    hidden = functional.gelu(_conv(encoder.conv2, hidden, dtype))
    hidden = hidden.permute(0, 2, 1).float()  # [1, positions, d_model]
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer, base in zip(encoder.layers, weights.layers(), strict=True):
        hidden = _layer(layer, base, hidden, slot, dtype)
    output: Tensor = encoder.layer_norm(hidden)[0]
    return output


def _conv(conv: nn.Conv1d, x: Tensor, dtype: torch.dtype) -> Tensor:
    bias = None if conv.bias is None else conv.bias.to(dtype)
    return functional.conv1d(
        x, conv.weight.to(dtype), bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def _layer(
    layer: Any, base: dict[str, BaseWeights], hidden: Tensor, slot: int, dtype: torch.dtype
) -> Tensor:
    attention = layer.self_attn
    qkv = Projection.build(base["qkv"], dtype, _merged_qkv(attention, slot))
    out = _projection(base["out_proj"], attention.out_proj, slot, dtype)
    fc1 = _projection(base["fc1"], layer.fc1, slot, dtype)
    fc2 = _projection(base["fc2"], layer.fc2, slot, dtype)

    heads = attention.num_heads
    q, k, v = qkv(layer.self_attn_layer_norm(hidden), chunked=False).chunk(3, dim=-1)
    attended = functional.scaled_dot_product_attention(
        _split(q, heads, dtype),
        _split(k, heads, dtype),
        _split(v, heads, dtype),
        scale=attention.scaling,
    )
    hidden = hidden + out(_merge(attended), chunked=False)
    ffn = layer.activation_fn(fc1(layer.final_layer_norm(hidden), chunked=False))
    hidden = hidden + fc2(ffn, chunked=False)
    return hidden


def _projection(base: BaseWeights, module: nn.Module, slot: int, dtype: torch.dtype) -> Projection:
    return Projection.build(base, dtype, merged_update(module, slot))


def _merged_qkv(attention: Any, slot: int) -> Tensor | None:
    parts = [merged_update(m, slot) for m in (attention.q_proj, attention.k_proj, attention.v_proj)]
    if all(part is None for part in parts):
        return None
    modules = (attention.q_proj, attention.k_proj, attention.v_proj)
    device = next(part for part in parts if part is not None).device
    return torch.cat(
        [
            part if part is not None else torch.zeros(m.out_features, m.in_features, device=device)
            for part, m in zip(parts, modules, strict=True)
        ]
    )


def _split(x: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """[batch, tokens, d_model] -> [batch, heads, tokens, head_dim] in `dtype`"""
    batch, tokens, d_model = x.shape
    return x.to(dtype).view(batch, tokens, heads, d_model // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """[batch, heads, tokens, head_dim] -> [batch, tokens, d_model] float32"""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim).float()
