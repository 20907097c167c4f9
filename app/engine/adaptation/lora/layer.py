"""A projection wrapped for LoRA: the frozen base (fp32, int8 or NF4), one adapter's trainable
factors for training, and the layer's serving bank (`bank.LoraBank`).

Training calls the module: `base(x) + scale * B(A(dropout(x)))`. Serving never does: the passes
(`encoder_pass`, `decoder_pass`) read the base weight and the bank's factors directly (see
`projections`), so one forward pass serves requests with different adapters (or none).
"""

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from app.engine.adaptation.lora.bank import LoraBank
from app.engine.adaptation.lora.config import LoraConfig

__all__ = [
    "LoraLinear",
    "init_trainable_layers",
    "inject_lora",
    "set_dropout",
    "snapshot",
    "target_module_names",
    "trainable_factors",
]


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, in_features: int, out_features: int) -> None:
        super().__init__()
        self.base = base
        self.in_features = in_features
        self.out_features = out_features
        self.lora_a: Tensor | None = None  # [rank, in_features]
        self.lora_b: Tensor | None = None  # [out_features, rank]
        self.scale = 0.0
        self.dropout: nn.Module = nn.Identity()
        self.bank = LoraBank(in_features, out_features)

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

    def factors(self) -> tuple[Tensor, Tensor]:
        """The trainable A [rank, in] and B [out, rank]."""
        if self.lora_a is None or self.lora_b is None:
            raise RuntimeError("a targeted layer has no trainable LoRA factors")
        return self.lora_a, self.lora_b


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


def init_trainable_layers(
    model: nn.Module, config: LoraConfig, generator: torch.Generator
) -> dict[str, LoraLinear]:
    """Fresh trainable factors on every wrapped projection `config` targets, by module name."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLinear) and config.adapts(name)
    }
    for layer in layers.values():
        layer.init_trainable(config, generator)
    return layers


def trainable_factors(layers: Mapping[str, LoraLinear]) -> list[Tensor]:
    return [factor for layer in layers.values() for factor in layer.factors()]


def snapshot(layers: Mapping[str, LoraLinear]) -> dict[str, Tensor]:
    """The factors as an adapter file holds them: `{module}.lora_A` [rank, in] and
    `{module}.lora_B` [out, rank], detached fp32 copies (clones: the optimiser updates in
    place)."""
    tensors: dict[str, Tensor] = {}
    for name, layer in layers.items():
        a, b = layer.factors()
        tensors[f"{name}.lora_A"] = a.detach().float().cpu().clone()
        tensors[f"{name}.lora_B"] = b.detach().float().cpu().clone()
    return tensors


def set_dropout(layers: Mapping[str, LoraLinear], active: bool) -> None:
    """Switches only the LoRA dropout: the quantised base layers must stay in training mode."""
    for layer in layers.values():
        layer.dropout.train(active)
