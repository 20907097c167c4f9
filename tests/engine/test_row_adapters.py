"""The two ways a decode batch adds its rows' adapters (`row_adapters`) agree: per request (the
CPU's) and gathered into batched matmuls (CUDA's), on the CPU.

The gathered path sums over zero-padded ranks in another kernel, so the two agree to float32
rounding, not bit for bit: the products are compared within a tolerance, the decoder's logits
within a tolerance at every step, and whole transcripts exactly, computed in float32. (In
bfloat16 such a rounding difference can tip the next projection's input over a bf16 rounding
boundary, and a near-tie between two tokens the other way: seen once in six requests, a random
SAML adapter that garbles a word garbling it differently.)
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from app.engine.adaptation.lora.bank import Factors
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.rows import RowAdapter
from app.engine.backend import CpuBackend
from app.engine.decoder_pass import DecodeBatch, OutputHead
from app.engine.decoding import BatchDecoder
from app.engine.row_adapters import (
    AdapterRowsKind,
    Gathered,
    LayerFactors,
    PerRequest,
    RowAdapters,
)
from app.engine.tokens import SpecialTokens
from app.engine.types import Transcription, TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_adapter, random_saml
from tests.support.audio import speech_16k
from tests.support.batches import transcribe_together

IN, OUT = 48, 40
GREEDY = TranscriptionOptions(language="en", with_timestamps=False)
TIMESTAMPED = TranscriptionOptions(language="en", with_timestamps=True)
BEAMS = TranscriptionOptions(language="en", with_timestamps=False, beam_size=3)
SENTENCES = (
    ("Please call me back tomorrow morning.", 150),
    ("Turn left at the next traffic light.", 140),
    ("The quick brown fox jumps over the lazy dog.", 130),
)


def _factors(rank: int, seed: int) -> Factors:
    """A held column-major, as the bank hands it out."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, IN, generator=generator).T
    b = torch.randn(rank, OUT, generator=generator)
    return a, b


def _layers(*projections: Factors | None) -> list[LayerFactors]:
    """One layer per entry: projection "p" with those factors, "q" never adapted."""
    return [{"p": factors, "q": None} for factors in projections]


def _applied(
    adapters: RowAdapters, requests: Sequence[tuple[int, int]], layer: int, x: Tensor
) -> Tensor:
    adapters.arrange(requests)
    output = torch.zeros(x.shape[0], x.shape[1], OUT)
    adapters.apply(layer, "p", x, output)
    return output


def _admitted(adapters: RowAdapters, requests: list[list[LayerFactors]]) -> list[int]:
    return [adapters.admit(factors) for factors in requests]


def test_gathered_rows_get_what_each_request_gets_on_its_own() -> None:
    """A batch of: the base model, LoRA adapters of ranks 2, 8 and 4 (the rank-8 one shared by
    two requests, one of them with three beams), and one adapting only the second layer."""
    shared = _factors(8, seed=2)
    requests = [
        _layers(None, None),
        _layers(_factors(2, seed=1), _factors(2, seed=5)),
        _layers(shared, shared),
        _layers(_factors(4, seed=3), _factors(4, seed=6)),
        _layers(shared, shared),
        _layers(None, _factors(3, seed=4)),
    ]
    rows = [1, 1, 3, 1, 1, 2]
    per_request, gathered = PerRequest(), Gathered(torch.device("cpu"))
    arrangement = {
        kind: list(zip(_admitted(adapters, requests), rows, strict=True))
        for kind, adapters in (("per_request", per_request), ("gathered", gathered))
    }
    for tokens in (1, 5):  # decoder steps, and a pass over several tokens
        x = torch.randn(sum(rows), tokens, IN, generator=torch.Generator().manual_seed(tokens))
        for layer in (0, 1):
            expected = _applied(per_request, arrangement["per_request"], layer, x)
            actual = _applied(gathered, arrangement["gathered"], layer, x)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
            assert torch.equal(actual[0], torch.zeros(tokens, OUT)), "a base row gets nothing"
        assert not torch.equal(actual[1], actual[2]), "the rows really differ"


def test_a_released_slot_keeps_nothing_of_its_last_request() -> None:
    """Slots are reused as requests come and go, the banks grow in slots and in rank; a new
    request that leaves a projection alone gets nothing from whoever held its slot before."""
    gathered = Gathered(torch.device("cpu"))
    first, second = _admitted(gathered, [_layers(_factors(2, 1)), _layers(_factors(2, 2))])
    gathered.release(first)
    base_like = gathered.admit(_layers(None))
    wider = gathered.admit(_layers(_factors(16, 3)))
    assert base_like == first
    x = torch.randn(3, 1, IN)

    output = _applied(gathered, [(base_like, 1), (second, 1), (wider, 1)], 0, x)

    assert torch.equal(output[0], torch.zeros(1, OUT))
    a, b = _factors(2, 2)
    torch.testing.assert_close(output[1], x[1] @ a @ b, rtol=1e-5, atol=1e-4)
    a, b = _factors(16, 3)
    torch.testing.assert_close(output[2], x[2] @ a @ b, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    return [speech_16k(text, speed=speed) for text, speed in SENTENCES]


@pytest.fixture(scope="module")
def adapters(nf4_engine: WhisperEngine) -> list[AnyAdapter | None]:
    return [
        None,
        random_adapter(nf4_engine, 1),
        random_adapter(nf4_engine, 3, rank=8),
        random_saml(nf4_engine, 4),
    ]


@pytest.fixture(scope="module")
def fp32_engines(tiny_en_dir: Path) -> dict[AdapterRowsKind, WhisperEngine]:
    """tiny.en NF4 on the CPU computing in float32, with each way of adding the rows'
    adapters."""
    return {
        kind: WhisperEngine.load(
            tiny_en_dir,
            precision="nf4",
            device="cpu",
            threads=2,
            dtype="float32",
            adapter_rows=kind,
        )
        for kind in ("per_request", "gathered")
    }


def _teacher_forced(
    engine: WhisperEngine,
    kind: AdapterRowsKind,
    encoded: list[Tensor],
    rows: list[RowAdapter],
    prefix: list[int],
    tokens: list[list[int]],
) -> list[Tensor]:
    """The logits of a float32 decode batch in which every request joins and is then fed its
    `tokens`: a beam fork after two steps, the first request leaving after four, a late
    request joining after five. One [rows, vocab] tensor per step."""
    model = engine.loaded.model
    backend = CpuBackend(kind)
    batch = DecodeBatch(model, OutputHead(model, torch.float32, backend), torch.float32, backend)
    logits = [
        torch.stack(
            [
                batch.add(output, prefix, row, 16, [len(prefix) - 1])[0]
                for output, row in zip(encoded[:-1], rows[:-1], strict=True)
            ]
        )
    ]
    fed = [list(t) for t in tokens[:-1]]
    for step in range(8):
        if step == 2:
            batch.keep([[0, 0], *[[0] for _ in fed[1:]]])
            fed = [fed[0], fed[0], *fed[1:]]
        if step == 4:
            batch.keep([[], *[list(range(rows)) for rows in batch.groups[1:]]])
            fed = fed[2:]
        if step == 5:
            batch.add(encoded[-1], prefix, rows[-1], 16, [len(prefix) - 1])
            fed.append(list(tokens[-1]))
        logits.append(batch.step(torch.tensor([t[step] for t in fed])))
    return logits


@pytest.mark.slow
def test_the_decoder_gets_the_same_logits_through_either_path_step_by_step(
    fp32_engines: dict[AdapterRowsKind, WhisperEngine],
    audio: list[np.ndarray],
    adapters: list[AnyAdapter | None],
) -> None:
    """Mixed rows (the base model, two LoRA adapters, SAML, two adapters twice), with KV-cache
    steps, a beam fork, a request leaving and one joining late."""
    engine = fp32_engines["gathered"]
    choice = [*adapters, adapters[1], adapters[2]]
    tasks = [engine.open(audio[i % len(audio)], GREEDY, a) for i, a in enumerate(choice)]
    live = [task for task in tasks if task is not None]
    assert len(live) == len(choice)
    rows = [task.adapter for task in live]  # pinned while the tasks are open
    jobs = [task.jobs()[0] for task in live]
    loaded = engine.loaded
    tokens = SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    encoded = BatchDecoder(loaded.model, tokens).encode([job.mel for job in jobs], rows)
    generator = torch.Generator().manual_seed(0)
    fed = [torch.randint(0, tokens.eot, (8,), generator=generator).tolist() for _ in rows]

    args = (encoded, rows, jobs[0].prefix, fed)
    per_request = _teacher_forced(engine, "per_request", *args)
    gathered = _teacher_forced(engine, "gathered", *args)

    for expected, actual in zip(per_request, gathered, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-3)
        assert torch.equal(actual.argmax(dim=-1), expected.argmax(dim=-1))
    while not all(task.done for task in live):  # and their slots are free again
        engine.run_round(live)


@pytest.mark.slow
def test_transcripts_are_the_same_through_either_path(
    fp32_engines: dict[AdapterRowsKind, WhisperEngine],
    audio: list[np.ndarray],
    adapters: list[AnyAdapter | None],
) -> None:
    requests = [
        (audio[0], GREEDY, adapters[0]),
        (audio[1], TIMESTAMPED, adapters[1]),
        (audio[2], GREEDY, adapters[2]),
        (audio[0], BEAMS, adapters[3]),
        (audio[1], GREEDY, adapters[1]),
        (audio[2], TIMESTAMPED, adapters[3]),
    ]
    per_request = transcribe_together(fp32_engines["per_request"], requests)
    gathered = transcribe_together(fp32_engines["gathered"], requests)

    def tokens(results: list[Transcription]) -> list[list[list[int]]]:
        return [[segment.tokens for segment in result.segments] for result in results]

    assert [r.text for r in gathered] == [r.text for r in per_request]
    assert tokens(gathered) == tokens(per_request)
