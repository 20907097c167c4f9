"""The facade runs every computing call on the inference thread, and says what storing means."""

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import pytest

from app.engine.adaptation.files import dump_any, read_any_header
from app.engine.adaptation.lora.file import AdapterFileError
from app.engine.adaptation.residency import AnyAdapter
from app.engine.facade import QueueLimits, SpeechEngine
from app.engine.recognizer import SpeechRecognizer
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k

INFERENCE_THREAD = "pqm-inference"


class ThreadSpy:
    """The real engine, noting the thread of every adapter check."""

    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self.threads: set[str] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def check_adapter(self, adapter: AnyAdapter) -> None:
        self.threads.add(threading.current_thread().name)
        self._engine.check_adapter(adapter)

    def check_adapter_bounds(self, adapter: AnyAdapter) -> None:
        self.threads.add(threading.current_thread().name)
        self._engine.check_adapter_bounds(adapter)


@pytest.fixture
def spy(nf4_engine: WhisperEngine) -> ThreadSpy:
    return ThreadSpy(nf4_engine)


@pytest.fixture
def engine(spy: ThreadSpy) -> Iterator[SpeechEngine]:
    facade = SpeechEngine(cast(SpeechRecognizer, spy), QueueLimits())
    yield facade
    facade.shutdown()


async def test_a_stored_file_is_prepared_on_the_inference_thread(
    engine: SpeechEngine, spy: ThreadSpy, nf4_engine: WhisperEngine
) -> None:
    adapter = random_adapter(nf4_engine, 3)

    weights = await engine.prepare_adapter(read_any_header(dump_any(adapter)))

    assert weights.tensors.keys() == adapter.tensors.keys()
    assert spy.threads == {INFERENCE_THREAD}


async def test_checking_an_upload_runs_on_the_inference_thread_and_marks_bounds(
    engine: SpeechEngine, spy: ThreadSpy, nf4_engine: WhisperEngine
) -> None:
    adapter = random_adapter(nf4_engine, 4)
    huge = replace(adapter, tensors={name: t * 1e6 for name, t in adapter.tensors.items()})

    fine = await engine.checked(read_any_header(dump_any(adapter)))
    marked = await engine.checked(huge)

    assert fine.out_of_bounds is None
    assert fine.data == dump_any(adapter)
    assert marked.out_of_bounds is not None
    assert spy.threads == {INFERENCE_THREAD}


async def test_an_adapter_for_another_model_is_refused(
    engine: SpeechEngine, nf4_engine: WhisperEngine
) -> None:
    adapter = random_adapter(nf4_engine, 5)
    foreign = replace(adapter, base_fingerprint="0" * 64)

    with pytest.raises(AdapterFileError):
        await engine.prepare_adapter(read_any_header(dump_any(foreign)))


async def test_transcribing_goes_through_the_queue(engine: SpeechEngine) -> None:
    text = (await engine.transcribe(speech_16k("Good morning."), TranscriptionOptions())).text

    assert "morning" in text.lower()
    assert engine.pending == 0
