"""One request's failure is its own: a poisoned adapter (finite but huge values that drive its
decode to NaN or infinity) fails its request alone with `AdapterNumericError`, and every other
request of the batch gets the transcript it gets alone, bit for bit."""

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.rows import BASE_ROW
from app.engine.decoder_pass import DecodeBatch
from app.engine.errors import AdapterNumericError
from app.engine.types import TranscriptionOptions
from app.engine.whisper import TranscriptionTask, WhisperEngine
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k

GREEDY = TranscriptionOptions(language="en", with_timestamps=False)
TIMESTAMPED = TranscriptionOptions(language="en", with_timestamps=True)
SAMPLED = TranscriptionOptions(language="en", with_timestamps=False, temperature=0.6)
BEAMS = TranscriptionOptions(language="en", with_timestamps=False, beam_size=3)
DECODER_MODULE = "model.decoder.layers.1.encoder_attn.v_proj"


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    return [
        speech_16k("Please call me back tomorrow morning.", speed=150),
        speech_16k("Turn left at the next traffic light.", speed=140),
        speech_16k("The quick brown fox jumps over the lazy dog.", speed=130),
    ]


def _huge_alpha(engine: WhisperEngine) -> AdapterWeights:
    return dataclasses.replace(random_adapter(engine, 5), alpha=1e38)


def _huge_decoder_weight(engine: WhisperEngine) -> AdapterWeights:
    """Finite everywhere, one decoder weight 3e38: the encoder output stays finite, the
    decoder's logits do not."""
    adapter = random_adapter(engine, 6)
    tensors = dict(adapter.tensors)
    poisoned = tensors[f"{DECODER_MODULE}.lora_B"].clone()
    poisoned[0, 0] = 3e38
    tensors[f"{DECODER_MODULE}.lora_B"] = poisoned
    return dataclasses.replace(adapter, tensors=tensors)


POISONS: dict[str, Callable[[WhisperEngine], AdapterWeights]] = {
    "alpha 1e38": _huge_alpha,
    "a decoder weight 3e38": _huge_decoder_weight,
}


Request = tuple[np.ndarray, TranscriptionOptions, AdapterWeights | None]


def _open(engine: WhisperEngine, requests: list[Request]) -> list[TranscriptionTask]:
    tasks = [engine.open(a, options, adapter) for a, options, adapter in requests]
    assert all(task is not None for task in tasks)
    return [task for task in tasks if task is not None]


def _run(engine: WhisperEngine, tasks: list[TranscriptionTask]) -> None:
    while not all(task.done for task in tasks):
        engine.run_round([task for task in tasks if not task.done])


@pytest.mark.slow
@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
@pytest.mark.parametrize("poisoned_options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_a_poisoned_row_fails_alone_and_the_others_get_their_solo_results(
    nf4_engine: WhisperEngine,
    audio: list[np.ndarray],
    poison: Callable[[WhisperEngine], AdapterWeights],
    poisoned_options: TranscriptionOptions,
) -> None:
    healthy = random_adapter(nf4_engine, 1)
    poisoned = poison(nf4_engine)
    others: list[Request] = [
        (audio[0], GREEDY, None),
        (audio[1], SAMPLED, None),
        (audio[2], TIMESTAMPED, healthy),
        (audio[0], SAMPLED, healthy),
        (audio[1], BEAMS, None),
    ]
    alone = [nf4_engine.transcribe(a, options, adapter) for a, options, adapter in others]

    tasks = _open(nf4_engine, [*others[:2], (audio[2], poisoned_options, poisoned), *others[2:]])
    _run(nf4_engine, tasks)

    victim = tasks.pop(2)
    with pytest.raises(AdapterNumericError):
        victim.outcome()
    assert [task.outcome() for task in tasks] == alone
    assert victim.adapter == BASE_ROW, "the failed request gave its adapter slot back"


@pytest.mark.slow
def test_a_row_poisoned_mid_decode_leaves_while_the_others_go_on(
    nf4_engine: WhisperEngine, audio: list[np.ndarray]
) -> None:
    """The poisoned request joins a batch already decoding: the rows in flight finish as alone."""
    long_audio = np.concatenate([audio[2], audio[0]])
    alone = nf4_engine.transcribe(long_audio, TIMESTAMPED, None)
    [first] = _open(nf4_engine, [(long_audio, TIMESTAMPED, None)])
    for _ in range(4):
        nf4_engine.run_round([first])
    [victim] = _open(nf4_engine, [(audio[1], GREEDY, _huge_decoder_weight(nf4_engine))])

    _run(nf4_engine, [first, victim])

    with pytest.raises(AdapterNumericError):
        victim.outcome()
    assert first.outcome() == alone
    assert nf4_engine.transcribe(audio[1], GREEDY, None).text, "the engine still serves"


@pytest.mark.slow
def test_a_tiny_temperature_samples_as_greedy_decoding_picks(
    nf4_engine: WhisperEngine, audio: list[np.ndarray]
) -> None:
    """logits / 1e-39 overflowed, and `multinomial` then failed the whole batch; shifted by
    their maximum first, the logits sample the greedy choice."""
    tiny = TranscriptionOptions(language="en", with_timestamps=False, temperature=1e-39)
    greedy = nf4_engine.transcribe(audio[1], GREEDY, None)

    tasks = _open(nf4_engine, [(audio[0], GREEDY, None), (audio[1], tiny, None)])
    _run(nf4_engine, tasks)

    assert tasks[0].outcome() == nf4_engine.transcribe(audio[0], GREEDY, None)
    assert tasks[1].outcome().text == greedy.text


def test_a_failing_batch_fails_its_requests_instead_of_leaving_them_waiting(
    nf4_engine: WhisperEngine, audio: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the batch's forward pass (not numeric, not one row's) fails every request in
    it, and the engine serves the next request as if nothing happened."""
    expected = nf4_engine.transcribe(audio[1], GREEDY, None)
    tasks = _open(nf4_engine, [(audio[0], GREEDY, None), (audio[1], GREEDY, None)])
    nf4_engine.run_round(tasks)
    bug = RuntimeError("a bug in the decoder pass")

    def broken_step(self: DecodeBatch, tokens: torch.Tensor) -> torch.Tensor:
        raise bug

    with monkeypatch.context() as patch:
        patch.setattr(DecodeBatch, "step", broken_step)
        nf4_engine.run_round(tasks)

    assert all(task.done for task in tasks)
    for task in tasks:
        with pytest.raises(RuntimeError, match="a bug in the decoder pass"):
            task.outcome()
    assert nf4_engine.transcribe(audio[1], GREEDY, None) == expected
