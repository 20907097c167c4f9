"""Builds an expert bank in a child OS process, as `app.engine.training.process` trains
adapters: "spawn" (a fresh interpreter), the request pickled in (our own arrays and
dataclasses), progress back over a pipe, the bank back as `pqm-saml/1` bytes (never pickled
tensors), bounded threads and lowered priority, and on cancellation the child is ended
(SIGTERM, then SIGKILL), never left behind.

It reuses that module's supervision (`_supervise`, `_stop`, `_limit_threads`): the engine has no
public bank runner yet.
"""

import multiprocessing
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from app.engine.adaptation.saml.file import dump_saml
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.training.bank import BankConfig, PoolSpeaker, build_bank
from app.engine.training.data import check_utterance
from app.engine.training.errors import TrainingFailed
from app.engine.training.process import _limit_threads, _stop, _supervise, lower_priority
from app.engine.training.trainer import TrainingProgress, TrainingResult
from app.engine.types import Precision, TrainingPriority

__all__ = ["BankRequest", "bank_of", "build_in_subprocess"]


@dataclass(frozen=True, slots=True)
class BankRequest:
    model_dir: Path
    speakers: Sequence[PoolSpeaker]
    config: BankConfig
    precision: Precision = "nf4"
    priority: TrainingPriority = "normal"


def build_in_subprocess(
    request: BankRequest,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    grace_seconds: float = 3.0,
    poll_seconds: float = 0.1,
) -> TrainingResult:
    """Blocks until the child finishes (call it from a worker thread); the result's `adapter`
    is the bank. Raises as `run_in_subprocess` does: `TrainingCancelled` once `should_stop()`
    is true, `TrainingFailed` when the child fails or dies, `TrainingDataError` for unusable
    utterances before any process is started."""
    for speaker in request.speakers:
        for index, utterance in enumerate(speaker.utterances):
            check_utterance(utterance, index)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(request, sender), name="pqm-bank", daemon=True
    )
    child.start()
    sender.close()  # the child holds the only writer: its exit ends the pipe
    try:
        return _supervise(child, receiver, progress, should_stop, poll_seconds)
    finally:
        _stop(child, grace_seconds)
        receiver.close()


def bank_of(result: TrainingResult) -> SamlWeights:
    """The bank a `build_in_subprocess` result carries."""
    if not isinstance(result.adapter, SamlWeights) or result.adapter.kind != "bank":
        raise TrainingFailed("the bank-building process returned no expert bank")
    return result.adapter


def _child_main(request: BankRequest, sender: Connection) -> None:
    """Entry point of the bank-building process."""
    lower_priority(request.priority)
    _limit_threads(request.config.threads)
    try:
        result = build_bank(
            request.model_dir,
            request.speakers,
            request.config,
            precision=request.precision,
            progress=lambda update: sender.send(("progress", update)),
        )
        sender.send(("result", dump_saml(result.bank), result.metrics))
    except BaseException as exc:
        with suppress(OSError):
            sender.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
        raise SystemExit(1) from exc
    finally:
        sender.close()
