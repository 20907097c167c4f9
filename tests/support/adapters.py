"""Makes adapters without training: random LoRA factors, or random SAML experts and routers, of
the right shapes for a base model."""

from typing import Any

import torch

from adapters_store import AdapterStore
from app.db.models import Adapter, new_id
from app.db.repositories.adapters import AdapterRepository
from app.db.session import transaction
from app.engine.adaptation.files import dump_any
from app.engine.adaptation.lora.config import ATTENTION_TARGETS
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.lora.layer import target_module_names
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.saml.config import RouterKind, route_of
from app.engine.adaptation.saml.router import fresh_router_tensors
from app.engine.adaptation.saml.weights import SamlWeights, router_tensors
from app.engine.types import EncoderWindow
from app.engine.whisper import WhisperEngine
from app.services.blob_keys import adapter_key
from app.state import ServiceState


def random_adapter(
    engine: WhisperEngine, seed: int, *, rank: int = 4, strength: float = 0.001
) -> AdapterWeights:
    """An adapter that changes the model's output (B is not zero), reproducibly per seed.

    The default strength changes a word or two of clear speech (seeds 1 and 2 differently);
    much stronger ones turn every transcript into noise, decoded slowly through all fallbacks.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in target_module_names(engine.model, ATTENTION_TARGETS):
        layer: Any = engine.model.get_submodule(name)
        fan_in, fan_out = int(layer.in_features), int(layer.out_features)
        tensors[f"{name}.lora_A"] = torch.randn(rank, fan_in, generator=generator)
        tensors[f"{name}.lora_B"] = torch.randn(fan_out, rank, generator=generator) * strength
    return AdapterWeights(
        tensors=tensors, rank=rank, alpha=float(rank), base_fingerprint=engine.info.fingerprint
    )


def random_saml(
    engine: WhisperEngine,
    seed: int,
    *,
    experts: int = 4,
    strength: float = 0.002,
    router: RouterKind = "conv",
    window: EncoderWindow = "full",
) -> SamlWeights:
    """A SAML adapter (rank-1 experts, freshly initialised routers) that changes the model's
    output, reproducibly per seed; `strength` as `random_adapter`'s."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in target_module_names(engine.model, ATTENTION_TARGETS):
        if route_of(name) is None:
            continue
        layer: Any = engine.model.get_submodule(name)
        fan_in, fan_out = int(layer.in_features), int(layer.out_features)
        tensors[f"{name}.experts_A"] = torch.randn(experts, 1, fan_in, generator=generator)
        b = torch.randn(experts, fan_out, 1, generator=generator) * strength
        tensors[f"{name}.experts_B"] = b
    model: Any = engine.model
    routers = fresh_router_tensors(int(model.config.d_model), experts, router, seed)
    tensors.update(router_tensors(routers))
    return SamlWeights(
        tensors=tensors,
        experts=experts,
        rank=1,
        alpha=4.0,
        router=router,
        base_fingerprint=engine.info.fingerprint,
        encoder_window=window,
    )


async def install_adapter(
    state: ServiceState,
    user_id: str,
    weights: AnyAdapter,
    *,
    active: bool = True,
    store: AdapterStore | None = None,
) -> str:
    """Stores the adapter (of any method) and its row as an enrolment would; returns the
    adapter id."""
    adapter_id = new_id()
    key = adapter_key(user_id, adapter_id)
    stored = await (store or state.adapter_store).put(key, dump_any(weights))
    async with transaction(state.sessions) as session:
        repository = AdapterRepository(session)
        row = await repository.add(
            Adapter(
                id=adapter_id,
                user_id=user_id,
                version=await repository.next_version(user_id),
                method=weights.method,
                rank=weights.rank,
                target_modules=weights.target_modules,
                base_fingerprint=weights.base_fingerprint,
                encoder_window=weights.encoder_window,
                blob_key=key,
                size_bytes=stored.size,
                sha256=stored.sha256,
                parameter_count=weights.parameter_count,
                metrics={},
                source="import",
                active=False,
            )
        )
        if active:
            await repository.activate(row)
    return adapter_id
