"""The engine on CUDA (`pytest -m gpu`; skipped where torch sees no GPU): NF4 through
bitsandbytes' CUDA kernels, mixed-adapter batches with the gathered adapter path, training in
the child process, every shape of the Whisper family.

What is guaranteed about a request alone and in a batch on CUDA. On the CPU batching is
invisible bit for bit; on CUDA it is not promised: cuBLAS picks its kernels by matrix shape, so
a row's sums run in another order as the batch grows, and the gathered adapter path pads ranks
and sums in batched kernels. What holds instead, and is tested here:

* logits: fed the same tokens, every row's logits in a mixed batch differ from the logits it
  gets alone by no more than bfloat16 compute itself changes them: at most the largest
  difference between the requests' solo logits in bfloat16 and in float32 (`_gap_and_bound`);
* greedy transcripts: a batched transcript can leave the solo one only at a step where the solo
  decode's top two tokens were within twice that bound of each other (a near-tie); elsewhere
  the tokens are the same.
"""

from dataclasses import replace
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from torch import Tensor

from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.residency import AnyAdapter
from app.engine.backend import backend_for
from app.engine.decoder_pass import DecodeBatch, OutputHead
from app.engine.decoding import BatchDecoder
from app.engine.loading import NF4_BLOCK_SIZE, quantized_linear_count
from app.engine.search import LogitRules
from app.engine.tokens import SpecialTokens
from app.engine.training import TrainingConfig, TrainingRequest, Utterance, run_in_subprocess
from app.engine.types import Transcription, TranscriptionOptions
from app.engine.whisper import TranscriptionTask, WhisperEngine
from tests.support.adapters import random_adapter, random_saml
from tests.support.audio import speech_16k
from tests.support.whisper_family import FAMILIES, Family, build_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]

GREEDY = TranscriptionOptions(language="en", with_timestamps=False)
SENTENCES = (
    ("The quick brown fox jumps over the lazy dog.", 130),
    ("Please call me back tomorrow morning.", 150),
    ("Turn left at the next traffic light.", 140),
)
FED_TOKENS = 8
"""Tokens each request is fed after its prefix when logits are compared."""


@pytest.fixture(scope="module")
def cuda_engine(tiny_en_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(tiny_en_dir, precision="nf4", device="cuda")


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    return [speech_16k(text, speed=speed) for text, speed in SENTENCES]


@pytest.fixture(scope="module")
def adapters(cuda_engine: WhisperEngine) -> list[AnyAdapter | None]:
    return [
        None,
        random_adapter(cuda_engine, 1),
        random_adapter(cuda_engine, 3, rank=8),
        random_saml(cuda_engine, 4),
    ]


Request = tuple[np.ndarray, AnyAdapter | None]


def _finish(engine: WhisperEngine, tasks: list[TranscriptionTask]) -> None:
    while not all(task.done for task in tasks):
        engine.run_round(tasks)


def _special_tokens(engine: WhisperEngine) -> SpecialTokens:
    loaded = engine.loaded
    return SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)


def _decoded(result: Transcription) -> list[int]:
    return [token for segment in result.segments for token in segment.tokens]


def _teacher_forced(
    engine: WhisperEngine,
    dtype: torch.dtype,
    tasks: list[TranscriptionTask],
    fed: list[list[int]],
    *,
    together: bool,
) -> list[Tensor]:
    """Each task's first window decoded in `dtype` and fed its tokens `fed` (all as long):
    every request in one decode batch (`together`) or each in its own. Per request, its logits
    after the prefix and after every fed token [len(fed) + 1, vocab]."""
    loaded = engine.loaded
    model, backend = loaded.model, backend_for(loaded.device)
    jobs = [task.jobs()[0] for task in tasks]
    rows = [task.adapter for task in tasks]
    encoded = BatchDecoder(model, _special_tokens(engine), dtype).encode(
        [job.mel for job in jobs], rows
    )
    head = OutputHead(model, dtype, backend)
    shared = DecodeBatch(model, head, dtype, backend)
    batches = [shared if together else DecodeBatch(model, head, dtype, backend) for _ in tasks]
    steps = len(fed[0])
    logits = [
        [batch.add(output, job.prefix, row, steps, [len(job.prefix) - 1])[0]]
        for batch, output, job, row in zip(batches, encoded, jobs, rows, strict=True)
    ]
    for step in range(steps):
        if together:
            stepped = list(shared.step(torch.tensor([f[step] for f in fed], device=model.device)))
        else:
            stepped = [
                batch.step(torch.tensor([f[step]], device=model.device))[0]
                for batch, f in zip(batches, fed, strict=True)
            ]
        for own, row_logits in zip(logits, stepped, strict=True):
            own.append(row_logits)
    return [torch.stack(own) for own in logits]


def _gap(first: list[Tensor], second: list[Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))


def _gap_and_bound(
    engine: WhisperEngine, requests: list[Request], options: TranscriptionOptions
) -> tuple[float, float]:
    """Fed `FED_TOKENS` of each request's own solo transcript (its text, the end of text, over
    again): the largest difference batching makes to any request's logits (in the engine's
    compute dtype), and the largest difference bfloat16 compute makes to any request's solo
    logits (the bound)."""
    eot = _special_tokens(engine).eot
    fed = []
    for clip, adapter in requests:
        text = [t for t in _decoded(engine.transcribe(clip, options, adapter)) if t < eot]
        fed.append(([*text, eot] * FED_TOKENS)[:FED_TOKENS])
    opened = [engine.open(clip, options, adapter) for clip, adapter in requests]
    tasks = [task for task in opened if task is not None]
    assert len(tasks) == len(requests)
    dtype = engine.compute_dtype
    alone = _teacher_forced(engine, dtype, tasks, fed, together=False)
    together = _teacher_forced(engine, dtype, tasks, fed, together=True)
    in_bf16 = _teacher_forced(engine, torch.bfloat16, tasks, fed, together=False)
    in_fp32 = _teacher_forced(engine, torch.float32, tasks, fed, together=False)
    _finish(engine, tasks)  # their slots are free again
    return _gap(together, alone), _gap(in_bf16, in_fp32)


def _solo_margin(engine: WhisperEngine, request: Request, tokens: list[int], step: int) -> float:
    """How far apart, after Whisper's rules, the logits of the top two tokens were at `step` of
    the request's greedy solo decode (`tokens`, without timestamps)."""
    clip, adapter = request
    task = engine.open(clip, GREEDY, adapter)
    assert task is not None
    special = _special_tokens(engine)
    [logits] = _teacher_forced(
        engine, engine.compute_dtype, [task], [tokens[:step]], together=False
    )
    _finish(engine, [task])
    scores = logits[-1].float().clone()
    vocab = engine.loaded.model.config.vocab_size
    LogitRules(special, vocab, scores.device).apply(scores, tokens[:step], step, False)
    top = scores.topk(2).values
    return float(top[0] - top[1])


def test_nf4_loads_on_the_gpu_and_transcribes(cuda_engine: WhisperEngine) -> None:
    model = cuda_engine.model
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 4 * 6 + 4 * 10 == quantized_linear_count(model)
    for layer in linears:
        state = layer.weight.quant_state
        assert (state.quant_type, state.blocksize) == ("nf4", NF4_BLOCK_SIZE)
        assert layer.weight.device.type == "cuda"
        assert layer.weight.numel() == layer.in_features * layer.out_features // 2
    assert cuda_engine.info.device.startswith("cuda")
    assert cuda_engine.compute_dtype == torch.bfloat16

    text = cuda_engine.transcribe(speech_16k(SENTENCES[0][0], speed=120), GREEDY).text

    assert "lazy dog" in text.lower()


def test_nf4_dequantises_on_the_gpu_as_on_the_cpu(
    cuda_engine: WhisperEngine, nf4_engine: WhisperEngine
) -> None:
    """bitsandbytes' CUDA kernels quantise and dequantise the checkpoint as its CPU ones do."""
    on_gpu, on_cpu = cuda_engine.base_weight_norms(), nf4_engine.base_weight_norms()
    assert on_gpu.keys() == on_cpu.keys()
    for name, norm in on_cpu.items():
        assert on_gpu[name] == pytest.approx(norm, rel=1e-5), name


def test_a_mixed_batch_stays_within_the_bound_of_each_solo_request(
    cuda_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    """Logits, step by step: the base model, two LoRA adapters, SAML, and one LoRA twice."""
    requests: list[Request] = [(audio[i % 3], a) for i, a in enumerate([*adapters, adapters[1]])]

    gap, bound = _gap_and_bound(cuda_engine, requests, GREEDY)

    print(f"\nbatched vs solo logits: {gap:.4g} at most; bf16 vs fp32: {bound:.4g}")
    assert gap <= bound


def test_batched_transcripts_leave_the_solo_ones_only_at_near_ties(
    cuda_engine: WhisperEngine, audio: list[np.ndarray], adapters: list[AnyAdapter | None]
) -> None:
    """Greedy transcripts of the base model, LoRA and SAML adapters, each clip with each: alone
    and in one batch. Where a batched transcript differs, its solo decode's top two tokens at
    the first difference were within twice the bound (`_gap_and_bound`). (A request that fell
    back to sampling is not a greedy decode: it is counted, not checked.)"""
    requests: list[Request] = [(clip, adapter) for clip in audio for adapter in adapters]
    _, bound = _gap_and_bound(cuda_engine, requests, GREEDY)
    alone = [cuda_engine.transcribe(clip, GREEDY, adapter) for clip, adapter in requests]
    opened = [cuda_engine.open(clip, GREEDY, adapter) for clip, adapter in requests]
    tasks = [task for task in opened if task is not None]
    assert len(tasks) == len(requests)

    _finish(cuda_engine, tasks)

    together = [task.outcome() for task in tasks]
    changed = 0
    for request, solo, batched in zip(requests, alone, together, strict=True):
        solo_tokens, batched_tokens = _decoded(solo), _decoded(batched)
        if batched_tokens == solo_tokens:
            continue
        changed += 1
        if any(segment.temperature > 0 for segment in [*solo.segments, *batched.segments]):
            continue  # a fallback sampled it: not a greedy decode to compare
        pairs = zip(solo_tokens, batched_tokens, strict=False)
        step = next((i for i, (a, b) in enumerate(pairs) if a != b), len(solo_tokens))
        step = min(step, len(solo_tokens), len(batched_tokens))
        assert _solo_margin(cuda_engine, request, solo_tokens, step) <= 2 * bound
    print(f"\n{changed} of {len(requests)} batched transcripts differ from their solo ones")
    assert len({result.text for result in alone}) > len(audio), "the adapters must matter"


def test_lora_trains_on_the_gpu_in_the_child_process(tiny_en_dir: Path) -> None:
    """The training process the service starts, told the service's device."""
    texts = (
        "Please call me back after the meeting this afternoon.",
        "The train leaves from platform four at seven fifteen.",
    )
    train = [Utterance(audio=speech_16k(text, voice="de"), text=text) for text in texts]
    config = TrainingConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj"), epochs=1, batch_size=2)

    result = run_in_subprocess(
        TrainingRequest(model_dir=tiny_en_dir, train=train, dev=[], config=config, device="cuda")
    )

    assert result.metrics["device"].startswith("cuda")
    adapter = result.adapter
    assert isinstance(adapter, AdapterWeights)
    b_factors = [t for name, t in adapter.tensors.items() if name.endswith("lora_B")]
    assert b_factors
    assert all(bool(torch.isfinite(t).all()) for t in adapter.tensors.values())
    assert any(bool(t.abs().max() > 0) for t in b_factors), "a step moved B off zero"


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def family_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Family, WhisperEngine]:
    family: Family = request.param
    model_dir = build_checkpoint(family, tmp_path_factory.mktemp("family") / family.name)
    return family, WhisperEngine.load(model_dir, precision="nf4", device="cuda")


def test_every_family_shape_decodes_on_the_gpu_within_the_bound(
    family_engine: tuple[Family, WhisperEngine],
) -> None:
    """Random weights decode arbitrary tokens, often near ties: the logits are compared, not
    the transcripts."""
    family, engine = family_engine
    encoder_layers, decoder_layers = family.scaled_layers
    assert quantized_linear_count(engine.model) == encoder_layers * 6 + decoder_layers * 10
    noise = (np.random.default_rng(0).standard_normal(2 * 16_000) * 0.1).astype(np.float32)
    adapter = random_adapter(engine, seed=1, strength=0.05)
    plain = replace(GREEDY, language=family.languages[-1] if family.multilingual else "en")
    requests: list[Request] = [(noise, None), (noise, adapter)]

    gap, bound = _gap_and_bound(engine, requests, plain)

    assert gap <= bound
    assert bound > 0, "bfloat16 and float32 must differ, or the bound says nothing"
