"""A SAML router: one utterance's activations in, a probability per expert out.

As the authors built it: Conv1d(d, d, 3) over time -> attention pooling (a learned score per
frame, softmax over time, weighted sum) -> Linear(d, E) -> softmax. The cross-attention router
summarises the encoder output the same way with its own convolution and pooling and feeds both
summaries to Linear(2d, E). One router serves every layer of its stack, each on its own input.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.engine.adaptation.saml.config import ROUTES, Route, RouterKind

__all__ = ["Router", "fresh_router_tensors", "router_parameter_count"]


class _Summary(nn.Module):
    """[batch, time, d] -> [batch, d]: convolution over time, then attention pooling."""

    def __init__(self, d_model: int, kind: RouterKind) -> None:
        super().__init__()
        groups = d_model if kind == "depthwise" else 1
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=3, padding=1, groups=groups)
        self.pool = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv(x.transpose(1, 2)).transpose(1, 2)  # [batch, time, d]
        weights = functional.softmax(self.pool(features), dim=1)  # [batch, time, 1]
        pooled: Tensor = (weights * features).sum(dim=1)
        return pooled


class Router(nn.Module):
    def __init__(
        self,
        d_model: int,
        experts: int,
        kind: RouterKind,
        *,
        cross: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.summary = _Summary(d_model, kind)
        self.memory_summary = _Summary(d_model, kind) if cross else None
        self.gate = nn.Linear(d_model * (2 if cross else 1), experts)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        """`x` [batch, time, d] (the attention's input), `memory` [batch, frames, d] (the encoder
        output, cross-attention only) -> [batch, experts], each row summing to 1."""
        summary = self.summary(x)
        if self.memory_summary is not None:
            if memory is None:
                raise ValueError("a cross-attention router needs the encoder output")
            summary = torch.cat([summary, self.memory_summary(memory)], dim=-1)
        logits: Tensor = self.gate(summary) / self.temperature
        return functional.softmax(logits.float(), dim=-1)


def fresh_router_tensors(
    d_model: int, experts: int, kind: RouterKind, seed: int
) -> dict[Route, dict[str, Tensor]]:
    """Newly initialised routers (PyTorch's default initialisation, reproducibly per seed), as
    state dicts by route."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {
            route: {
                key: value.detach().clone()
                for key, value in Router(d_model, experts, kind, cross=route == "decoder_cross")
                .state_dict()
                .items()
            }
            for route in ROUTES
        }


def router_parameter_count(d_model: int, experts: int, kind: RouterKind, *, cross: bool) -> int:
    return sum(p.numel() for p in Router(d_model, experts, kind, cross=cross).parameters())
