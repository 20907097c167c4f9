"""SAML's routers and parameter-space mixing, and that serving mixes as training does."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from app.engine.adaptation.rows import Routed
from app.engine.adaptation.saml.config import ROUTER_KINDS, RouterKind, SamlConfig
from app.engine.adaptation.saml.layer import ExpertLinear, SamlModel
from app.engine.adaptation.saml.router import Router
from app.engine.adaptation.saml.routing import SamlRouting, mix
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.encoder import encode
from app.engine.tokens import SpecialTokens
from app.engine.training.data import prompt_tokens, training_window
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_saml
from tests.support.audio import speech_16k


@pytest.mark.parametrize("kind", ROUTER_KINDS)
@pytest.mark.parametrize("cross", [False, True])
def test_routing_weights_are_a_distribution_per_utterance(kind: RouterKind, cross: bool) -> None:
    torch.manual_seed(0)
    router = Router(16, 5, kind, cross=cross)
    x, memory = torch.randn(3, 7, 16) * 10, torch.randn(3, 11, 16)
    p = router(x, memory if cross else None)
    assert p.shape == (3, 5)
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(3))
    assert not torch.allclose(p[0], p[1]), "each utterance gets its own mixture"


def test_the_cross_router_needs_the_encoder_output() -> None:
    with pytest.raises(ValueError, match="encoder output"):
        Router(16, 5, "conv", cross=True)(torch.randn(1, 3, 16))


def test_depthwise_routers_are_far_smaller() -> None:
    full = sum(p.numel() for p in Router(384, 10, "conv").parameters())
    depthwise = sum(p.numel() for p in Router(384, 10, "depthwise").parameters())
    assert full > 3 * 384 * 384
    assert depthwise * 50 < full


def test_mixing_happens_in_parameter_space_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 2, 6, generator=generator, dtype=torch.float64)  # [E, r, in]
    b = torch.randn(4, 5, 2, generator=generator, dtype=torch.float64)  # [E, out, r]
    p = torch.softmax(torch.randn(4, generator=generator, dtype=torch.float64), dim=0)
    mixed_a = torch.stack([p[e] * a[e] for e in range(4)]).sum(dim=0)
    mixed_b = torch.stack([p[e] * b[e] for e in range(4)]).sum(dim=0)

    column_a, row_b = mix(p, a, b, scale=3.0)

    torch.testing.assert_close(column_a.T, mixed_a)
    torch.testing.assert_close(row_b.T, 3.0 * mixed_b)
    # The update is one rank-r LoRA, not a mixture of the experts' outputs.
    x = torch.randn(7, 6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(x @ column_a @ row_b, 3.0 * x @ (mixed_b @ mixed_a).T)
    outputs_mixed = torch.stack([p[e] * x @ (b[e] @ a[e]).T for e in range(4)]).sum(dim=0)
    assert not torch.allclose(x @ column_a @ row_b, 3.0 * outputs_mixed)


def test_the_training_layer_adds_each_batch_items_mixed_update() -> None:
    base = nn.Linear(6, 5)
    config = SamlConfig(experts=3, rank=2, dropout=0.0)
    layer = ExpertLinear(base, 6, 5, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.experts_b.normal_()
    p = torch.softmax(torch.randn(2, 3), dim=-1)
    layer.mixture = p
    x = torch.randn(2, 4, 6)

    output = layer(x)

    for item in range(2):
        a, b = mix(p[item], layer.experts_a.detach(), layer.experts_b.detach(), config.scale)
        expected = base(x[item]) + x[item] @ a @ b
        torch.testing.assert_close(output[item], expected)


@pytest.fixture(scope="module")
def fp32_engines(tiny_en_dir: Path) -> tuple[WhisperEngine, WhisperEngine]:
    """One to run the training modules, one to serve: fp32, computing in fp32."""
    return (
        WhisperEngine.load(tiny_en_dir, precision="fp32", device="cpu"),
        WhisperEngine.load(tiny_en_dir, precision="fp32", device="cpu", dtype="float32"),
    )


def test_serving_routes_and_mixes_as_training_does(
    fp32_engines: tuple[WhisperEngine, WhisperEngine],
) -> None:
    trainer, server = fp32_engines
    weights = random_saml(server, 1, strength=0.05)
    audio = speech_16k("Please call me back after the meeting.")
    loaded = trainer.loaded
    tokens = SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    prefix = prompt_tokens(tokens, "en")
    mel = training_window(loaded.feature_extractor, audio, loaded.device, "full")

    saml = SamlModel(trainer.model, weights.config, torch.Generator().manual_seed(0))
    saml.load(weights)
    saml.prefix_length = len(prefix)
    model: Any = trainer.model
    model.eval()
    try:
        with torch.no_grad():
            encoded = encode(model.model.encoder, mel[None])
            hidden = model.model.decoder(
                input_ids=torch.tensor([prefix]), encoder_hidden_states=encoded
            ).last_hidden_state
            trained_logits = model.proj_out(hidden)[0]
    finally:
        saml.remove()

    row = Routed(1, SamlRouting(weights, loaded.device))
    decoder = server._decoder
    [served_encoded] = decoder.encode([mel], [row])
    with torch.inference_mode():
        served_logits = decoder._batch.add(served_encoded, prefix, row, 0, list(range(len(prefix))))
        decoder._batch.drop_newest()

    torch.testing.assert_close(served_encoded, encoded[0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(served_logits, trained_logits, atol=2e-3, rtol=1e-4)
    silent = Routed(1, SamlRouting(_silenced(weights), loaded.device))
    [base_encoded] = decoder.encode([mel], [silent])
    assert not torch.allclose(base_encoded, served_encoded, atol=1e-3), "the experts act"


def _silenced(weights: SamlWeights) -> SamlWeights:
    """The same routers, every expert's B zero: no update whatever the mixture."""
    tensors = {
        name: torch.zeros_like(t) if name.endswith("experts_B") else t
        for name, t in weights.tensors.items()
    }
    return replace(weights, tensors=tensors)


def test_a_saml_adapter_without_updates_serves_the_base_model_exactly(
    nf4_engine: WhisperEngine,
) -> None:
    weights = random_saml(nf4_engine, 2)
    options = TranscriptionOptions(language="en", with_timestamps=False)
    audio = speech_16k("The garden looks lovely now that the roses are out.")
    base = nf4_engine.transcribe(audio, options)
    assert nf4_engine.transcribe(audio, options, _silenced(weights)) == base
    assert nf4_engine.transcribe(audio, options, weights) != base
