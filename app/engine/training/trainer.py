"""Trains one speaker's adapter (LoRA or SAML) on the shared base model (blocking; see `process`
for the child-process wrapper the service uses).

Two model instances are loaded, never the serving one:

* the *trainer*, kept in `train()` mode for its whole life, whose adapter (LoRA factors, or
  SAML routers and experts) holds the only parameters with gradients;
* the *evaluator*, used only through `WhisperEngine.transcribe` with the candidate adapter
  attached, i.e. exactly the inference path (and numerics) serving uses.

They must be separate: bitsandbytes' `Linear4bit`, on a CPU with AVX512-BF16, repacks its
weights into an inference-only layout the first time it runs in eval mode on an input without
gradient. A repacked layer computes in bf16 and has no backward (an input that needs gradient
fails with "a view of a leaf Variable that requires grad is being used in an in-place
operation"), so one eval-mode dev pass would break, or silently change, the training instance.
"""

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.encoder import EncoderWindow, encode
from app.engine.text import wer, word_errors
from app.engine.tokens import SpecialTokens
from app.engine.training.config import TrainingConfig
from app.engine.training.data import (
    Batch,
    Example,
    Utterance,
    build_example,
    check_utterance,
    collate,
    spec_augment,
    step_batches,
)
from app.engine.training.errors import TrainingCancelled, TrainingDataError
from app.engine.training.gate import GateConfig, HeldOutScore, decide, fold_assignment
from app.engine.training.joined import join_utterances, joined_example
from app.engine.training.kld import regularised_loss_sum, with_base_targets
from app.engine.training.methods import Adaptation, LoraAdaptation, SamlAdaptation, Schedule
from app.engine.types import ComputeDtype, Precision, TranscriptionOptions
from app.engine.whisper import WhisperEngine

__all__ = [
    "EVALUATION_OPTIONS",
    "ServingNumerics",
    "TrainingProgress",
    "TrainingResult",
    "base_parameter_count",
    "train_adapter",
    "train_with_gate",
]

EVALUATION_OPTIONS = TranscriptionOptions(language="en", with_timestamps=False)
"""Dev-set transcription: greedy (with serving's fallback), no timestamps, no prompt (the
language is the config's)."""

_DECODE_COST = 1.5
"""Progress weight of transcribing one dev utterance, relative to one training example."""


@dataclass(frozen=True, slots=True)
class TrainingProgress:
    fraction: float
    """0..1 of the planned work (the maximum number of epochs); 1.0 when done."""
    epoch: int
    """1-based epoch in progress (0 while measuring the base model)."""
    step: int
    """Optimiser steps taken so far."""
    eta_seconds: float | None
    message: str


@dataclass(frozen=True, slots=True)
class TrainingResult:
    adapter: AnyAdapter
    """The factors of the best epoch on the dev set (the last one when there is no dev set)."""
    metrics: dict[str, Any]
    """JSON-serialisable: wer_before, wer_after, per-epoch history, sizes and timings."""


ProgressCallback = Callable[[TrainingProgress], None]
StopCheck = Callable[[], bool]


def train_adapter(
    model_dir: Path,
    train: Sequence[Utterance],
    dev: Sequence[Utterance],
    config: TrainingConfig,
    *,
    bank: SamlWeights | None = None,
    precision: Precision = "nf4",
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> TrainingResult:
    """Trains an adapter of `config.method` on `train` (SAML from `bank`), picks the epoch with
    the lowest dev WER (ties: lowest dev loss), stops early after `config.patience` epochs
    without improvement. Raises
    `TrainingCancelled` when `should_stop()` turns true, `TrainingDataError` for unusable input.
    """
    if not train:
        raise TrainingDataError("no training utterances")
    for index, utterance in enumerate([*train, *dev]):
        check_utterance(utterance, index)
    started = time.monotonic()
    epoch_units = _units(len(train), config) + len(dev) * (_DECODE_COST + 0.2)
    run = _Run(len(dev) * _DECODE_COST + config.epochs * epoch_units, progress, should_stop)
    run.advance(0.0, "loading the model")
    _seed_everything(config.seed)
    trainer, evaluator = (
        WhisperEngine.load(model_dir, precision=precision, device=device, threads=config.threads)
        for _ in range(2)
    )
    base_parameters = base_parameter_count(trainer.model)
    wer_before = _dev_wer(evaluator, dev, None, config, run) if dev else None
    examples = _examples(trainer, train, config) + _joined(trainer, train, config, config.seed)
    dev_examples = _examples(trainer, dev, config)
    adaptation = _start(trainer, config, bank, examples)
    history, best = _fit(trainer, evaluator, adaptation, examples, dev_examples, dev, config, run)
    adapter = _adapter(adaptation, config, evaluator.info.fingerprint, best, len(train), len(dev))
    evaluator.check_adapter(adapter)
    run.finish()
    metrics = {
        "wer_before": wer_before,
        **_history_metrics(history, best, config),
        "train_seconds": round(time.monotonic() - started, 3),
        "train_utterances": len(train),
        "dev_utterances": len(dev),
        "adapter_parameters": adapter.parameter_count,
        "base_parameters": base_parameters,
        "parameter_ratio": adapter.parameter_count / base_parameters,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            **asdict(config),
            "targets": list(config.targets),
            "stacks": list(config.stacks),
        },
        "precision": precision,
        "device": trainer.info.device,
        "torch_threads": torch.get_num_threads(),
    }
    return TrainingResult(adapter=adapter, metrics=metrics)


@dataclass(frozen=True, slots=True)
class ServingNumerics:
    """How the serving engine computes: the gate's transcriptions use the same."""

    compute_dtype: ComputeDtype = "auto"
    base_window: EncoderWindow = "full"
    """The encoder window of the base model; adapters use the window they were trained on."""


@dataclass(frozen=True, slots=True)
class ServedNow:
    """What the speaker is served today, which a new adapter must beat."""

    adapter: AnyAdapter | None
    label: str = "the base model"


def train_with_gate(
    model_dir: Path,
    utterances: Sequence[Utterance],
    config: TrainingConfig,
    gate: GateConfig,
    *,
    served: ServedNow,
    numerics: ServingNumerics,
    bank: SamlWeights | None = None,
    precision: Precision = "nf4",
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> TrainingResult:
    """k-fold cross-validation over the whole upload, then the adapter trained on all of it.
    `bank`: the expert bank a SAML adapter starts from (`config.method == "saml"`).

    Each fold's adapter (trained for `config.epochs` on the other folds, no early stopping: the
    held-out fold must not choose anything) transcribes its fold; `served` transcribes every
    utterance; `gate.decide` compares the word errors. The metrics carry the evidence under
    `"gate"`; the caller activates the adapter only if it says so.
    """
    for index, utterance in enumerate(utterances):
        check_utterance(utterance, index)
    count = len(utterances)
    folds = min(gate.folds, count)
    if folds < 2:
        raise TrainingDataError("the gate needs at least 2 utterances")
    started = time.monotonic()
    held_in = count - count / folds
    run = _Run(
        config.epochs * _units(folds * held_in + count, config) + 2 * count * _DECODE_COST,
        progress,
        should_stop,
    )
    run.advance(0.0, "loading the model")
    trainer = WhisperEngine.load(
        model_dir, precision=precision, device=device, threads=config.threads
    )
    evaluator = WhisperEngine.load(
        model_dir,
        precision=precision,
        device=device,
        threads=config.threads,
        dtype=numerics.compute_dtype,
        base_window=numerics.base_window,
    )
    examples = _examples(trainer, utterances, config)
    run.label = served.label
    served_errors = _word_errors(evaluator, utterances, served.adapter, config, run)
    assignment = fold_assignment(count, folds, config.seed)
    new_errors: dict[int, tuple[int, int]] = {}
    for fold in range(folds):
        inside = [i for i in range(count) if assignment[i] != fold]
        inside_examples = [examples[i] for i in inside] + _joined(
            trainer, [utterances[i] for i in inside], config, config.seed + 1 + fold
        )
        adaptation, _, best = _fit_fresh(
            trainer, evaluator, inside_examples, config, bank, fold, run
        )
        adapter = _adapter(adaptation, config, evaluator.info.fingerprint, best, len(inside), 0)
        held_out = [i for i in range(count) if assignment[i] == fold]
        scored = _word_errors(evaluator, [utterances[i] for i in held_out], adapter, config, run)
        new_errors.update(zip(held_out, scored, strict=True))
    scores = [
        HeldOutScore(words, served_count, new_errors[index][0])
        for index, (served_count, words) in enumerate(served_errors)
    ]
    evidence = decide(scores, gate, folds=folds, served=served.label)
    examples += _joined(trainer, utterances, config, config.seed)
    adaptation, history, best = _fit_fresh(trainer, evaluator, examples, config, bank, None, run)
    adapter = _adapter(adaptation, config, evaluator.info.fingerprint, best, count, 0)
    evaluator.check_adapter(adapter)
    run.finish()
    gate_metrics = evidence.to_metrics()
    metrics = {
        "wer_before": gate_metrics["wer_served"],
        "wer_after": gate_metrics["wer_new"],
        "gate": gate_metrics,
        "epochs_run": len(history),
        "epoch_train_loss": [epoch.train_loss for epoch in history],
        "train_seconds": round(time.monotonic() - started, 3),
        "train_utterances": count,
        "adapter_parameters": adapter.parameter_count,
        "base_parameters": base_parameter_count(trainer.model),
        "parameter_ratio": adapter.parameter_count / base_parameter_count(trainer.model),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            **asdict(config),
            "targets": list(config.targets),
            "stacks": list(config.stacks),
        },
        "precision": precision,
        "compute_dtype": numerics.compute_dtype,
        "device": trainer.info.device,
        "torch_threads": torch.get_num_threads(),
    }
    return TrainingResult(adapter=adapter, metrics=metrics)


def _fit_fresh(
    trainer: WhisperEngine,
    evaluator: WhisperEngine,
    examples: list[Example],
    config: TrainingConfig,
    bank: SamlWeights | None,
    fold: int | None,
    run: "_Run",
) -> tuple[Adaptation, list["_Epoch"], "_Epoch"]:
    """A fresh start trained for every epoch of `config` on `examples` (the last epoch kept).
    Each fold starts from its own seed; the final adapter from the config's."""
    seeded = config if fold is None else replace(config, seed=config.seed + 1 + fold)
    _seed_everything(seeded.seed)
    adaptation = _start(trainer, seeded, bank, examples)
    run.label = "final adapter" if fold is None else f"fold {fold + 1}"
    try:
        history, best = _fit(trainer, evaluator, adaptation, examples, [], [], config, run)
    finally:
        adaptation.close()
    return adaptation, history, best


def _word_errors(
    evaluator: WhisperEngine,
    utterances: Sequence[Utterance],
    adapter: AnyAdapter | None,
    config: TrainingConfig,
    run: "_Run",
) -> list[tuple[int, int]]:
    """(word errors, reference words) of each utterance, transcribed as serving would (rows of
    one batch: the same results as one at a time)."""
    run.check()
    options = replace(EVALUATION_OPTIONS, language=config.language)
    texts = evaluator.transcribe_all([u.audio for u in utterances], options, adapter)
    run.advance(_DECODE_COST * len(utterances), run.say("scoring held-out recordings"))
    return [word_errors(u.text, t.text) for u, t in zip(utterances, texts, strict=True)]


def _history_metrics(
    history: list["_Epoch"], best: "_Epoch", config: TrainingConfig
) -> dict[str, Any]:
    return {
        "wer_after": best.dev_wer,
        "best_epoch": best.epoch,
        "epochs_run": len(history),
        "stopped_early": len(history) < config.epochs,
        "epoch_train_loss": [epoch.train_loss for epoch in history],
        "epoch_dev_loss": [epoch.dev_loss for epoch in history],
        "epoch_dev_wer": [epoch.dev_wer for epoch in history],
    }


@dataclass(frozen=True, slots=True)
class _Epoch:
    epoch: int
    train_loss: float
    dev_loss: float | None
    dev_wer: float | None
    tensors: dict[str, Tensor]

    @property
    def key(self) -> tuple[float, float]:
        """Lower is better: dev WER, then dev loss (epochs without a dev set rank by order)."""
        if self.dev_wer is None or self.dev_loss is None:
            return (0.0, -float(self.epoch))
        return (self.dev_wer, self.dev_loss)


class _Run:
    """Progress in work units (one per training example, `_DECODE_COST` per dev transcription),
    the ETA from the rate so far, and the cancellation check."""

    def __init__(
        self,
        total_units: float,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
    ) -> None:
        self._total = total_units
        self._done = 0.0
        self._started = time.monotonic()
        self._progress = progress
        self._should_stop = should_stop
        self.epoch = 0
        self.step = 0
        self.label: str | None = None
        """What is being trained, when there is more than one (e.g. `fold 2`)."""

    def check(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise TrainingCancelled("training was cancelled")

    def advance(self, units: float, message: str) -> None:
        self._done = min(self._total, self._done + units)
        self._report(self._done / self._total, message)

    def skip_remaining_epochs(self) -> None:
        """Early stop: the epochs not run are no longer part of the plan."""
        self._total = self._done

    def finish(self) -> None:
        self._report(1.0, "done")

    def say(self, message: str) -> str:
        """`message`, prefixed with what is being trained when that is set."""
        return f"{self.label}, {message}" if self.label else message

    def _report(self, fraction: float, message: str) -> None:
        if self._progress is None:
            return
        elapsed = time.monotonic() - self._started
        eta = elapsed / fraction * (1.0 - fraction) if fraction > 0 else None
        self._progress(
            TrainingProgress(
                fraction=fraction,
                epoch=self.epoch,
                step=self.step,
                eta_seconds=None if eta is None else round(eta, 1),
                message=message,
            )
        )


def _seed_everything(seed: int) -> None:
    """Adapter dropout draws from torch's global generator; nothing else here is random."""
    torch.manual_seed(seed)


def base_parameter_count(model: nn.Module) -> int:
    """Weights of the base model as trained (a 4-bit weight counts as its full matrix; tied
    weights once; LoRA factors excluded)."""
    total = 0
    for name, parameter in model.named_parameters():
        if name.endswith(("lora_a", "lora_b")):
            continue
        state = getattr(parameter, "quant_state", None)
        total += math.prod(state.shape) if state is not None else parameter.numel()
    return total


def _examples(
    engine: WhisperEngine, utterances: Sequence[Utterance], config: TrainingConfig
) -> list[Example]:
    loaded = engine.loaded
    tokens = _special_tokens(engine)
    return [
        build_example(
            utterance,
            feature_extractor=loaded.feature_extractor,
            tokenizer=loaded.tokenizer,
            tokens=tokens,
            device=loaded.device,
            window=config.encoder_window,
            language=config.language,
            index=index,
        )
        for index, utterance in enumerate(utterances)
    ]


def _joined(
    engine: WhisperEngine, utterances: Sequence[Utterance], config: TrainingConfig, seed: int
) -> list[Example]:
    """The long-form windows `config.joined_windows` adds (none without it)."""
    if not config.joined_windows:
        return []
    loaded = engine.loaded
    windows = join_utterances(utterances, seed, timestamps=config.method == "lora")
    return [
        joined_example(
            window,
            feature_extractor=loaded.feature_extractor,
            tokenizer=loaded.tokenizer,
            tokens=_special_tokens(engine),
            device=loaded.device,
            encoder_window=config.encoder_window,
            language=config.language,
        )
        for window in windows
    ]


def _units(recordings: float, config: TrainingConfig) -> float:
    """Progress units of one epoch over `recordings`: each is trained on alone and, with joined
    windows, at most once more inside one."""
    return recordings * (2 if config.joined_windows else 1)


def _special_tokens(engine: WhisperEngine) -> SpecialTokens:
    loaded = engine.loaded
    return SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)


def _start(
    engine: WhisperEngine,
    config: TrainingConfig,
    bank: SamlWeights | None,
    examples: Sequence[Example],
) -> Adaptation:
    """The method's fresh trainable state on the trainer (seeded); all else stays frozen."""
    generator = torch.Generator().manual_seed(config.seed)
    model = engine.model
    model.requires_grad_(False)
    adaptation: Adaptation
    if config.method == "saml":
        prefixes = {example.prefix_length for example in examples} or {1}
        if len(prefixes) != 1:
            raise TrainingDataError("SAML training needs one decoder prefix for all utterances")
        adaptation = SamlAdaptation(model, config, generator, bank, prefixes.pop())
    else:
        adaptation = LoraAdaptation(model, config, generator)
    model.train()  # and never eval(): see the module docstring
    return adaptation


def _fit(
    trainer: WhisperEngine,
    evaluator: WhisperEngine,
    adaptation: Adaptation,
    examples: list[Example],
    dev_examples: list[Example],
    dev: Sequence[Utterance],
    config: TrainingConfig,
    run: _Run,
) -> tuple[list[_Epoch], _Epoch]:
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    optimisers = adaptation.optimisers(steps_per_epoch)
    pad = _special_tokens(trainer).eot
    if config.kl_weight > 0:  # the factors are fresh (B = 0): these logits are the base model's
        examples = with_base_targets(examples, pad, lambda batch: _logits(trainer.model, batch))
    rng = random.Random(config.seed)
    history: list[_Epoch] = []
    best: _Epoch | None = None
    stale = 0
    for epoch in range(1, config.epochs + 1):
        run.epoch = epoch
        adaptation.set_dropout(True)
        train_loss = _train_epoch(trainer, examples, config, rng, pad, adaptation, optimisers, run)
        adaptation.set_dropout(False)
        tensors = adaptation.snapshot()
        result = _evaluate(
            trainer, evaluator, adaptation, dev_examples, dev, tensors, config, pad, run
        )
        current = _Epoch(epoch, train_loss, *result, tensors=tensors)
        history.append(replace(current, tensors={}))  # only the best epoch's factors are kept
        if best is None or current.key < best.key:
            best, stale = current, 0
        else:
            stale += 1
        if stale >= config.patience and epoch < config.epochs:
            run.skip_remaining_epochs()
            break
    assert best is not None
    return history, best


def _train_epoch(
    trainer: WhisperEngine,
    examples: list[Example],
    config: TrainingConfig,
    rng: random.Random,
    pad: int,
    adaptation: Adaptation,
    optimisers: list[tuple[torch.optim.Optimizer, Schedule]],
    run: _Run,
) -> float:
    """One pass over the training examples; returns the mean loss per target token."""
    total_loss = total_tokens = 0.0
    for micro_batches in step_batches(examples, config.batch_size, rng):
        run.check()
        groups = [[examples[i] for i in indices] for indices in micro_batches]
        batches = [collate(group, pad) for group in groups]
        if config.spec_augment:
            batches = [replace(b, mel=spec_augment(b.mel, rng)) for b in batches]
        tokens = sum(batch.target_count for batch in batches)
        optimizer, schedule = optimisers[run.step % len(optimisers)]
        optimizer.zero_grad(set_to_none=True)
        for group, batch in zip(groups, batches, strict=True):
            loss = _loss_sum(trainer.model, batch, group, config.kl_weight) / tokens
            loss.backward()  # type: ignore[no-untyped-call]
            total_loss += float(loss.detach()) * tokens
        total_tokens += tokens
        torch.nn.utils.clip_grad_norm_(adaptation.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        run.step += 1
        run.advance(
            sum(examples[i].utterances for indices in micro_batches for i in indices),
            run.say(f"epoch {run.epoch}/{config.epochs}: step {run.step}"),
        )
    return total_loss / max(1.0, total_tokens)


def _loss_sum(
    model: Any, batch: Batch, examples: Sequence[Example] = (), kl_weight: float = 0.0
) -> Tensor:
    """Summed cross-entropy of the transcript tokens, teacher-forced after the prefix (mixed
    with the base model's distribution by `kl_weight`, see `kld`)."""
    return regularised_loss_sum(_logits(model, batch), batch.labels, examples, kl_weight)


def _logits(model: Any, batch: Batch) -> Tensor:
    encoded = encode(model.model.encoder, batch.mel)
    hidden = model.model.decoder(
        input_ids=batch.input_ids, encoder_hidden_states=encoded, use_cache=False
    ).last_hidden_state
    logits: Tensor = model.proj_out(hidden)
    return logits


def _evaluate(
    trainer: WhisperEngine,
    evaluator: WhisperEngine,
    adaptation: Adaptation,
    dev_examples: list[Example],
    dev: Sequence[Utterance],
    tensors: dict[str, Tensor],
    config: TrainingConfig,
    pad: int,
    run: _Run,
) -> tuple[float | None, float | None]:
    """(dev loss per token, dev WER through the serving path) of the factors in `tensors`."""
    if not dev:
        return None, None
    with torch.no_grad():
        total = sum(float(_loss_sum(trainer.model, collate([e], pad))) for e in dev_examples)
    dev_loss = total / sum(example.target_count for example in dev_examples)
    run.advance(0.2 * len(dev), f"epoch {run.epoch}/{config.epochs}: evaluating")
    adapter = adaptation.adapter(tensors, evaluator.info.fingerprint, {})
    return dev_loss, _dev_wer(evaluator, dev, adapter, config, run)


def _dev_wer(
    evaluator: WhisperEngine,
    dev: Sequence[Utterance],
    adapter: AnyAdapter | None,
    config: TrainingConfig,
    run: _Run,
) -> float:
    """Dev WER as serving would score it: the base model (30 s window) or the adapter."""
    options = replace(EVALUATION_OPTIONS, language=config.language)
    hypotheses = []
    for utterance in dev:
        run.check()
        hypotheses.append(evaluator.transcribe(utterance.audio, options, adapter).text)
        what = "base model" if adapter is None else f"epoch {run.epoch}"
        run.advance(_DECODE_COST, f"{what}: transcribing the dev set")
    return wer([utterance.text for utterance in dev], hypotheses)


def _adapter(
    adaptation: Adaptation,
    config: TrainingConfig,
    fingerprint: str,
    best: _Epoch,
    train_count: int,
    dev_count: int,
) -> AnyAdapter:
    """The best epoch's factors; the metadata is deterministic (same seed, same bytes)."""
    extra = {
        "trainer": f"pqm-{config.method}-trainer/1",
        "targets": json.dumps(list(config.targets)),
        "stacks": json.dumps(list(config.stacks)),
        "epoch": str(best.epoch),
        "learning_rate": repr(config.learning_rate),
        "seed": str(config.seed),
        "train_utterances": str(train_count),
        "dev_utterances": str(dev_count),
    }
    if best.dev_wer is not None:
        extra["dev_wer"] = f"{best.dev_wer:.4f}"
    return adaptation.adapter(best.tensors, fingerprint, extra)
