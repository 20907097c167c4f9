"""How a speaker's adapter is trained. LoRA's defaults were chosen by measurement:
docs/tuning/lora_defaults.md; SAML's are the authors'."""

from dataclasses import dataclass, field
from typing import Literal, get_args

from app.engine.adaptation.lora.config import ADAPTABLE, STACKS, LoraConfig
from app.engine.adaptation.saml.config import SamlConfig
from app.engine.encoder import EncoderWindow

__all__ = ["TrainingConfig"]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    method: Literal["lora", "saml"] = "lora"
    rank: int = 8
    alpha: float | None = None
    """LoRA scale is `alpha / rank`; None means `2 * rank` (scale 2, as tuned), so a job that
    only changes the rank keeps the tuned scale."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input (the frozen base sees the input unchanged)."""
    targets: tuple[str, ...] = ADAPTABLE
    """Projection names adapted in every layer of `stacks`."""
    stacks: tuple[str, ...] = STACKS
    """The encoder, the decoder or both."""
    learning_rate: float = 1e-3
    epochs: int = 8
    """At most this many passes over the training utterances."""
    batch_size: int = 8
    patience: int = 2
    """Stop after this many epochs in a row without a better dev result."""
    seed: int = 0
    encoder_window: EncoderWindow = "fit"
    """The encoder input the adapter is trained on and served with (see `window_frames`)."""
    threads: int = 1
    """torch threads of the training process (one leaves the other cores to serving)."""
    weight_decay: float = 0.01
    warmup: float = 0.1
    """Fraction of the planned optimiser steps with a linearly rising learning rate."""
    max_grad_norm: float = 1.0
    spec_augment: bool = False
    """Mask random frequency bands and time spans of each training batch (`data.spec_augment`)."""
    kl_weight: float = 0.0
    """rho of KL-regularised adaptation (`kld`): how much of each token's target is the base
    model's own distribution rather than the transcript (LoRA only: it starts at the base)."""
    saml: SamlConfig = field(default_factory=SamlConfig)
    """The shape of SAML experts and routers trained from scratch (an expert bank's own shape
    wins when training starts from one)."""
    router_learning_rate: float = 1e-3
    """SAML's routers."""
    expert_learning_rate: float = 3e-4
    """SAML's experts."""
    epoch_decay: float = 0.9
    """SAML's learning rates are multiplied by this after every epoch."""
    saml_trained: Literal["both", "routers", "experts"] = "both"
    """What a SAML adaptation updates: the authors adapt routers and experts in turn; routers
    alone keep the bank's experts (fewer free parameters for a small enrolment)."""
    language: str = "en"
    """Language token of the decoder prefix (multilingual models only)."""
    joined_windows: bool = False
    """Also train on the recordings joined into long-form windows (`joined`), so the adapter
    sees what serving long audio shows it."""

    def __post_init__(self) -> None:
        problems = [
            message
            for failed, message in (
                (self.rank < 1, "rank must be >= 1"),
                (self.alpha is not None and self.alpha <= 0, "alpha must be > 0"),
                (not 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
                (not self.targets, "targets must name at least one projection"),
                (
                    not set(self.targets) <= set(ADAPTABLE),
                    f"targets must be among {ADAPTABLE}",
                ),
                (
                    not self.stacks or not set(self.stacks) <= set(STACKS),
                    f"stacks must be among {STACKS}",
                ),
                (self.learning_rate <= 0, "learning_rate must be > 0"),
                (self.epochs < 1, "epochs must be >= 1"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (self.patience < 1, "patience must be >= 1"),
                (self.encoder_window not in get_args(EncoderWindow), "unknown encoder_window"),
                (self.threads < 1, "threads must be >= 1"),
                (self.weight_decay < 0, "weight_decay must be >= 0"),
                (not 0.0 <= self.warmup < 1.0, "warmup must be in [0, 1)"),
                (self.max_grad_norm <= 0, "max_grad_norm must be > 0"),
                (not 0.0 <= self.kl_weight < 1.0, "kl_weight must be in [0, 1)"),
                (self.method not in ("lora", "saml"), "method must be lora or saml"),
                (self.method == "saml" and self.kl_weight > 0, "kl_weight is for LoRA only"),
                (self.router_learning_rate <= 0, "router_learning_rate must be > 0"),
                (self.expert_learning_rate <= 0, "expert_learning_rate must be > 0"),
                (not 0.0 < self.epoch_decay <= 1.0, "epoch_decay must be in (0, 1]"),
            )
            if failed
        ]
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def lora_alpha(self) -> float:
        return float(2 * self.rank) if self.alpha is None else self.alpha

    @property
    def lora(self) -> LoraConfig:
        return LoraConfig(
            rank=self.rank,
            alpha=self.lora_alpha,
            dropout=self.dropout,
            targets=self.targets,
            stacks=self.stacks,
        )
