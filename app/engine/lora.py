"""Low-rank adapters (LoRA) on Whisper's projections, the same module for training and serving.

`LoraLinear` wraps a frozen base projection (fp32, int8 or NF4) and adds a low-rank update:

* in training, one adapter's trainable factors: `scale * B(A(x))`;
* in serving, a *bank* of resident adapters (`A[slots, in, r]`, `B[slots, r, out]`, the scale
  folded into B, zero-padded to the bank's rank, slot 0 all zeros). The serving passes
  (`encoder_pass`, `decoder_pass`) read the banks directly: row i of a batch gets
  `x_i @ A[s_i] @ B[s_i]`, so one forward pass serves requests with different adapters (or
  none) side by side.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "ATTENTION_TARGETS",
    "FFN_TARGETS",
    "LoraConfig",
    "LoraLinear",
    "inject_lora",
    "lora_modules",
    "lora_state_dict",
    "target_module_names",
]

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
FFN_TARGETS = ("fc1", "fc2")


@dataclass(frozen=True, slots=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ATTENTION_TARGETS
    """Projection names (last component of the module path) to adapt, everywhere they occur."""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, in_features: int, out_features: int) -> None:
        super().__init__()
        self.base = base
        self.in_features = in_features
        self.out_features = out_features
        self.lora_a: Tensor | None = None  # [rank, in_features] (training)
        self.lora_b: Tensor | None = None  # [out_features, rank] (training)
        self.scale = 0.0
        self.dropout: nn.Module = nn.Identity()
        self.bank_a: Tensor | None = None  # [slots, bank rank, in_features] (serving)
        self.bank_b: Tensor | None = None  # [slots, bank rank, out_features] (serving)
        self.bank_ranks: list[int] = []
        """The rank of each slot's adapter in this layer (0: none, or it does not adapt it)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.adapt(x, self.base(x))

    def adapt(self, x: Tensor, output: Tensor) -> Tensor:
        """Adds the trainable low-rank update for `x` to the base projection's `output`."""
        if self.lora_a is not None and self.lora_b is not None:
            update: Tensor = (self.dropout(x) @ self.lora_a.T) @ self.lora_b.T
            output = output + update * self.scale
        return output

    def init_trainable(self, config: LoraConfig, generator: torch.Generator) -> None:
        """Fresh trainable factors: A random (Kaiming-uniform), B zero, so training starts at the
        base model exactly."""
        device = _device_of(self.base)
        bound = 1.0 / (self.in_features**0.5)
        a = (torch.rand(config.rank, self.in_features, generator=generator) * 2 - 1) * bound
        self.lora_a = nn.Parameter(a.to(device))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, config.rank, device=device))
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def target_module_names(model: nn.Module, targets: Iterable[str]) -> list[str]:
    wanted = set(targets)
    return [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in wanted and hasattr(module, "in_features")
    ]


def inject_lora(model: nn.Module, targets: Iterable[str]) -> dict[str, LoraLinear]:
    """Wraps every targeted projection of `model` in a `LoraLinear` (idempotent)."""
    wrapped: dict[str, LoraLinear] = {}
    for name in target_module_names(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if isinstance(base, LoraLinear):
            wrapped[name] = base
            continue
        layer = LoraLinear(base, base.in_features, base.out_features)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def lora_state_dict(layers: Mapping[str, LoraLinear]) -> dict[str, Tensor]:
    """`{module}.lora_A` [rank, in] and `{module}.lora_B` [out, rank], detached fp32 copies."""
    state: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if layer.lora_a is None or layer.lora_b is None:
            continue
        state[f"{name}.lora_A"] = layer.lora_a.detach().float().cpu().contiguous()
        state[f"{name}.lora_B"] = layer.lora_b.detach().float().cpu().contiguous()
    return state
