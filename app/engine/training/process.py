"""Runs `train_adapter` / `train_with_gate` (a `TrainingRequest`) or `build_bank` (a
`BankRequest`) in a child OS process (multiprocessing "spawn": a fresh interpreter, so no torch
threads, allocator or model state is shared with the serving process).

The request (our own in-memory arrays and dataclasses) is pickled to the child; progress comes
back over a pipe; the adapter or bank comes back as safetensors bytes (`dump_any`), never as
pickled tensors. Cancellation terminates the child (SIGTERM, then SIGKILL after a grace period).
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast, get_args

from app.engine.adaptation.files import dump_any, load_any
from app.engine.adaptation.saml.file import load_saml
from app.engine.training.bank import BankConfig, PoolSpeaker, build_bank
from app.engine.training.config import TrainingConfig
from app.engine.training.data import Utterance, check_utterance
from app.engine.training.errors import TrainingCancelled, TrainingFailed
from app.engine.training.gate import GateConfig
from app.engine.training.trainer import (
    ServedNow,
    ServingNumerics,
    TrainingProgress,
    TrainingResult,
    train_adapter,
    train_with_gate,
)
from app.engine.types import Precision, TrainingPriority

__all__ = [
    "BankRequest",
    "GatedTraining",
    "TrainingRequest",
    "die_with_parent",
    "lower_priority",
    "run_in_subprocess",
]

logger = logging.getLogger(__name__)

_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@dataclass(frozen=True, slots=True)
class GatedTraining:
    """Train with the activation gate's cross-validation (`train_with_gate`)."""

    gate: GateConfig
    served_adapter: bytes | None
    """The file of the adapter the speaker is served now (`dump_any`); None: the base."""
    served_label: str
    numerics: ServingNumerics
    bank: bytes | None = None
    """The expert bank's file a SAML adapter starts from (`config.method == "saml"`)."""


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    model_dir: Path
    train: Sequence[Utterance]
    dev: Sequence[Utterance]
    config: TrainingConfig = field(default_factory=TrainingConfig)
    precision: str = "nf4"
    device: str = "cpu"
    """Where it trains: the served model's device (`cpu`, `cuda`, `cuda:N`) or `auto`."""
    priority: TrainingPriority = "normal"
    gated: GatedTraining | None = None
    """Set: every utterance (train and dev alike) goes through the gate's folds."""

    def __post_init__(self) -> None:
        if self.precision not in get_args(Precision):
            raise ValueError(f"unknown precision {self.precision!r}")


@dataclass(frozen=True, slots=True)
class BankRequest:
    """Build an expert bank (the result's `adapter` is the bank)."""

    model_dir: Path
    speakers: Sequence[PoolSpeaker]
    config: BankConfig = field(default_factory=BankConfig)
    precision: Precision = "nf4"
    device: str = "cpu"
    priority: TrainingPriority = "normal"


def run_in_subprocess(
    request: TrainingRequest | BankRequest,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    grace_seconds: float = 3.0,
    poll_seconds: float = 0.1,
) -> TrainingResult:
    """Blocks until the child finishes (call it from a worker thread). Raises
    `TrainingCancelled` once `should_stop()` is true (the child is gone by then) and
    `TrainingFailed` when the child reports an error or dies; unusable utterances raise
    `TrainingDataError` before any process is started."""
    for index, utterance in enumerate(_utterances(request)):
        check_utterance(utterance, index)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    name = "pqm-bank" if isinstance(request, BankRequest) else "pqm-training"
    child = context.Process(target=_child_main, args=(request, sender), name=name, daemon=True)
    child.start()
    sender.close()  # the child holds the only writer: its exit ends the pipe
    try:
        return _supervise(child, receiver, progress, should_stop, poll_seconds)
    finally:
        _stop(child, grace_seconds)
        receiver.close()


def _utterances(request: TrainingRequest | BankRequest) -> list[Utterance]:
    if isinstance(request, BankRequest):
        return [u for speaker in request.speakers for u in speaker.utterances]
    return [*request.train, *request.dev]


def _supervise(
    child: BaseProcess,
    receiver: Connection,
    progress: Callable[[TrainingProgress], None] | None,
    should_stop: Callable[[], bool] | None,
    poll_seconds: float,
) -> TrainingResult:
    while True:
        if should_stop is not None and should_stop():
            raise TrainingCancelled("training was cancelled")
        if not receiver.poll(poll_seconds):
            continue
        try:
            message = receiver.recv()
        except EOFError:
            child.join(5.0)
            raise TrainingFailed(
                f"the training process exited without a result (exit code {child.exitcode})"
            ) from None
        result = _handle(message, progress)
        if result is not None:
            return result


def _handle(
    message: tuple[Any, ...], progress: Callable[[TrainingProgress], None] | None
) -> TrainingResult | None:
    kind = message[0]
    if kind == "progress":
        if progress is not None:
            progress(cast(TrainingProgress, message[1]))
        return None
    if kind == "result":
        adapter_bytes, metrics = cast(bytes, message[1]), cast(dict[str, Any], message[2])
        return TrainingResult(adapter=load_any(adapter_bytes), metrics=metrics)
    if kind == "error":
        name, text = cast(str, message[1]), cast(str, message[2])
        logger.warning("the training process failed:\n%s", message[3])
        raise TrainingFailed(f"{name}: {text}" if text else name)
    raise TrainingFailed(f"unexpected message from the training process: {kind!r}")


def _stop(child: BaseProcess, grace_seconds: float) -> None:
    """Ends the child if it still runs: SIGTERM, then SIGKILL after `grace_seconds`."""
    if child.is_alive():
        child.terminate()
        child.join(grace_seconds)
    if child.is_alive():
        child.kill()
    child.join(grace_seconds)


def _child_main(request: TrainingRequest | BankRequest, sender: Connection) -> None:
    """Entry point of the training process."""
    die_with_parent()
    lower_priority(request.priority)
    _limit_threads(request.config.threads)

    def report(update: TrainingProgress) -> None:
        sender.send(("progress", update))

    try:
        if isinstance(request, BankRequest):
            result = _build(request, report)
        else:
            result = _train(request, report)
        sender.send(("result", dump_any(result.adapter), result.metrics))
    except BaseException as exc:
        with suppress(OSError):
            sender.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
        raise SystemExit(1) from exc
    finally:
        sender.close()


def _train(
    request: TrainingRequest, progress: Callable[[TrainingProgress], None]
) -> TrainingResult:
    precision = cast(Precision, request.precision)
    gated = request.gated
    if gated is None:
        return train_adapter(
            request.model_dir,
            request.train,
            request.dev,
            request.config,
            precision=precision,
            device=request.device,
            progress=progress,
        )
    served = load_any(gated.served_adapter) if gated.served_adapter is not None else None
    bank = load_saml(gated.bank) if gated.bank is not None else None
    return train_with_gate(
        request.model_dir,
        [*request.train, *request.dev],
        request.config,
        gated.gate,
        served=ServedNow(served, gated.served_label),
        numerics=gated.numerics,
        bank=bank,
        precision=precision,
        device=request.device,
        progress=progress,
    )


def _build(request: BankRequest, progress: Callable[[TrainingProgress], None]) -> TrainingResult:
    built = build_bank(
        request.model_dir,
        request.speakers,
        request.config,
        precision=request.precision,
        device=request.device,
        progress=progress,
    )
    return TrainingResult(adapter=built.bank, metrics=built.metrics)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the one that started it dies (even `kill -9`),
    rather than leave it training for nobody until its next progress report finds the pipe
    closed. The thread that started it blocks until it ends, so it outlives it."""
    parent = multiprocessing.parent_process()
    with suppress(OSError, AttributeError):  # not Linux: the closed pipe ends it later
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return
    # The parent may have died before the request was made.
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def lower_priority(priority: TrainingPriority) -> None:
    """Gives the calling process's CPU time to serving: `idle` runs it only on CPU time nothing
    else wants (Linux SCHED_IDLE; nice 19 where that is refused), `low` at nice 19."""
    if priority == "normal":
        return
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux, or refused: the next best
            pass
        else:
            return
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)


def _limit_threads(threads: int) -> None:
    """Bounds every thread pool of the child before any torch work runs in it."""
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with suppress(RuntimeError):  # only possible before the first inter-op parallel work
        torch.set_num_interop_threads(1)
