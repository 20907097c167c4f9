"""LoRA training on the real tiny.en with real (espeak-ng) speech: small runs, real gradients."""

import dataclasses
import json
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from app.engine.adaptation.files import dump_any
from app.engine.adaptation.lora.file import AdapterWeights, load_adapter
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.rows import RowAdapter
from app.engine.encoder import FULL_WINDOW_FRAMES, EncoderWindow
from app.engine.features import SAMPLE_RATE
from app.engine.text import word_errors
from app.engine.tokens import SpecialTokens
from app.engine.training import (
    TrainingCancelled,
    TrainingConfig,
    TrainingDataError,
    TrainingFailed,
    TrainingProgress,
    TrainingRequest,
    TrainingResult,
    Utterance,
    run_in_subprocess,
    split_train_dev,
    train_adapter,
    training_window,
)
from app.engine.training.data import (
    IGNORE_INDEX,
    BaseTargets,
    Example,
    build_example,
    collate,
    spec_augment,
)
from app.engine.training.gate import GateConfig
from app.engine.training.kld import regularised_loss_sum
from app.engine.training.process import die_with_parent, lower_priority
from app.engine.training.trainer import (
    EVALUATION_OPTIONS,
    ServedNow,
    ServingNumerics,
    train_with_gate,
)
from app.engine.types import TrainingPriority
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_adapter
from tests.support.audio import speech_16k
from tests.support.waiting import until

SENTENCES = (
    "Please call me back after the meeting this afternoon.",
    "The train leaves from platform four at seven fifteen.",
    "We need more milk, bread and butter for breakfast.",
    "My sister moved to a small village near the coast.",
    "Could you send the report to the whole team today?",
    "The garden looks lovely now that the roses are out.",
)

TINY = TrainingConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj"), epochs=2, batch_size=2)
"""A few seconds of training: enough to exercise every part of the loop."""


def german(text: str, speed: int = 150) -> Utterance:
    return Utterance(audio=speech_16k(text, voice="de", speed=speed), text=text)


@pytest.fixture(scope="module")
def utterances() -> list[Utterance]:
    return [german(text) for text in SENTENCES]


@pytest.fixture(scope="module")
def clear() -> Utterance:
    """A dev utterance the base model gets right at once (no fallback decoding: fast)."""
    return Utterance(audio=speech_16k(SENTENCES[3]), text=SENTENCES[3])


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """`train_adapter` sets torch's thread count for its process; keep the suite's setting."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@dataclasses.dataclass
class TinyRuns:
    first: TrainingResult
    second: TrainingResult
    progress: list[TrainingProgress]


@pytest.fixture(scope="module")
def tiny_runs(tiny_en_dir: Path, utterances: list[Utterance], clear: Utterance) -> TinyRuns:
    """The same tiny training twice (3 train, 1 dev utterances, 2 epochs)."""
    threads = torch.get_num_threads()
    progress: list[TrainingProgress] = []
    first = train_adapter(tiny_en_dir, utterances[:3], [clear], TINY, progress=progress.append)
    second = train_adapter(tiny_en_dir, utterances[:3], [clear], TINY)
    torch.set_num_threads(threads)
    return TinyRuns(first, second, progress)


def test_short_run_returns_an_adapter_serving_accepts(
    tiny_runs: TinyRuns, nf4_engine: WhisperEngine
) -> None:
    result = tiny_runs.first
    adapter = load_adapter(dump_any(result.adapter))
    nf4_engine.check_adapter(adapter)
    assert adapter.rank == 2
    assert adapter.encoder_window == TINY.encoder_window
    assert adapter.base_fingerprint == nf4_engine.info.fingerprint
    assert {name.rsplit(".", 1)[-1] for name in adapter.target_modules} == {"q_proj", "v_proj"}
    metrics = result.metrics
    expected = {
        "wer_before",
        "wer_after",
        "best_epoch",
        "epoch_dev_wer",
        "epoch_train_loss",
        "train_seconds",
        "train_utterances",
        "dev_utterances",
        "adapter_parameters",
        "base_parameters",
        "parameter_ratio",
    }
    assert expected <= set(metrics)
    assert (metrics["train_utterances"], metrics["dev_utterances"]) == (3, 1)
    assert 37_000_000 < metrics["base_parameters"] < 39_000_000  # tiny.en, counted unpacked
    assert metrics["adapter_parameters"] == adapter.parameter_count
    assert metrics["parameter_ratio"] < 0.02
    assert len(metrics["epoch_dev_wer"]) == metrics["epochs_run"] <= TINY.epochs
    assert metrics["wer_after"] == min(metrics["epoch_dev_wer"])
    fractions = [update.fraction for update in tiny_runs.progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_an_adapter_of_one_stack_holds_that_stack_only_and_serves(
    stack: str, tiny_en_dir: Path, utterances: list[Utterance], nf4_engine: WhisperEngine
) -> None:
    config = dataclasses.replace(TINY, stacks=(stack,), epochs=1)
    adapter = train_adapter(tiny_en_dir, utterances[:2], [], config).adapter

    nf4_engine.check_adapter(adapter)
    assert adapter.target_modules
    assert {name.split(".")[1] for name in adapter.target_modules} == {stack}
    assert json.loads(adapter.extra["stacks"]) == [stack]
    assert nf4_engine.transcribe(utterances[0].audio, EVALUATION_OPTIONS, adapter).text


def test_stacks_must_name_the_encoder_or_the_decoder() -> None:
    with pytest.raises(ValueError, match="stacks must be among"):
        TrainingConfig(stacks=())
    with pytest.raises(ValueError, match="stacks must be among"):
        TrainingConfig(stacks=("encoder", "proj_out"))


def canonical(adapter: AnyAdapter) -> tuple[dict[str, Any], bytes]:
    """The adapter file's header (parsed) and tensor bytes. safetensors writes the metadata
    from a hash map, in an order that varies from call to call, so files holding identical
    content can differ in the order of their header keys; nothing else may differ."""
    data = dump_any(adapter)
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def test_training_is_deterministic_given_the_seed(tiny_runs: TinyRuns) -> None:
    assert canonical(tiny_runs.first.adapter) == canonical(tiny_runs.second.adapter)
    assert (
        tiny_runs.first.metrics["epoch_train_loss"]
        == (tiny_runs.second.metrics["epoch_train_loss"])
    )


@pytest.mark.slow
def test_training_fits_the_speaker(tiny_en_dir: Path, utterances: list[Utterance]) -> None:
    """Six German-accented utterances, a few epochs: the loss falls, and what serving
    transcribes with the adapter (scored on two of the training utterances) gets better."""
    config = TrainingConfig(epochs=4, patience=4, batch_size=3, learning_rate=3e-3)
    result = train_adapter(tiny_en_dir, utterances, utterances[:2], config)
    losses = result.metrics["epoch_train_loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metrics["wer_before"] > 0
    assert result.metrics["wer_after"] < result.metrics["wer_before"]


def test_subprocess_round_trip_matches_in_process_training(
    tiny_en_dir: Path, utterances: list[Utterance], clear: Utterance, tiny_runs: TinyRuns
) -> None:
    request = TrainingRequest(tiny_en_dir, utterances[:3], [clear], TINY)
    progress: list[TrainingProgress] = []
    result = run_in_subprocess(request, progress.append)
    assert canonical(result.adapter) == canonical(tiny_runs.first.adapter)
    assert result.metrics["torch_threads"] == TINY.threads
    assert progress
    assert progress[-1].fraction == 1.0
    assert not multiprocessing.active_children()


def test_cancelling_stops_the_training_process_promptly(
    tiny_en_dir: Path, utterances: list[Utterance]
) -> None:
    request = TrainingRequest(tiny_en_dir, utterances, utterances[:1], TrainingConfig(epochs=50))
    progress: list[TrainingProgress] = []
    cancelled_at: list[float] = []

    def should_stop() -> bool:
        if progress and not cancelled_at:
            cancelled_at.append(time.monotonic())
        return bool(cancelled_at)

    with pytest.raises(TrainingCancelled):
        run_in_subprocess(request, progress.append, should_stop)
    assert time.monotonic() - cancelled_at[0] < 5.0
    assert not multiprocessing.active_children()


def test_a_crashing_training_process_raises_training_failed(
    tmp_path: Path, utterances: list[Utterance]
) -> None:
    request = TrainingRequest(tmp_path / "no-model-here", utterances[:2], [], TINY)
    with pytest.raises(TrainingFailed, match="no-model-here"):
        run_in_subprocess(request)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("window", ["full", "fit"])
def test_training_window_is_what_serving_encodes(
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
    window: EncoderWindow,
) -> None:
    audio = speech_16k(SENTENCES[0])  # clear speech: decoding it takes no fallback
    adapter = dataclasses.replace(
        random_adapter(nf4_engine, seed=1, strength=0.0), encoder_window=window
    )
    encoded: list[torch.Tensor] = []
    decoder = nf4_engine._decoder
    original = decoder.encode

    def recording(mels: list[torch.Tensor], adapters: list[RowAdapter]) -> list[torch.Tensor]:
        encoded.extend(mel.clone() for mel in mels)
        return original(mels, adapters)

    monkeypatch.setattr(decoder, "encode", recording)
    nf4_engine.transcribe(audio, EVALUATION_OPTIONS, adapter if window == "fit" else None)
    loaded = nf4_engine.loaded
    expected = training_window(
        loaded.feature_extractor, audio, loaded.device, adapter.encoder_window
    )
    assert len(encoded) == 1
    assert torch.equal(encoded[0], expected)
    if window == "fit":
        assert expected.shape[-1] < FULL_WINDOW_FRAMES


def test_examples_score_only_the_transcript(nf4_engine: WhisperEngine) -> None:
    loaded = nf4_engine.loaded
    tokens = SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    audio = np.zeros(SAMPLE_RATE, dtype=np.float32)
    examples = [
        build_example(
            Utterance(audio, text),
            feature_extractor=loaded.feature_extractor,
            tokenizer=loaded.tokenizer,
            tokens=tokens,
            device=loaded.device,
            window="fit",
        )
        for text in ("Hello there.", "A somewhat longer sentence to pad against.")
    ]
    batch = collate(examples, pad_token=tokens.eot)
    assert examples[0].tokens[:2] == (tokens.sot, tokens.no_timestamps)
    assert examples[0].tokens[-1] == tokens.eot
    text_ids = loaded.tokenizer.encode(" Hello there.", add_special_tokens=False)
    assert batch.input_ids[0, : 2 + len(text_ids)].tolist() == [*examples[0].tokens[:-1]]
    scored = batch.labels[0][batch.labels[0] != IGNORE_INDEX].tolist()
    assert scored == [*text_ids, tokens.eot]
    assert batch.labels[0, 0] == IGNORE_INDEX  # <|notimestamps|> is given, not predicted
    assert batch.target_count == sum(example.target_count for example in examples)


def test_spec_augment_masks_bands_and_spans_of_a_copy_reproducibly() -> None:
    mel = torch.randn(3, 80, 400)
    first = spec_augment(mel, random.Random(5))
    again = spec_augment(mel, random.Random(5))

    torch.testing.assert_close(first, again)
    assert not torch.equal(first, mel)
    for row in range(3):
        fill = mel[row].mean()
        masked = first[row] != mel[row]
        assert torch.all(first[row][masked] == fill)
        bands = masked.all(dim=1).sum()  # whole mel bins masked
        spans = masked.all(dim=0).sum()  # whole frames masked
        assert bands <= 2 * 10
        assert spans <= 2 * int(0.05 * 400)
        assert masked.sum() == bands * 400 + spans * 80 - bands * spans


def test_without_the_base_the_loss_is_the_transcript_cross_entropy() -> None:
    logits = torch.randn(2, 5, 50)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 7, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 9]])
    plain = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    torch.testing.assert_close(regularised_loss_sum(logits, labels, [], 0.0), plain)


def test_the_regularised_target_mixes_the_transcript_with_the_base_distribution() -> None:
    logits = torch.randn(1, 4, 40)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 7]])
    base = torch.softmax(torch.randn(3, 40), dim=-1)  # the whole vocabulary: k = 40
    order = torch.argsort(base, dim=-1, descending=True)
    example = Example(
        mel=torch.zeros(80, 10),
        tokens=(0, 3, 4, 7),
        prefix_length=1,
        base=BaseTargets(order, base.gather(1, order)),
    )
    log_probs = torch.log_softmax(logits[0, 1:], dim=-1)
    hard = -log_probs[torch.arange(3), labels[0, 1:]].sum()
    soft = -(base * log_probs).sum()

    mixed = regularised_loss_sum(logits, labels, [example], 0.3)

    torch.testing.assert_close(mixed, 0.7 * hard + 0.3 * soft)


@pytest.fixture(scope="module")
def no_dev_run(tiny_en_dir: Path, utterances: list[Utterance]) -> AdapterWeights:
    """TINY on 3 utterances with no dev set: every epoch runs, the last is kept."""
    adapter = train_adapter(tiny_en_dir, utterances[:3], [], TINY).adapter
    assert isinstance(adapter, AdapterWeights)
    return adapter


@pytest.mark.parametrize("change", [{"spec_augment": True}, {"kl_weight": 0.5}])
def test_regularisation_runs_and_changes_what_is_learned(
    change: dict[str, Any],
    tiny_en_dir: Path,
    utterances: list[Utterance],
    no_dev_run: AdapterWeights,
) -> None:
    config = dataclasses.replace(TINY, **change)
    tensors = train_adapter(tiny_en_dir, utterances[:3], [], config).adapter.tensors
    assert tensors.keys() == no_dev_run.tensors.keys()
    assert any(not torch.equal(t, no_dev_run.tensors[name]) for name, t in tensors.items())


def test_utterances_longer_than_one_window_are_refused(tiny_en_dir: Path) -> None:
    long = Utterance(np.zeros(31 * SAMPLE_RATE, dtype=np.float32), "too long")
    short = Utterance(np.zeros(SAMPLE_RATE, dtype=np.float32), "fine")
    with pytest.raises(TrainingDataError, match="at most 30 s"):
        train_adapter(tiny_en_dir, [short, long], [], TINY)
    with pytest.raises(TrainingDataError, match="at most 30 s"):
        run_in_subprocess(TrainingRequest(tiny_en_dir, [short], [long], TINY))


def test_split_train_dev_is_deterministic_and_disjoint() -> None:
    items = [Utterance(np.zeros(1600, dtype=np.float32), f"u{i}") for i in range(60)]
    train, dev = split_train_dev(items, 0.15, seed=7)
    again = split_train_dev(items, 0.15, seed=7)
    assert [u.text for u in train] == [u.text for u in again[0]]
    assert len(dev) == 9
    assert len(train) == 51
    assert not {u.text for u in train} & {u.text for u in dev}
    assert len(split_train_dev(items[:5], 0.15, seed=0, min_dev=3)[1]) == 3
    assert split_train_dev(items[:1], 0.15, seed=0)[1] == []


def _scheduling_after(priority: TrainingPriority) -> tuple[int, int]:
    lower_priority(priority)
    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize(
    ("priority", "policy", "niceness"),
    [("idle", os.SCHED_IDLE, 0), ("low", os.SCHED_OTHER, 19), ("normal", os.SCHED_OTHER, 0)],
)
def test_the_training_process_yields_the_cpu_to_serving(
    priority: TrainingPriority, policy: int, niceness: int
) -> None:
    """Checked in a child process, as training runs (the test process keeps its priority).
    Niceness is inherited: a suite run under `nice` starts the child that nice already."""
    inherited = os.getpriority(os.PRIO_PROCESS, 0)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as child:
        expected = (policy, max(niceness, inherited))
        assert child.submit(_scheduling_after, priority).result() == expected
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def _train_forever(pids: "multiprocessing.Queue[int]") -> None:
    """A training process that never reports progress: only its parent's death can end it."""
    die_with_parent()
    pids.put(os.getpid())
    time.sleep(3600)


def _start_training(pids: "multiprocessing.Queue[int]") -> None:
    trainer = multiprocessing.get_context("fork").Process(target=_train_forever, args=(pids,))
    trainer.start()
    trainer.join()


async def test_the_training_process_dies_with_its_parent_even_by_sigkill() -> None:
    context = multiprocessing.get_context("fork")
    pids: multiprocessing.Queue[int] = context.Queue()
    parent = context.Process(target=_start_training, args=(pids,))
    parent.start()
    trainer = psutil.Process(pids.get(timeout=60))
    try:
        parent.kill()
        parent.join()

        async def gone() -> bool:
            return not trainer.is_running() or trainer.status() == psutil.STATUS_ZOMBIE

        await until(gone, 30, "the orphaned training process gone")
    finally:
        if trainer.is_running():
            trainer.kill()


def test_the_gate_scores_every_utterance_held_out_then_trains_on_all(
    tiny_en_dir: Path, utterances: list[Utterance]
) -> None:
    progress: list[TrainingProgress] = []
    served = ServedNow(None, "the base model")

    result = train_with_gate(
        tiny_en_dir,
        utterances[:4],
        TINY,
        GateConfig(folds=2),
        served=served,
        numerics=ServingNumerics(compute_dtype="float32", base_window="full"),
        progress=progress.append,
    )

    gate = result.metrics["gate"]
    assert (gate["folds"], gate["utterances"]) == (2, 4)
    assert gate["words"] == sum(word_errors(text, text)[1] for text in SENTENCES[:4])
    assert gate["reason"].startswith(("activated: on 4 recordings", "not activated: on 4"))
    assert "the base model made" in gate["reason"]
    assert gate["activate"] is (
        gate["saved_low"] > 0 and gate["errors_new"] < gate["errors_served"]
    )
    assert (result.metrics["wer_before"], result.metrics["wer_after"]) == (
        gate["wer_served"],
        gate["wer_new"],
    )
    assert result.metrics["train_utterances"] == 4
    assert result.metrics["epochs_run"] == TINY.epochs, "no early stopping: nothing held out"
    assert result.adapter.extra["train_utterances"] == "4"
    fractions = [update.fraction for update in progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    stages = {update.message.split(",")[0] for update in progress}
    assert {"fold 1", "fold 2", "final adapter"} <= stages
