"""What one served Whisper costs in memory, computed from its config: weights, adapter slots, KV.

Counted as the engine holds things (see `loading`, `adaptation.lora.bank`, `adaptation.saml`,
`decoder_pass`):
* NF4 weights: every linear layer but the output projection is 4-bit, two weights a byte, with
  one float32 absmax per block of 64 (no double quantisation). Convolutions, biases, layer
  norms, positions and the token embeddings (tied to the output projection) stay float32.
* Compute copies, held while the engine is busy: every projection and convolution dequantised
  into the compute dtype, and the output head converted to it.
* A LoRA slot: every projection any method may adapt (q, k, v, out, fc1, fc2 of every encoder
  and decoder layer, cross-attention too) holds A [rank, in] and B [rank, out] in float32,
  whether or not the adapter targets it; the bank's rank is the largest adapter's.
* A SAML slot: experts A [E, r, in] and B [E, out, r] on every attention projection, float32,
  and three routers (encoder self, decoder self, decoder cross).
* KV per row: decoder self-attention keys and values per token, and cross-attention keys and
  values over the encoder's frames.

No torch here: the arithmetic is checked against real allocations in the tests.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FLOAT32",
    "SlotCosts",
    "SlotSizing",
    "WhisperShape",
    "compute_copy_bytes",
    "kv_cross_bytes",
    "kv_row_bytes",
    "kv_token_bytes",
    "lora_slot_bytes",
    "nf4_weight_bytes",
    "saml_router_parameters",
    "saml_slot_bytes",
    "size_resident_slots",
]

FLOAT32 = 4
NF4_BLOCK = 64
"""As `loading.NF4_BLOCK_SIZE` (kept here so this module needs no torch)."""
_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_BIASED = ("q_proj", "v_proj", "out_proj")
"""Whisper's key projection has no bias."""


@dataclass(frozen=True, slots=True)
class WhisperShape:
    """The dimensions that decide a Whisper's memory."""

    name: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn: int
    vocab: int
    n_mels: int
    source_positions: int = 1500
    """Encoder frames of a 30 s window (after the stride-2 convolution)."""
    target_positions: int = 448
    """Decoder positions: the longest self-attention cache of a row."""

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> "WhisperShape":
        """From a transformers `WhisperConfig` as a dict (`config.json`, or `to_dict()`)."""
        if config["encoder_ffn_dim"] != config["decoder_ffn_dim"]:
            raise ValueError("encoder and decoder FFN widths differ")
        return cls(
            name=name,
            d_model=int(config["d_model"]),
            encoder_layers=int(config["encoder_layers"]),
            decoder_layers=int(config["decoder_layers"]),
            heads=int(config["decoder_attention_heads"]),
            ffn=int(config["decoder_ffn_dim"]),
            vocab=int(config["vocab_size"]),
            n_mels=int(config["num_mel_bins"]),
            source_positions=int(config["max_source_positions"]),
            target_positions=int(config["max_target_positions"]),
        )

    def projections(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer but the output projection, each layer's in turn."""
        d, ffn = self.d_model, self.ffn
        encoder = [(d, d)] * len(_ATTENTION) + [(d, ffn), (ffn, d)]
        decoder = [(d, d)] * (2 * len(_ATTENTION)) + [(d, ffn), (ffn, d)]
        return encoder * self.encoder_layers + decoder * self.decoder_layers

    def attention_projections(self) -> int:
        """Projections that carry SAML experts (all d x d): 4 per encoder layer, 8 per decoder."""
        return len(_ATTENTION) * (self.encoder_layers + 2 * self.decoder_layers)

    def float32_parameters(self) -> int:
        """Parameters that stay float32 under NF4 (the output projection is tied: counted once)."""
        d, ffn = self.d_model, self.ffn
        biases = len(_BIASED) * d
        encoder_layer = biases + ffn + d + 2 * 2 * d  # attention, fc1, fc2 biases; two norms
        decoder_layer = 2 * biases + ffn + d + 3 * 2 * d  # self + cross; three norms
        convolutions = (self.n_mels * d * 3 + d) + (d * d * 3 + d)
        return (
            self.encoder_layers * encoder_layer
            + self.decoder_layers * decoder_layer
            + convolutions
            + self.source_positions * d
            + 2 * 2 * d  # the encoder's and decoder's final layer norms
            + self.vocab * d
            + self.target_positions * d
        )


def nf4_weight_bytes(shape: WhisperShape) -> int:
    """The model's weights at rest under NF4 (what `loading.weight_bytes` reports)."""
    quantised = 0
    for fan_in, fan_out in shape.projections():
        weights = fan_in * fan_out
        quantised += -(-weights // 2) + -(-weights // NF4_BLOCK) * FLOAT32
    return quantised + shape.float32_parameters() * FLOAT32


def compute_copy_bytes(shape: WhisperShape, dtype_bytes: int) -> int:
    """The dequantised compute weights the passes hold while busy: every projection and
    convolution, and the output head when the compute dtype is not float32."""
    d = shape.d_model
    projections = sum(fan_in * fan_out for fan_in, fan_out in shape.projections())
    convolutions = shape.n_mels * d * 3 + d * d * 3
    head = shape.vocab * d if dtype_bytes != FLOAT32 else 0
    return (projections + convolutions + head) * dtype_bytes


def lora_slot_bytes(shape: WhisperShape, rank: int) -> int:
    """One slot of every LoRA bank at `rank`."""
    return FLOAT32 * rank * sum(fan_in + fan_out for fan_in, fan_out in shape.projections())


def saml_router_parameters(d_model: int, experts: int, *, cross: bool, depthwise: bool) -> int:
    """`saml.router.Router`: per summary a convolution (depthwise or full, kernel 3) and a
    pooling score; the gate over one summary, or two for cross-attention."""
    conv = (d_model * 3 if depthwise else d_model * d_model * 3) + d_model
    summary = conv + d_model + 1
    summaries = 2 if cross else 1
    return summaries * summary + summaries * d_model * experts + experts


def saml_slot_bytes(shape: WhisperShape, experts: int, rank: int, *, depthwise: bool = True) -> int:
    """One resident SAML adapter: its experts and its three routers."""
    d = shape.d_model
    expert_weights = shape.attention_projections() * experts * rank * 2 * d
    routers = 2 * saml_router_parameters(d, experts, cross=False, depthwise=depthwise)
    routers += saml_router_parameters(d, experts, cross=True, depthwise=depthwise)
    return FLOAT32 * (expert_weights + routers)


def kv_token_bytes(shape: WhisperShape, dtype_bytes: int) -> int:
    """Self-attention keys and values of one decoded token, every decoder layer."""
    return shape.decoder_layers * 2 * shape.d_model * dtype_bytes


def kv_cross_bytes(shape: WhisperShape, dtype_bytes: int) -> int:
    """Cross-attention keys and values of one row over the encoder's frames."""
    return kv_token_bytes(shape, dtype_bytes) * shape.source_positions


def kv_row_bytes(shape: WhisperShape, dtype_bytes: int) -> int:
    """One decoder row's keys and values at its longest: every position, every frame."""
    return kv_token_bytes(shape, dtype_bytes) * shape.target_positions + kv_cross_bytes(
        shape, dtype_bytes
    )


@dataclass(frozen=True, slots=True)
class SlotCosts:
    """What each resident slot and each batch row costs on the device."""

    per_slot: int
    """A LoRA slot and a SAML slot: both pools have the configured capacity."""
    per_row: int
    """KV of one decoder row at its longest."""
    working: int
    """Held while busy and not yet allocated when the pool is sized (the compute copies)."""

    @classmethod
    def of(
        cls,
        shape: WhisperShape,
        *,
        compute_bytes: int,
        kv_bytes: int,
        lora_rank: int,
        saml_experts: int,
        saml_rank: int,
    ) -> "SlotCosts":
        return cls(
            per_slot=lora_slot_bytes(shape, lora_rank)
            + saml_slot_bytes(shape, saml_experts, saml_rank),
            per_row=kv_row_bytes(shape, kv_bytes),
            working=compute_copy_bytes(shape, compute_bytes),
        )


@dataclass(frozen=True, slots=True)
class SlotSizing:
    """How to size the resident adapter pool when the settings leave it open."""

    rows: int
    """Decoder rows in flight at most (requests per batch times rows per request)."""
    minimum: int
    """A full batch of different speakers must fit."""
    host_slots: int = 16
    """On the CPU, where the banks live in host memory beside everything else: a fixed pool."""
    maximum: int = 1024
    """The LoRA pool is allocated whole when the first adapter arrives: more slots than anyone
    needs would only hold memory."""
    headroom: float = 0.1
    """Of the free memory, left for the allocator's fragmentation, activations and a bank
    that grows to a larger rank (old and new copies live at once)."""


def size_resident_slots(free_bytes: int, costs: SlotCosts, sizing: SlotSizing) -> int:
    """Adapter slots that fit in `free_bytes` (free device memory once the model is loaded)
    beside the working copies and the KV of a full batch; never below `sizing.minimum`."""
    budget = int(free_bytes * (1 - sizing.headroom)) - costs.working
    budget -= sizing.rows * costs.per_row
    slots = budget // costs.per_slot - 1  # slot 0, the base model, is allocated too
    return max(sizing.minimum, min(sizing.maximum, slots))
