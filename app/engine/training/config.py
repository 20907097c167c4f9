"""How a speaker's LoRA adapter is trained. The defaults were chosen by measurement.

`scripts/tune_lora.py`, NF4 tiny.en, CPU, threads=1, machine shared (load 2-5 on 2 cores).
Test WER on held-out material (synthetic: 20 sentences with vocabulary unseen in enrolment;
FSDD: 50 strings of 4-6 digits from clips 30-49, enrolment on 40 strings from clips 0-29).
Enrolment split by `split_train_dev(0.15, min_dev=3)`: 51+9 (synthetic), 34+6 (FSDD).

    config (adapter/base params)        de     fr     es   scot   enrol s
    base fp32 (30 s window)           1.471  1.067  1.343  0.605
    base NF4 (30 s window)            1.529  1.114  1.467  0.848
    DEFAULT r8 a16 attn+ffn lr1e-3 fit 0.824  0.776  1.014  0.281  102-196
      (1.43%)                          -44%   -27%   -25%   -54%   (mean -37% vs fp32)
    r4 a8 (0.72%)                     0.900  0.895
    r10 a20 (1.79%)                   0.919  0.771
    r16 a32 (2.86%, over budget)      0.929  0.633
    attention only r8 (0.78%)         1.090  0.881
    attention only r16 (1.56%)        1.033  0.819
    lr 5e-4 / 3e-3                    1.114 / 0.886   0.910 / 0.776
    dropout 0.1                       0.957  0.762
    batch 4                           0.924  0.705  1.005
    12 epochs, patience 3             0.871  0.857  0.990
    encoder window full, 4 epochs     0.943  0.929                 324-406

    FSDD (default)    george  nicolas jackson  theo   lucas  yweweler
    base fp32          0.219   0.521   0.202   0.126  0.016   0.610
    base NF4           0.414   0.755   0.129   0.537  0.004   0.220
    NF4 + adapter      0.031   0.054   0.004   0.008  0.004   0.017   (33-92 s)

Rank 8 on every attention and FFN projection is the best setting within the 2% parameter
budget; rank 4 or attention-only lose capacity, lower learning rates under-fit in 8 epochs,
more epochs or dropout do not generalise better. The "fit" window trains 3-6x faster than the
30 s window and generalised better. threads=2 took 724 s instead of 136 s for the same
enrolment on the shared machine (OpenMP threads stall when a core is taken), so 1 is default.
"""

from dataclasses import dataclass
from typing import get_args

from app.engine.encoder import EncoderWindow
from app.engine.lora import ATTENTION_TARGETS, FFN_TARGETS, LoraConfig

__all__ = ["TrainingConfig"]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    rank: int = 8
    alpha: float | None = None
    """LoRA scale is `alpha / rank`; None means `2 * rank` (scale 2, as tuned), so a job that
    only changes the rank keeps the tuned scale."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input (the frozen base sees the input unchanged)."""
    targets: tuple[str, ...] = ATTENTION_TARGETS + FFN_TARGETS
    """Projection names adapted in every encoder and decoder layer."""
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
    language: str = "en"
    """Language token of the decoder prefix (multilingual models only)."""

    def __post_init__(self) -> None:
        problems = [
            message
            for failed, message in (
                (self.rank < 1, "rank must be >= 1"),
                (self.alpha is not None and self.alpha <= 0, "alpha must be > 0"),
                (not 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
                (not self.targets, "targets must name at least one projection"),
                (
                    not set(self.targets) <= set(ATTENTION_TARGETS + FFN_TARGETS),
                    f"targets must be among {ATTENTION_TARGETS + FFN_TARGETS}",
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
            rank=self.rank, alpha=self.lora_alpha, dropout=self.dropout, targets=self.targets
        )
