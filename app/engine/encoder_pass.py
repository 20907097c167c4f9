"""Whisper's encoder for serving: one window of one request at a time, with its adapter.

The encoder is compute-bound (hundreds to thousands of frames per window), so batching windows
of different requests buys nothing, while encoding each alone keeps its output independent of
whatever else is in flight. The base weights are dequantised into compute weights once while
the engine is busy (`EncoderWeights`); a request's adapter adds its low-rank update on the
frames (`x A B`, a few percent of the encoder's arithmetic) rather than being merged into a
copy of every weight, which would allocate tens of megabytes per request. Training encodes
through the modules instead (`encoder.encode`).
"""

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from app.engine.projections import (
    BaseWeights,
    Factors,
    Projection,
    fused,
    fused_factors,
    slot_factors,
)

__all__ = ["EncoderWeights", "encode_window"]


class EncoderWeights:
    """The encoder's compute weights: every projection dequantised (q, k, v stacked), the
    convolutions cast, in the compute dtype."""

    def __init__(self, encoder: Any, dtype: torch.dtype) -> None:
        self.encoder = encoder
        self.dtype = dtype
        self.conv = [_conv_weights(encoder.conv1, dtype), _conv_weights(encoder.conv2, dtype)]
        self.layers = [_layer_weights(layer, dtype) for layer in encoder.layers]


def _conv_weights(conv: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    bias = None if conv.bias is None else conv.bias.detach().to(dtype)
    return conv.weight.detach().to(dtype), bias


def _layer_weights(layer: Any, dtype: torch.dtype) -> dict[str, Projection]:
    attention = layer.self_attn
    qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
    return {
        "qkv": Projection.build(fused([BaseWeights.of(m) for m in qkv]), dtype),
        "out_proj": Projection.build(BaseWeights.of(attention.out_proj), dtype),
        "fc1": Projection.build(BaseWeights.of(layer.fc1), dtype),
        "fc2": Projection.build(BaseWeights.of(layer.fc2), dtype),
    }


def _layer_factors(layer: Any, slot: int) -> dict[str, Factors | None]:
    attention = layer.self_attn
    qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
    return {
        "qkv": fused_factors([slot_factors(m, slot) for m in qkv], [m.out_features for m in qkv]),
        "out_proj": slot_factors(attention.out_proj, slot),
        "fc1": slot_factors(layer.fc1, slot),
        "fc2": slot_factors(layer.fc2, slot),
    }


def encode_window(weights: EncoderWeights, mel: Tensor, slot: int) -> Tensor:
    """[n_mels, frames] -> [frames // 2, d_model] (float32), with bank `slot`'s adapter."""
    encoder, dtype = weights.encoder, weights.dtype
    hidden = mel[None].to(dtype)
    for conv, (weight, bias) in zip((encoder.conv1, encoder.conv2), weights.conv, strict=True):
        hidden = functional.gelu(
            functional.conv1d(hidden, weight, bias, conv.stride, conv.padding, conv.dilation)
        )
    hidden = hidden.permute(0, 2, 1).float()  # [1, positions, d_model]
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer, projections in zip(encoder.layers, weights.layers, strict=True):
        hidden = _layer(layer, projections, _layer_factors(layer, slot), hidden, dtype)
    output: Tensor = encoder.layer_norm(hidden)[0]
    return output


def _layer(
    layer: Any,
    projections: dict[str, Projection],
    factors: dict[str, Factors | None],
    hidden: Tensor,
    dtype: torch.dtype,
) -> Tensor:
    def project(name: str, x: Tensor) -> Tensor:
        own = factors[name]
        return projections[name](x, chunked=False, lora=None if own is None else {0: own})

    attention = layer.self_attn
    heads = attention.num_heads
    q, k, v = project("qkv", layer.self_attn_layer_norm(hidden)).chunk(3, dim=-1)
    attended = functional.scaled_dot_product_attention(
        _split(q, heads, dtype),
        _split(k, heads, dtype),
        _split(v, heads, dtype),
        scale=attention.scaling,
    )
    hidden = hidden + project("out_proj", _merge(attended))
    ffn = layer.activation_fn(project("fc1", layer.final_layer_norm(hidden)))
    return hidden + project("fc2", ffn)


def _split(x: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """[batch, tokens, d_model] -> [batch, heads, tokens, head_dim] in `dtype`"""
    batch, tokens, d_model = x.shape
    return x.to(dtype).view(batch, tokens, heads, d_model // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """[batch, heads, tokens, head_dim] -> [batch, tokens, d_model] float32"""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim).float()
