"""A request's transcript does not depend on what else is in its batch.

Solo first, then the same requests advanced together through `open` / `run_round` (as the
scheduler does), with different adapters, audio lengths, encoder windows and prefixes in one
batch: every result, down to the log-probabilities, must be the one the request gets alone.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional

from app.engine.adaptation.residency import AnyAdapter
from app.engine.backend import CpuBackend
from app.engine.dense import INVARIANT_ROWS
from app.engine.projections import BaseWeights, Projection
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_adapter, random_saml
from tests.support.audio import speech_16k
from tests.support.batches import transcribe_together

GREEDY = TranscriptionOptions(language="en", with_timestamps=False)
TIMESTAMPED = TranscriptionOptions(language="en", with_timestamps=True)
PROMPTED = TranscriptionOptions(language="en", with_timestamps=False, prompt="Meeting notes.")
BEAMS = TranscriptionOptions(language="en", with_timestamps=False, beam_size=4)
BEAMS_TIMESTAMPED = TranscriptionOptions(language="en", with_timestamps=True, beam_size=3)
SENTENCES = (
    ("The quick brown fox jumps over the lazy dog.", 130),
    ("Please call me back tomorrow morning.", 150),
    ("We should meet at the station at seven, or a little later if the train is late.", 160),
    ("Turn left at the next traffic light.", 140),
)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    return [speech_16k(text, speed=speed) for text, speed in SENTENCES]


@pytest.fixture(scope="module")
def adapters(nf4_engine: WhisperEngine) -> list[AnyAdapter | None]:
    """The base model, LoRA adapters (one on a fitted window), SAML adapters (one with
    depthwise routers on a fitted window)."""
    fit = dataclasses.replace(random_adapter(nf4_engine, 2), encoder_window="fit")
    return [
        None,
        random_adapter(nf4_engine, 1),
        fit,
        random_adapter(nf4_engine, 3, rank=8),
        random_saml(nf4_engine, 4),
        random_saml(nf4_engine, 5, router="depthwise", window="fit"),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), [(1536, 384), (384, 1536)])
def test_projection_rows_do_not_depend_on_their_neighbours(
    dtype: torch.dtype, out_features: int, in_features: int
) -> None:
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16 kernels; the engine computes in float32 here")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    projection = Projection.build(BaseWeights(weight.float(), None), dtype, pack=CpuBackend().pack)
    assert projection.packed is not None
    # Activations as the decoder feeds them (fc2 reads GELU outputs): one-row kernels that sum
    # in another order showed on such inputs, one row in ten.
    x = functional.gelu(torch.randn(6 * INVARIANT_ROWS, 1, in_features, generator=generator))
    alone = torch.cat([projection(x[i : i + 1]) for i in range(x.shape[0])])
    for rows in (2, 7, INVARIANT_ROWS, INVARIANT_ROWS + 1, INVARIANT_ROWS + 5, x.shape[0]):
        assert torch.equal(projection(x[:rows]), alone[:rows]), rows


@pytest.mark.slow
def test_every_request_gets_its_solo_result_in_a_mixed_batch(
    nf4_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    requests = [
        (audio[0], GREEDY, adapters[0]),
        (audio[1], GREEDY, adapters[1]),
        (audio[2], TIMESTAMPED, adapters[2]),
        (audio[3], PROMPTED, adapters[3]),
        (audio[0], GREEDY, adapters[1]),
        (audio[1], TIMESTAMPED, adapters[0]),
        (audio[2], GREEDY, adapters[3]),
        (audio[3], GREEDY, adapters[2]),
        (audio[0], BEAMS, adapters[2]),
        (audio[2], BEAMS_TIMESTAMPED, adapters[0]),
        (audio[1], GREEDY, adapters[4]),
        (audio[3], TIMESTAMPED, adapters[5]),
        (audio[0], PROMPTED, adapters[4]),
        (audio[2], BEAMS, adapters[5]),
    ]
    alone = [nf4_engine.transcribe(a, options, adapter) for a, options, adapter in requests]
    together = transcribe_together(nf4_engine, requests)

    assert together == alone
    texts = {result.text for result in alone[:4]}
    assert len(texts) == 4, "the requests must really differ"


@pytest.mark.slow
def test_the_same_request_repeated_in_one_batch_gets_the_same_result(
    nf4_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    requests = [(audio[1], GREEDY, adapters[1])] * 5 + [(audio[1], GREEDY, None)] * 3
    results = transcribe_together(nf4_engine, requests)
    assert results[:5] == [nf4_engine.transcribe(audio[1], GREEDY, adapters[1])] * 5
    assert results[5:] == [nf4_engine.transcribe(audio[1], GREEDY, None)] * 3


@pytest.mark.slow
def test_a_request_joining_mid_decode_leaves_first_with_its_solo_result(
    nf4_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    long_audio = np.concatenate([audio[2], audio[0], audio[3]])
    long_alone = nf4_engine.transcribe(long_audio, TIMESTAMPED, adapters[1])
    short_alone = nf4_engine.transcribe(audio[1], GREEDY, adapters[4])

    long_task = nf4_engine.open(long_audio, TIMESTAMPED, adapters[1])
    assert long_task is not None
    for _ in range(5):  # the long request is a few tokens into its decode
        nf4_engine.run_round([long_task])
    short_task = nf4_engine.open(audio[1], GREEDY, adapters[4])
    assert short_task is not None
    rounds = 0
    while not short_task.done:
        nf4_engine.run_round([long_task, short_task])
        rounds += 1
    assert not long_task.done, "the short request did not wait for the long one"
    while not long_task.done:
        nf4_engine.run_round([long_task])

    assert short_task.outcome() == short_alone
    assert long_task.outcome() == long_alone
    assert rounds <= len(short_alone.segments[0].tokens) + 3


@pytest.mark.slow
def test_transcribe_all_gives_each_clip_its_solo_result(
    nf4_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    """What the enrolment gate scores with: batches of `batch_size`, the last one short."""
    clips = [*audio, audio[0]]
    together = nf4_engine.transcribe_all(clips, GREEDY, adapters[2], batch_size=3)
    assert together == [nf4_engine.transcribe(clip, GREEDY, adapters[2]) for clip in clips]
