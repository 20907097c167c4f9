"""A SAML adapter or expert bank in memory: experts per projection, a router per route.

Tensor names (as the file holds them):
* `{module}.experts_A` [experts, rank, in] and `{module}.experts_B` [experts, out, rank] for
  every projection with experts (module paths as `named_modules` gives them);
* `routers.{route}.{parameter}` for each route's router (`router.Router`'s state dict).

An expert bank and a speaker's adapter have the same form: an adapter is the speaker's own
copy of a bank's routers and experts, trained further, so deleting a bank never breaks it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from app.engine.adaptation.saml.config import METHOD, Route, RouterKind, SamlConfig
from app.engine.types import EncoderWindow

__all__ = ["EXPERT_FACTORS", "ROUTER_PREFIX", "SamlKind", "SamlWeights", "router_tensors"]

EXPERT_FACTORS = ("experts_A", "experts_B")
ROUTER_PREFIX = "routers"

SamlKind = Literal["adapter", "bank"]


@dataclass(frozen=True, slots=True)
class SamlWeights:
    tensors: dict[str, Tensor]
    experts: int
    rank: int
    alpha: float
    router: RouterKind
    base_fingerprint: str
    temperature: float = 1.0
    encoder_window: EncoderWindow = "full"
    kind: SamlKind = "adapter"
    method: str = METHOD
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def shaped(
        cls,
        shape: SamlConfig,
        tensors: dict[str, Tensor],
        *,
        base_fingerprint: str,
        encoder_window: EncoderWindow,
        kind: SamlKind = "adapter",
        extra: dict[str, str] | None = None,
    ) -> "SamlWeights":
        """Weights of `shape` (experts, rank, alpha, router, temperature)."""
        return cls(
            tensors=tensors,
            experts=shape.experts,
            rank=shape.rank,
            alpha=shape.alpha,
            router=shape.router,
            temperature=shape.temperature,
            base_fingerprint=base_fingerprint,
            encoder_window=encoder_window,
            kind=kind,
            extra=extra or {},
        )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def config(self) -> SamlConfig:
        """The shape to train further from these weights (dropout: the default)."""
        return SamlConfig(
            experts=self.experts,
            rank=self.rank,
            alpha=self.alpha,
            router=self.router,
            temperature=self.temperature,
        )

    @property
    def target_modules(self) -> list[str]:
        return sorted(
            {
                name.rsplit(".", 1)[0]
                for name in self.tensors
                if name.rsplit(".", 1)[-1] in EXPERT_FACTORS
            }
        )

    def expert_factors(self, module: str) -> tuple[Tensor, Tensor] | None:
        """(A [experts, rank, in], B [experts, out, rank]) of `module`, None if it has none."""
        a = self.tensors.get(f"{module}.experts_A")
        b = self.tensors.get(f"{module}.experts_B")
        return None if a is None or b is None else (a, b)

    def router_state(self, route: Route) -> dict[str, Tensor]:
        """`route`'s router parameters, named as `router.Router`'s state dict."""
        prefix = f"{ROUTER_PREFIX}.{route}."
        return {
            name.removeprefix(prefix): tensor
            for name, tensor in self.tensors.items()
            if name.startswith(prefix)
        }

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors.values())


def router_tensors(routers: Mapping[Route, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Routers' state dicts by route, named as the file names them."""
    return {
        f"{ROUTER_PREFIX}.{route}.{key}": value
        for route, state in routers.items()
        for key, value in state.items()
    }
