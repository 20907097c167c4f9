"""Whisper's encoder for serving: one window of one request at a time, with its adapter.

The encoder is compute-bound (hundreds to thousands of frames per window), so batching windows
of different requests buys nothing, while encoding each alone keeps its output independent of
whatever else is in flight. The base weights are dequantised into compute weights once while
the engine is busy (`EncoderWeights`); a request's adapter is merged into them layer by layer
(`W + B^T A^T`, one small matmul each: a fixed cost, far below applying `x A B` to every
frame). Training encodes through the modules instead (`encoder.encode`).
"""

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from app.engine.adaptation.lora.bank import Factors
from app.engine.adaptation.rows import BankSlot, RowAdapter
from app.engine.projections import BaseWeights, Projection, fused, fused_factors, slot_factors

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


def _layer_factors(
    layer: Any, index: int, adapter: RowAdapter, attention_input: Tensor
) -> dict[str, Factors | None]:
    """The request's factors for one layer: from its bank slot (LoRA), or mixed for this
    request from the layer's input (SAML)."""
    attention = layer.self_attn
    qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
    widths = [m.out_features for m in qkv]
    if isinstance(adapter, BankSlot):
        slot = adapter.slot
        return {
            "qkv": fused_factors([slot_factors(m, slot) for m in qkv], widths),
            "out_proj": slot_factors(attention.out_proj, slot),
            "fc1": slot_factors(layer.fc1, slot),
            "fc2": slot_factors(layer.fc2, slot),
        }
    mixed = adapter.routing.factors("encoder_self", index, attention_input)
    return {
        "qkv": fused_factors([mixed["q_proj"], mixed["k_proj"], mixed["v_proj"]], widths),
        "out_proj": mixed["out_proj"],
        "fc1": None,
        "fc2": None,
    }


def encode_window(weights: EncoderWeights, mel: Tensor, adapter: RowAdapter) -> Tensor:
    """[n_mels, frames] -> [frames // 2, d_model] (float32), with the row's adapter."""
    encoder, dtype = weights.encoder, weights.dtype
    hidden = mel[None].to(dtype)
    for conv, (weight, bias) in zip((encoder.conv1, encoder.conv2), weights.conv, strict=True):
        hidden = functional.gelu(
            functional.conv1d(hidden, weight, bias, conv.stride, conv.padding, conv.dilation)
        )
    hidden = hidden.permute(0, 2, 1).float()  # [1, positions, d_model]
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for index, (layer, projections) in enumerate(zip(encoder.layers, weights.layers, strict=True)):
        hidden = _layer(layer, index, projections, adapter, hidden)
    output: Tensor = encoder.layer_norm(hidden)[0]
    return output


def _layer(
    layer: Any,
    index: int,
    projections: dict[str, Projection],
    adapter: RowAdapter,
    hidden: Tensor,
) -> Tensor:
    """One encoder layer. The residual stream stays float32; everything between two residual
    additions (attention, the activation) stays in the compute dtype, cast once."""
    attention = layer.self_attn
    heads = attention.num_heads
    attention_input = layer.self_attn_layer_norm(hidden)
    factors = _layer_factors(layer, index, adapter, attention_input)

    def project(name: str, x: Tensor) -> Tensor:
        return projections[name].in_compute_dtype(x, factors[name])

    qkv = project("qkv", attention_input)
    q, k, v = (_split(part, heads) for part in qkv.chunk(3, dim=-1))
    attended = functional.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
    hidden = hidden + project("out_proj", _merge(attended)).float()
    ffn = layer.activation_fn(project("fc1", layer.final_layer_norm(hidden)))
    return hidden + project("fc2", ffn).float()


def _split(x: Tensor, heads: int) -> Tensor:
    """[batch, tokens, d_model] -> [batch, heads, tokens, head_dim]"""
    batch, tokens, d_model = x.shape
    return x.view(batch, tokens, heads, d_model // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """[batch, heads, tokens, head_dim] -> [batch, tokens, d_model]"""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
