"""The adapter file: LoRA factors in safetensors, with what they fit in the header metadata.

Files are untrusted input when imported: `load_adapter` parses with safetensors (no pickle),
and `check_compatible` refuses anything that does not fit the served base model exactly.
"""

import json
import math
from dataclasses import dataclass, field
from typing import cast, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from app.engine.encoder import EncoderWindow
from app.engine.errors import EngineError
from app.engine.lora import LoraLinear

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterFileError",
    "AdapterWeights",
    "check_compatible",
    "dump_adapter",
    "load_adapter",
]

ADAPTER_FORMAT = "pqm-lora/1"


class AdapterFileError(EngineError):
    """An adapter file is malformed or does not fit the served base model."""


@dataclass(frozen=True, slots=True)
class AdapterWeights:
    tensors: dict[str, Tensor]
    """`{module}.lora_A` [rank, in] and `{module}.lora_B` [out, rank]."""
    rank: int
    alpha: float
    base_fingerprint: str
    encoder_window: EncoderWindow = "full"
    method: str = "lora"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def target_modules(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[0] for name in self.tensors})

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors.values())


def dump_adapter(adapter: AdapterWeights) -> bytes:
    metadata = {
        **adapter.extra,
        "format": ADAPTER_FORMAT,
        "method": adapter.method,
        "rank": str(adapter.rank),
        "alpha": repr(adapter.alpha),
        "base_fingerprint": adapter.base_fingerprint,
        "encoder_window": adapter.encoder_window,
        "target_modules": json.dumps(adapter.target_modules),
    }
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in adapter.tensors.items()}
    data: bytes = save_safetensors(tensors, metadata=metadata)
    return data


def load_adapter(data: bytes) -> AdapterWeights:
    try:
        tensors = load_safetensors(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"not a safetensors file: {exc}") from exc
    if metadata.get("format") != ADAPTER_FORMAT:
        raise AdapterFileError(f"metadata 'format' must be {ADAPTER_FORMAT!r}")
    try:
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
        fingerprint = metadata["base_fingerprint"]
        window = metadata.get("encoder_window", "full")
    except (KeyError, ValueError) as exc:
        raise AdapterFileError(f"metadata is missing or malformed: {exc}") from exc
    if window not in get_args(EncoderWindow):
        raise AdapterFileError(f"unknown encoder_window {window!r}")
    encoder_window = cast(EncoderWindow, window)
    if rank < 1 or not math.isfinite(alpha):
        raise AdapterFileError("rank must be >= 1 and alpha finite")
    known = {"format", "method", "rank", "alpha", "base_fingerprint", "encoder_window"}
    return AdapterWeights(
        tensors=dict(tensors),
        rank=rank,
        alpha=alpha,
        base_fingerprint=fingerprint,
        encoder_window=encoder_window,
        method=metadata.get("method", "lora"),
        extra={k: v for k, v in metadata.items() if k not in known | {"target_modules"}},
    )


def _metadata(data: bytes) -> dict[str, str]:
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    metadata = header.get("__metadata__") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata must map strings to strings")
    return dict(metadata)


def check_compatible(
    adapter: AdapterWeights, fingerprint: str, layers: dict[str, LoraLinear]
) -> None:
    """Raises `AdapterFileError` unless every tensor fits a layer of this exact base model."""
    if adapter.base_fingerprint != fingerprint:
        raise AdapterFileError(
            "adapter was trained for a different base model "
            f"(fingerprint {adapter.base_fingerprint[:12]}…, served {fingerprint[:12]}…)"
        )
    if not adapter.tensors:
        raise AdapterFileError("adapter holds no tensors")
    for name, tensor in adapter.tensors.items():
        module, _, kind = name.rpartition(".")
        layer = layers.get(module)
        if layer is None or kind not in ("lora_A", "lora_B"):
            raise AdapterFileError(f"tensor {name!r} matches no adaptable layer of the base model")
        expected = (
            (adapter.rank, layer.in_features)
            if kind == "lora_A"
            else (layer.out_features, adapter.rank)
        )
        if tuple(tensor.shape) != expected:
            raise AdapterFileError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        if tensor.dtype != torch.float32:
            raise AdapterFileError(f"tensor {name!r} must be float32, not {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"tensor {name!r} holds NaN or infinite values")
        partner = f"{module}.lora_B" if kind == "lora_A" else f"{module}.lora_A"
        if partner not in adapter.tensors:
            raise AdapterFileError(f"tensor {name!r} has no matching {partner!r}")
