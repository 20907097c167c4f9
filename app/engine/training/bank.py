"""Builds a SAML expert bank from a pool of speakers (blocking; run it in a child process).

The authors' procedure: expert e starts as a rank-1 LoRA of pool speaker e (every attention
projection, scale 4); the routers start fresh; then routers and experts are trained together
on the whole pool, so the mixture learns what the speakers share and how they differ. A
speaker's SAML adapter later starts from a copy of the bank (`train_with_gate(bank=...)`).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from app.engine.adaptation.lora.config import ATTENTION_TARGETS
from app.engine.adaptation.saml.config import RouterKind, SamlConfig
from app.engine.adaptation.saml.router import fresh_router_tensors
from app.engine.adaptation.saml.weights import SamlWeights, router_tensors
from app.engine.training.config import TrainingConfig
from app.engine.training.data import Utterance, check_utterance
from app.engine.training.errors import TrainingDataError
from app.engine.training.trainer import (
    ProgressCallback,
    StopCheck,
    _examples,
    _fit,
    _Run,
    _seed_everything,
    _start,
)
from app.engine.types import Precision
from app.engine.whisper import WhisperEngine

__all__ = ["BankConfig", "BankResult", "PoolSpeaker", "build_bank"]


@dataclass(frozen=True, slots=True)
class PoolSpeaker:
    name: str
    utterances: Sequence[Utterance]


@dataclass(frozen=True, slots=True)
class BankConfig:
    experts: int = 10
    rank: int = 1
    """Of each expert (the authors' are rank 1); SAML's scale stays alpha / rank = 4."""
    """At most this many (one per speaker, the speakers with the most recordings first)."""
    router: RouterKind = "depthwise"
    """As `SamlConfig.router` (docs/tuning/saml.md)."""
    expert_epochs: int = 4
    """Epochs of each expert's own rank-1 LoRA on its speaker."""
    epochs: int = 2
    """Epochs of routers and experts together over the whole pool."""
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if (
            self.experts < 2
            or self.rank < 1
            or self.expert_epochs < 1
            or self.epochs < 1
            or self.threads < 1
        ):
            raise ValueError("a bank needs >= 2 experts and >= 1 epoch of each stage")


@dataclass(frozen=True, slots=True)
class BankResult:
    bank: SamlWeights
    metrics: dict[str, Any]


def build_bank(
    model_dir: Path,
    speakers: Sequence[PoolSpeaker],
    config: BankConfig,
    *,
    precision: Precision = "nf4",
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> BankResult:
    started = time.monotonic()
    pool = [s for s in speakers if s.utterances]
    if len(pool) < 2:
        raise TrainingDataError("an expert bank needs recordings of at least 2 speakers")
    for speaker in pool:
        for index, utterance in enumerate(speaker.utterances):
            check_utterance(utterance, index)
    chosen = sorted(pool, key=lambda s: (-len(s.utterances), s.name))[: config.experts]
    everyone = [u for speaker in pool for u in speaker.utterances]
    expert_training = _expert_config(config)
    mixture_training = _mixture_config(config, len(chosen))
    run = _Run(
        sum(len(s.utterances) for s in chosen) * config.expert_epochs
        + len(everyone) * config.epochs,
        progress,
        should_stop,
    )
    run.advance(0.0, "loading the model")
    trainer = WhisperEngine.load(
        model_dir, precision=precision, device=device, threads=config.threads
    )
    experts = []
    for number, speaker in enumerate(chosen, start=1):
        run.label = f"expert {number}/{len(chosen)}"
        experts.append(_speaker_lora(trainer, speaker, expert_training, run))
    start = _initial_bank(trainer, experts, mixture_training, config)
    run.label = "mixture"
    examples = _examples(trainer, everyone, mixture_training)
    _seed_everything(config.seed)
    adaptation = _start(trainer, mixture_training, start, examples)
    try:
        history, best = _fit(trainer, trainer, adaptation, examples, [], [], mixture_training, run)
    finally:
        adaptation.close()
    extra = {
        "trainer": "pqm-saml-bank/1",
        "speakers": str(len(pool)),
        "expert_speakers": str(len(chosen)),
        "utterances": str(len(everyone)),
        "seed": str(config.seed),
    }
    trained = adaptation.adapter(best.tensors, trainer.info.fingerprint, extra)
    assert isinstance(trained, SamlWeights)
    bank = replace(trained, kind="bank")
    run.finish()
    metrics = {
        "speakers": len(pool),
        "expert_speakers": [s.name for s in chosen],
        "utterances": len(everyone),
        "epoch_train_loss": [epoch.train_loss for epoch in history],
        "build_seconds": round(time.monotonic() - started, 3),
        "parameters": bank.parameter_count,
    }
    return BankResult(bank=bank, metrics=metrics)


def _expert_config(config: BankConfig) -> TrainingConfig:
    """Each expert: a LoRA of the bank's rank with SAML's scale on every attention projection."""
    shape = _shape(config, experts=2)
    return TrainingConfig(
        rank=shape.rank,
        alpha=shape.alpha,
        dropout=shape.dropout,
        targets=ATTENTION_TARGETS,
        epochs=config.expert_epochs,
        seed=config.seed,
        threads=config.threads,
    )


def _mixture_config(config: BankConfig, experts: int) -> TrainingConfig:
    return TrainingConfig(
        method="saml",
        saml=_shape(config, experts),
        epochs=config.epochs,
        seed=config.seed,
        threads=config.threads,
    )


def _shape(config: BankConfig, experts: int) -> SamlConfig:
    scale = SamlConfig().scale
    return SamlConfig(
        experts=experts, rank=config.rank, alpha=scale * config.rank, router=config.router
    )


def _speaker_lora(
    trainer: WhisperEngine, speaker: PoolSpeaker, config: TrainingConfig, run: _Run
) -> dict[str, torch.Tensor]:
    examples = _examples(trainer, speaker.utterances, config)
    _seed_everything(config.seed)
    adaptation = _start(trainer, config, None, examples)
    try:
        _, best = _fit(trainer, trainer, adaptation, examples, [], [], config, run)
    finally:
        adaptation.close()
    return best.tensors


def _initial_bank(
    trainer: WhisperEngine,
    experts: list[dict[str, torch.Tensor]],
    training: TrainingConfig,
    config: BankConfig,
) -> SamlWeights:
    """Expert e's factors are speaker e's LoRA; the routers are freshly initialised."""
    shape = training.saml
    tensors: dict[str, torch.Tensor] = {}
    modules = sorted({name.rsplit(".", 1)[0] for name in experts[0]})
    for module in modules:
        tensors[f"{module}.experts_A"] = torch.stack([e[f"{module}.lora_A"] for e in experts])
        tensors[f"{module}.experts_B"] = torch.stack([e[f"{module}.lora_B"] for e in experts])
    model_config: Any = trainer.model.config
    routers = fresh_router_tensors(model_config.d_model, shape.experts, shape.router, config.seed)
    tensors.update(router_tensors(routers))
    return SamlWeights.shaped(
        shape,
        tensors,
        base_fingerprint=trainer.info.fingerprint,
        encoder_window=training.encoder_window,
        kind="bank",
    )
