"""What a SAML adapter (or expert bank) is made of: its experts, its routers, where they act."""

from dataclasses import dataclass
from typing import Literal, get_args

from app.engine.adaptation.lora.config import ATTENTION_TARGETS

__all__ = ["METHOD", "ROUTES", "TARGETS", "Route", "RouterKind", "SamlConfig", "route_of"]

METHOD = "saml"
"""The method's name in files, enrolment requests and the registry."""
TARGETS = ATTENTION_TARGETS
"""Every attention projection of every layer carries experts (as the authors' code)."""

Route = Literal["encoder_self", "decoder_self", "decoder_cross"]
ROUTES: tuple[Route, ...] = get_args(Route)
"""One router per kind of attention, shared by all layers of its stack."""
RouterKind = Literal["conv", "depthwise"]
"""`conv`: the authors' Conv1d(d, d, 3) before pooling; `depthwise`: Conv1d(d, d, 3, groups=d),
about d times smaller."""
ROUTER_KINDS: tuple[RouterKind, ...] = get_args(RouterKind)


@dataclass(frozen=True, slots=True)
class SamlConfig:
    experts: int = 10
    rank: int = 1
    """Rank of each expert (the authors': 1)."""
    alpha: float = 4.0
    """Expert scale is `alpha / rank` (the authors': 4)."""
    dropout: float = 0.2
    """Dropout on the experts' input (training only)."""
    router: RouterKind = "depthwise"
    """Depthwise, by measurement: better than the authors' conv on real speakers and 5x
    smaller (docs/tuning/saml.md)."""
    temperature: float = 1.0
    """Softmax temperature of the routers."""

    def __post_init__(self) -> None:
        problems = [
            message
            for failed, message in (
                (self.experts < 1, "experts must be >= 1"),
                (self.rank < 1, "rank must be >= 1"),
                (self.alpha <= 0, "alpha must be > 0"),
                (not 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
                (self.router not in ROUTER_KINDS, f"router must be one of {ROUTER_KINDS}"),
                (self.temperature <= 0, "temperature must be > 0"),
            )
            if failed
        ]
        if problems:
            raise ValueError("invalid SAML config: " + "; ".join(problems))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def route_of(module_name: str) -> Route | None:
    """The router whose mixture a projection at this module path follows (None: no experts)."""
    parts = module_name.split(".")
    if parts[-1] not in TARGETS:
        return None
    if "encoder" in parts and "self_attn" in parts:
        return "encoder_self"
    if "decoder" in parts and "self_attn" in parts:
        return "decoder_self"
    if "decoder" in parts and "encoder_attn" in parts:
        return "decoder_cross"
    return None
