"""A SAML adapter ready to serve: its routers on the device, its experts stacked per projection,
and each request's mixture computed from that request's own activations.

Mixing happens in parameter space (A = sum_e p_e A_e, B = sum_e p_e B_e), so a request's
update is one rank-r LoRA per projection: it enters the passes exactly as a LoRA adapter's
factors do (`lora.bank.Factors`).

Routing under a KV cache: the decoder's routers see the request's decoder prefix (the start-of-
transcript tokens, and a prompt if any), once, when the request joins the batch: each decoder
layer's mixture is fixed from then on. The authors' code re-routes at every step on the new
token alone, while the keys and values cached from earlier steps were projected under other
mixtures: not well defined, and each row's mixture would change the whole time it decodes.
Training routes the same way (`layer.route_decoder_on_prefix`).
"""

import torch
from torch import Tensor

from app.engine.adaptation.lora.bank import Factors
from app.engine.adaptation.saml.config import ROUTES, TARGETS, Route
from app.engine.adaptation.saml.router import Router
from app.engine.adaptation.saml.weights import SamlWeights

__all__ = ["SamlRouting", "mix", "module_path"]

_ATTENTION = {
    "encoder_self": "self_attn",
    "decoder_self": "self_attn",
    "decoder_cross": "encoder_attn",
}


def module_path(route: Route, layer: int, projection: str) -> str:
    """The module path of a projection (as `named_modules` names it in transformers' Whisper)."""
    stack = "encoder" if route == "encoder_self" else "decoder"
    return f"model.{stack}.layers.{layer}.{_ATTENTION[route]}.{projection}"


def mix(probabilities: Tensor, a: Tensor, b: Tensor, scale: float) -> Factors:
    """One request's factors from its mixture `probabilities` [E] over experts `a` [E, r, in]
    and `b` [E, out, r]: A = sum p_e A_e, B = scale * sum p_e B_e, held as `Factors` (A as
    [in, r] column-major, B as [r, out])."""
    mixed_a = torch.einsum("e,eri->ri", probabilities, a)
    mixed_b = torch.einsum("e,eor->ro", probabilities, b) * scale
    return mixed_a.T, mixed_b.contiguous()


class SamlRouting:
    def __init__(self, weights: SamlWeights, device: torch.device) -> None:
        self.weights = weights
        self._routers = {route: _router(weights, route, device) for route in ROUTES}
        self._experts: dict[str, tuple[Tensor, Tensor]] = {}
        for module in weights.target_modules:
            factors = weights.expert_factors(module)
            if factors is not None:
                self._experts[module] = (factors[0].to(device), factors[1].to(device))

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self._experts.values() for t in pair]
        tensors += [p for router in self._routers.values() for p in router.parameters()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def mixture(self, route: Route, x: Tensor, memory: Tensor | None = None) -> Tensor:
        """`route`'s expert probabilities [E] for one request: `x` [1, time, d] the attention's
        input, `memory` [frames, d] the encoder output (cross-attention)."""
        extra = None if memory is None else memory[None].float()
        probabilities: Tensor = self._routers[route](x.float(), extra)[0]
        return probabilities

    def factors(
        self, route: Route, layer: int, x: Tensor, memory: Tensor | None = None
    ) -> dict[str, Factors | None]:
        """Per attention projection of `layer` (by name: q_proj, ...), the request's factors."""
        probabilities = self.mixture(route, x, memory)
        mixed: dict[str, Factors | None] = {}
        for projection in TARGETS:
            experts = self._experts.get(module_path(route, layer, projection))
            mixed[projection] = (
                None if experts is None else mix(probabilities, *experts, self.weights.scale)
            )
        return mixed


def _router(weights: SamlWeights, route: Route, device: torch.device) -> Router:
    d_model = _d_model(weights, route)
    router = Router(
        d_model,
        weights.experts,
        weights.router,
        cross=route == "decoder_cross",
        temperature=weights.temperature,
    )
    router.load_state_dict(weights.router_state(route))
    router.requires_grad_(False)
    return router.to(device).eval()


def _d_model(weights: SamlWeights, route: Route) -> int:
    state = weights.router_state(route)
    return int(state["summary.pool.weight"].shape[1])
