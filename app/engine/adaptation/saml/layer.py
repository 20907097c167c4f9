"""SAML for training: every attention projection wrapped with its experts, the three routers,
and hooks that set each attention module's mixture from its own input before it runs.

Serving never calls these modules (`routing` mixes a request's factors for the passes); both
route the decoder on the decoder prefix only (see `routing`), so what trains is what serves.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from app.engine.adaptation.saml.config import ROUTES, Route, SamlConfig, route_of
from app.engine.adaptation.saml.router import Router
from app.engine.adaptation.saml.weights import SamlWeights, router_tensors

__all__ = ["ExpertLinear", "SamlModel"]


class ExpertLinear(nn.Module):
    """`base(x) + scale * x A_p^T B_p^T` with `A_p = sum_e p_e A_e`, `B_p = sum_e p_e B_e`, `p`
    the batch item's mixture (set by the routing hook before the attention runs)."""

    def __init__(
        self,
        base: nn.Module,
        in_features: int,
        out_features: int,
        config: SamlConfig,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / (in_features**0.5)
        a = (
            torch.rand(config.experts, config.rank, in_features, generator=generator) * 2 - 1
        ) * bound
        self.experts_a = nn.Parameter(a.to(_device_of(base)))  # [E, r, in]
        self.experts_b = nn.Parameter(  # [E, out, r]
            torch.zeros(config.experts, out_features, config.rank, device=_device_of(base))
        )
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.mixture: Tensor | None = None  # [batch, E]

    def forward(self, x: Tensor) -> Tensor:
        if self.mixture is None:
            raise RuntimeError("no routing mixture was set for this projection")
        p = self.mixture.to(x.dtype)
        mixed_a = torch.einsum("be,eri->bri", p, self.experts_a)
        mixed_b = torch.einsum("be,eor->bor", p, self.experts_b)
        update = (self.dropout(x) @ mixed_a.transpose(1, 2)) @ mixed_b.transpose(1, 2)
        output: Tensor = self.base(x) + update * self.scale
        return output


class SamlModel(nn.Module):
    """The routers and the wrapped projections of one Whisper, trained together.

    `inject` replaces every attention projection of `model` (a transformers Whisper) by an
    `ExpertLinear` around it, at the same module path; `remove` puts the originals back."""

    def __init__(self, model: nn.Module, config: SamlConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        model_config: Any = model.config
        d_model = int(model_config.d_model)
        self.routers = nn.ModuleDict(
            {
                route: Router(
                    d_model,
                    config.experts,
                    config.router,
                    cross=route == "decoder_cross",
                    temperature=config.temperature,
                )
                for route in ROUTES
            }
        ).to(_device_of(model))
        self.prefix_length = 1
        """Decoder positions the decoder routers pool over (the decoder prefix)."""
        self.route_once = False
        """Keep each attention's first mixture until `reset_routing` (incremental decoding as
        serving routes: once, on the prefix). Otherwise every call routes anew: training (one
        call per attention per forward), or the authors' per-step decoding."""
        self._model = model
        self._experts: dict[str, ExpertLinear] = {}
        self._originals: dict[str, nn.Module] = {}
        self._hooks: list[RemovableHandle] = []
        self._inject(generator)

    def expert_layers(self) -> Mapping[str, ExpertLinear]:
        return self._experts

    def router_parameters(self) -> Iterator[nn.Parameter]:
        return self.routers.parameters()

    def expert_parameters(self) -> Iterator[nn.Parameter]:
        for layer in self._experts.values():
            yield layer.experts_a
            yield layer.experts_b

    def reset_routing(self) -> None:
        for layer in self._experts.values():
            layer.mixture = None

    def set_dropout(self, active: bool) -> None:
        for layer in self._experts.values():
            layer.dropout.train(active)

    def load(self, weights: SamlWeights) -> None:
        """Starts from `weights` (a bank, or an adapter): every expert and router."""
        with torch.no_grad():
            for name, layer in self._experts.items():
                factors = weights.expert_factors(name)
                if factors is None:
                    raise ValueError(f"the weights hold no experts for {name!r}")
                layer.experts_a.copy_(factors[0])
                layer.experts_b.copy_(factors[1])
            for route in ROUTES:
                router = self.routers[route]
                assert isinstance(router, Router)
                router.load_state_dict(weights.router_state(route))

    def snapshot(self) -> dict[str, Tensor]:
        """Detached fp32 copies of every tensor, named as `SamlWeights` names them."""
        tensors: dict[str, Tensor] = {}
        for name, layer in self._experts.items():
            tensors[f"{name}.experts_A"] = _copy(layer.experts_a)
            tensors[f"{name}.experts_B"] = _copy(layer.experts_b)
        states = {
            route: {key: _copy(v) for key, v in self.routers[route].state_dict().items()}
            for route in ROUTES
        }
        return {**tensors, **router_tensors(states)}

    def remove(self) -> None:
        """Restores the model's own projections and drops the hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for name, original in self._originals.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self._model.get_submodule(parent_name), child, original)
        self._experts, self._originals = {}, {}

    def _inject(self, generator: torch.Generator) -> None:
        attention_modules: dict[str, tuple[Route, nn.Module]] = {}
        for name, module in list(self._model.named_modules()):
            route = route_of(name)
            if route is None or not hasattr(module, "in_features"):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = self._model.get_submodule(parent_name)
            features: Any = module
            wrapped = ExpertLinear(
                module, features.in_features, features.out_features, self.config, generator
            )
            setattr(parent, child, wrapped)
            self._experts[name] = wrapped
            self._originals[name] = module
            attention_modules[parent_name] = (route, parent)
        for route, attention in attention_modules.values():
            self._hooks.append(
                attention.register_forward_pre_hook(self._routing_hook(route), with_kwargs=True)
            )

    def _routing_hook(self, route: Route) -> Any:
        router = self.routers[route]

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            experts = [c for c in module.children() if isinstance(c, ExpertLinear)]
            if self.route_once and experts[0].mixture is not None:
                return
            hidden: Tensor = args[0] if args else kwargs["hidden_states"]
            if route == "encoder_self":
                mixture = router(hidden)
            else:
                prefix = hidden[:, : self.prefix_length]
                memory = kwargs.get("key_value_states") if route == "decoder_cross" else None
                mixture = router(prefix, memory)
            for child in experts:
                child.mixture = mixture

        return hook


def _copy(tensor: Tensor) -> Tensor:
    return tensor.detach().float().cpu().clone()


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
