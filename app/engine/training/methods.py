"""Each adaptation method's trainable state on the trainer's model, behind one interface the
training loop (`trainer`) drives: what to optimise and how, dropout, a snapshot, the adapter.

* LoRA: fresh factors (B = 0: training starts at the base model), one AdamW, warm-up then
  linear decay.
* SAML: the speaker's copy of an expert bank's routers and experts, each with its own AdamW
  stepped in turn (the authors' interleaved updates; routers at 1e-3, experts at 3e-4), the
  learning rates decayed by `epoch_decay` every epoch (their StepLR).
"""

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.lora.layer import (
    LoraLinear,
    init_trainable_layers,
    set_dropout,
    snapshot,
    trainable_factors,
)
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.saml.layer import SamlModel
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.training.config import TrainingConfig

__all__ = ["Adaptation", "LoraAdaptation", "SamlAdaptation", "Schedule"]

Schedule = torch.optim.lr_scheduler.LRScheduler


class Adaptation(Protocol):
    def optimisers(self, steps_per_epoch: int) -> list[tuple[torch.optim.Optimizer, Schedule]]:
        """Optimisers stepped in turn, one per optimiser step, each with its schedule (stepped
        with it)."""

    def parameters(self) -> list[Tensor]:
        """Everything trained (for gradient clipping)."""

    def set_dropout(self, active: bool) -> None: ...

    def snapshot(self) -> dict[str, Tensor]:
        """Detached copies of the trained tensors, named as the method's adapter file."""

    def adapter(
        self, tensors: dict[str, Tensor], fingerprint: str, extra: dict[str, str]
    ) -> AnyAdapter:
        """The adapter `tensors` (a snapshot) make."""

    def close(self) -> None:
        """Leaves the model as it found it (for the next fold's fresh start)."""


class LoraAdaptation:
    def __init__(
        self, model: nn.Module, config: TrainingConfig, generator: torch.Generator
    ) -> None:
        self._config = config
        self._layers: dict[str, LoraLinear] = init_trainable_layers(model, config.lora, generator)

    def optimisers(self, steps_per_epoch: int) -> list[tuple[torch.optim.Optimizer, Schedule]]:
        config = self._config
        optimiser = torch.optim.AdamW(
            self.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        factor = _warmup_then_linear(steps_per_epoch * config.epochs, config.warmup)
        return [(optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor))]

    def parameters(self) -> list[Tensor]:
        return trainable_factors(self._layers)

    def set_dropout(self, active: bool) -> None:
        set_dropout(self._layers, active)

    def snapshot(self) -> dict[str, Tensor]:
        return snapshot(self._layers)

    def adapter(
        self, tensors: dict[str, Tensor], fingerprint: str, extra: dict[str, str]
    ) -> AdapterWeights:
        config = self._config
        return AdapterWeights(
            tensors=tensors,
            rank=config.rank,
            alpha=config.lora_alpha,
            base_fingerprint=fingerprint,
            encoder_window=config.encoder_window,
            extra=extra,
        )

    def close(self) -> None:
        """Drops the factors: the model serves as the base again (e.g. for another method)."""
        for layer in self._layers.values():
            layer.lora_a = layer.lora_b = None


class SamlAdaptation:
    def __init__(
        self,
        model: nn.Module,
        config: TrainingConfig,
        generator: torch.Generator,
        start: SamlWeights | None,
        prefix_length: int,
    ) -> None:
        self._config = config
        self._saml_config = config.saml if start is None else start.config
        self._start = start
        self._model = SamlModel(model, self._saml_config, generator)
        self._model.prefix_length = prefix_length
        if start is not None:
            self._model.load(start)

    def optimisers(self, steps_per_epoch: int) -> list[tuple[torch.optim.Optimizer, Schedule]]:
        config = self._config
        built: list[tuple[torch.optim.Optimizer, Schedule]] = []
        for parameters, rate in self._groups():
            optimiser = torch.optim.AdamW(parameters, lr=rate, weight_decay=config.weight_decay)
            # Each optimiser takes every other step: its schedule decays once per epoch.
            period = max(1, steps_per_epoch // 2)
            schedule = torch.optim.lr_scheduler.StepLR(optimiser, period, config.epoch_decay)
            built.append((optimiser, schedule))
        return built

    def parameters(self) -> list[Tensor]:
        return [parameter for parameters, _ in self._groups() for parameter in parameters]

    def _groups(self) -> list[tuple[list[Tensor], float]]:
        """The parameters trained, each group with its learning rate."""
        config, model = self._config, self._model
        routers: list[Tensor] = list(model.router_parameters())
        experts: list[Tensor] = list(model.expert_parameters())
        groups = {
            "both": [
                (routers, config.router_learning_rate),
                (experts, config.expert_learning_rate),
            ],
            "routers": [(routers, config.router_learning_rate)],
            "experts": [(experts, config.expert_learning_rate)],
        }
        return groups[config.saml_trained]

    def set_dropout(self, active: bool) -> None:
        self._model.set_dropout(active)

    def snapshot(self) -> dict[str, Tensor]:
        return self._model.snapshot()

    def adapter(
        self, tensors: dict[str, Tensor], fingerprint: str, extra: dict[str, str]
    ) -> SamlWeights:
        return SamlWeights.shaped(
            self._saml_config,
            tensors,
            base_fingerprint=fingerprint,
            encoder_window=self._config.encoder_window,
            extra=extra,
        )

    def close(self) -> None:
        self._model.remove()


def _warmup_then_linear(total_steps: int, warmup: float) -> Callable[[int], float]:
    warmup_steps = max(1, round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = total_steps - warmup_steps
        return max(0.0, 1.0 - (step - warmup_steps) / remaining) if remaining > 0 else 1.0

    return factor
