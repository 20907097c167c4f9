"""The adapter file: LoRA factors in safetensors, with what they fit in the header metadata.

Files are untrusted input when imported: `load_adapter` reads the safetensors format (no
pickle; see `tensor_file`) and checks the file on its own terms; `check_compatible` refuses
anything that does not fit the served base model exactly. `dump_adapter` is
byte-reproducible: the same weights always give the same file.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from app.engine.adaptation.file_metadata import (
    MAX_EXTRA_ENTRIES,
    MAX_EXTRA_VALUE_CHARS,
    AdapterFileError,
    canonical_header,
    check_target_modules,
    encoder_window,
    extra_metadata,
    positive_number,
    required,
    whole_number,
)
from app.engine.adaptation.lora.config import METHOD
from app.engine.encoder import EncoderWindow
from app.engine.tensor_file import TensorFile, TensorFileError, read_header

__all__ = [
    "ADAPTER_FORMAT",
    "MAX_EXTRA_ENTRIES",
    "MAX_EXTRA_VALUE_CHARS",
    "MAX_RANK",
    "AdaptableLayer",
    "AdapterFileError",
    "AdapterWeights",
    "BaseModelMismatchError",
    "check_bounds",
    "check_compatible",
    "dump_adapter",
    "load_adapter",
    "read_adapter_header",
    "update_ratios",
]

ADAPTER_FORMAT = "pqm-lora/1"
MAX_RANK = 256
MAX_SCALE = 64.0
"""Largest `alpha / rank`: trained adapters use 2, PEFT's usual settings at most 32."""
MAX_UPDATE_RATIO = 1.0
"""Largest `||scale * B A||_F / ||W||_F` of any module: how far an adapter may move a weight,
relative to the weight (trained adapters measure far below: docs/benchmarks/adapter_bounds.json).
What keeps a finite but huge adapter from driving a decode to inf or NaN."""
_KNOWN_METADATA = frozenset(
    {"format", "method", "rank", "alpha", "base_fingerprint", "encoder_window", "target_modules"}
)
_FACTORS = ("lora_A", "lora_B")


class AdaptableLayer(Protocol):
    """What `check_compatible` needs of a layer an adapter may adapt (`layer.LoraLinear`)."""

    in_features: int
    out_features: int


class BaseModelMismatchError(AdapterFileError):
    """The adapter was trained for another base model than the one served."""


@dataclass(frozen=True, slots=True)
class AdapterWeights:
    tensors: dict[str, Tensor]
    """`{module}.lora_A` [rank, in] and `{module}.lora_B` [out, rank]."""
    rank: int
    alpha: float
    base_fingerprint: str
    encoder_window: EncoderWindow = "full"
    method: str = METHOD
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
    """The safetensors file; identical weights and metadata always give identical bytes."""
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
    tensors = {
        name: adapter.tensors[name].detach().float().cpu().contiguous()
        for name in sorted(adapter.tensors)
    }
    return canonical_header(save_safetensors(tensors, metadata=metadata))


def load_adapter(data: bytes | TensorFile) -> AdapterWeights:
    """Parses and checks an adapter file on its own terms (not yet against a base model).

    `data` may be the file with its header already checked by `read_adapter_header` (off the
    inference thread): what is left is torch work in proportion to the tensors' data."""
    file = data if isinstance(data, TensorFile) else read_adapter_header(data)
    metadata = file.metadata
    if metadata.get("format") != ADAPTER_FORMAT:
        raise AdapterFileError(f"metadata 'format' must be {ADAPTER_FORMAT!r}")
    method = metadata.get("method", METHOD)
    if method != METHOD:
        raise AdapterFileError(f"unknown method {method!r} (supported: {METHOD})")
    rank = whole_number(metadata, "rank", MAX_RANK)
    alpha = positive_number(metadata, "alpha")
    tensors = file.tensors()
    _check_factor_ranks(tensors, rank)
    adapter = AdapterWeights(
        tensors=tensors,
        rank=rank,
        alpha=alpha,
        base_fingerprint=required(metadata, "base_fingerprint"),
        encoder_window=encoder_window(metadata.get("encoder_window", "full")),
        method=method,
        extra=extra_metadata(metadata, _KNOWN_METADATA),
    )
    check_target_modules(metadata, adapter.target_modules)
    return adapter


def read_adapter_header(data: bytes) -> TensorFile:
    """The file's safetensors header, checked in plain Python (no torch, bounded work): cheap
    to call off the inference thread, before `load_adapter`."""
    try:
        return read_header(data)
    except TensorFileError as exc:
        raise AdapterFileError(f"not a safetensors file: {exc}") from exc


def _check_factor_ranks(tensors: dict[str, Tensor], rank: int) -> None:
    """Every factor is a matrix whose rank side agrees with the metadata's rank."""
    for name, tensor in tensors.items():
        if tensor.dim() != 2:
            raise AdapterFileError(
                f"tensor {name!r} must be a matrix, not of shape {tuple(tensor.shape)}"
            )
        kind = name.rpartition(".")[2]
        if kind not in _FACTORS:
            continue
        found = tensor.shape[0] if kind == "lora_A" else tensor.shape[1]
        if found != rank:
            raise AdapterFileError(
                f"tensor {name!r} has rank {found}, but metadata 'rank' is {rank}"
            )


def check_compatible(
    adapter: AdapterWeights, fingerprint: str, layers: Mapping[str, AdaptableLayer]
) -> None:
    """Raises `AdapterFileError` unless every tensor fits a layer of this exact base model."""
    if adapter.base_fingerprint != fingerprint:
        raise BaseModelMismatchError(
            "adapter was trained for a different base model "
            f"(fingerprint {adapter.base_fingerprint[:12]}…, served {fingerprint[:12]}…)"
        )
    if adapter.method != METHOD:
        raise AdapterFileError(f"unknown method {adapter.method!r}")
    if not adapter.tensors:
        raise AdapterFileError("adapter holds no tensors")
    for name in sorted(adapter.tensors):  # the first problem reported is always the same one
        _check_tensor(adapter, name, adapter.tensors[name], layers)


def _check_tensor(
    adapter: AdapterWeights, name: str, tensor: Tensor, layers: Mapping[str, AdaptableLayer]
) -> None:
    module, _, kind = name.rpartition(".")
    layer = layers.get(module)
    if layer is None or kind not in _FACTORS:
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


def update_ratios(adapter: AdapterWeights, base_norms: Mapping[str, float]) -> dict[str, float]:
    """Per adapted module, `||scale * B A||_F / ||W||_F` (`base_norms`: `||W||_F` by module).

    `||B A||_F^2 = trace((B^T B)(A A^T))`: two r x r Gram matrices instead of the [out, in]
    product, in float64 so that huge factors give a huge ratio (or inf), never NaN."""
    ratios: dict[str, float] = {}
    for module in adapter.target_modules:
        a = adapter.tensors[f"{module}.lora_A"].double()  # [rank, in]
        b = adapter.tensors[f"{module}.lora_B"].double()  # [out, rank]
        squared = float(((b.T @ b) * (a @ a.T)).sum())  # both Grams symmetric: the trace
        norm = abs(adapter.scale) * math.sqrt(max(squared, 0.0))
        base = base_norms[module]
        ratios[module] = norm / base if base > 0 else math.inf
    return ratios


def check_bounds(adapter: AdapterWeights, base_norms: Mapping[str, float]) -> None:
    """Raises `AdapterFileError` unless the adapter's updates stay within what any trained
    adapter needs: `alpha / rank` at most `MAX_SCALE`, each module's update at most
    `MAX_UPDATE_RATIO` times its base weight (Frobenius norms). Call after `check_compatible`."""
    if adapter.scale > MAX_SCALE:
        raise AdapterFileError(
            f"metadata 'alpha' / 'rank' is {adapter.scale:.3g}; at most {MAX_SCALE:g} is allowed"
        )
    for module, ratio in sorted(update_ratios(adapter, base_norms).items()):
        if not ratio <= MAX_UPDATE_RATIO:
            raise AdapterFileError(
                f"the update of {module!r} is {ratio:.3g} times the norm of the weight it "
                f"adapts; at most {MAX_UPDATE_RATIO:g} is allowed"
            )
