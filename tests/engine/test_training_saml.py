"""SAML training: a speaker's adapter from an expert bank through the gate, and a bank built
from a pool of speakers. Tiny shapes: the loop, not the accuracy (that is bench/enrolment.py)."""

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
import torch

from app.engine.adaptation.files import dump_any, load_any
from app.engine.adaptation.saml.config import SamlConfig
from app.engine.adaptation.saml.file import load_saml
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.training.bank import BankConfig, PoolSpeaker, build_bank
from app.engine.training.config import TrainingConfig
from app.engine.training.data import Utterance
from app.engine.training.gate import GateConfig
from app.engine.training.trainer import (
    ServedNow,
    ServingNumerics,
    train_adapter,
    train_with_gate,
)
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.adapters import random_saml
from tests.support.audio import speech_16k

SENTENCES = (
    "Please call me back after the meeting this afternoon.",
    "The train leaves from platform four at seven fifteen.",
    "We need more milk, bread and butter for breakfast.",
    "My sister moved to a small village near the coast.",
)
TINY_SAML = TrainingConfig(method="saml", epochs=1, batch_size=2)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def voice(name: str) -> list[Utterance]:
    return [Utterance(audio=speech_16k(text, voice=name), text=text) for text in SENTENCES]


def test_a_speaker_adapts_a_copy_of_the_bank_through_the_gate(
    tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> None:
    bank = random_saml(nf4_engine, 3, experts=3, window="fit")

    result = train_with_gate(
        tiny_en_dir,
        voice("de"),
        TINY_SAML,
        GateConfig(folds=2),
        served=ServedNow(None),
        numerics=ServingNumerics(compute_dtype="float32"),
        bank=bank,
    )

    adapter = result.adapter
    assert isinstance(adapter, SamlWeights)
    assert (adapter.kind, adapter.experts, adapter.encoder_window) == ("adapter", 3, "fit")
    assert set(adapter.tensors) == set(bank.tensors)
    moved = [n for n in bank.tensors if not torch.equal(bank.tensors[n], adapter.tensors[n])]
    assert any(n.startswith("routers.") for n in moved), "the routers were trained"
    assert any(n.endswith("experts_B") for n in moved), "the experts were trained"
    assert result.metrics["gate"]["folds"] == 2
    assert result.metrics["config"]["method"] == "saml"
    served = load_any(dump_any(adapter))
    nf4_engine.check_adapter(served)
    nf4_engine.check_adapter_bounds(served)
    options = TranscriptionOptions(language="en", with_timestamps=False)
    assert nf4_engine.transcribe(voice("de")[0].audio, options, served).text


def test_saml_training_without_a_bank_starts_fresh(
    tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> None:
    result = train_with_gate(
        tiny_en_dir,
        voice("en-us")[:2],
        TINY_SAML,
        GateConfig(folds=2),
        served=ServedNow(None),
        numerics=ServingNumerics(compute_dtype="float32"),
    )
    assert isinstance(result.adapter, SamlWeights)
    assert result.adapter.experts == TINY_SAML.saml.experts
    nf4_engine.check_adapter(result.adapter)


def test_a_bank_starts_each_expert_from_one_speaker_then_trains_the_mixture(
    tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> None:
    speakers = [
        PoolSpeaker("german", voice("de")[:3]),
        PoolSpeaker("french", voice("fr")[:2]),
        PoolSpeaker("scottish", voice("en-gb-scotland")[:1]),
    ]
    progress: list[float] = []

    result = build_bank(
        tiny_en_dir,
        speakers,
        BankConfig(experts=2, expert_epochs=1, epochs=1, router="depthwise"),
        progress=lambda update: progress.append(update.fraction),
    )

    bank = load_saml(dump_any(result.bank))
    assert (bank.kind, bank.experts, bank.router) == ("bank", 2, "depthwise")
    assert result.metrics["expert_speakers"] == ["german", "french"], "most recordings first"
    assert result.metrics["utterances"] == 6
    nf4_engine.check_adapter(bank)
    nf4_engine.check_adapter_bounds(bank)
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    b = next(t for n, t in bank.tensors.items() if n.endswith("experts_B"))
    assert not torch.equal(b[0], b[1]), "each expert learned its own speaker"


@pytest.mark.parametrize("trained", ["routers", "experts"])
def test_a_speaker_may_adapt_the_routers_or_the_experts_alone(
    tiny_en_dir: Path, nf4_engine: WhisperEngine, trained: Literal["routers", "experts"]
) -> None:
    bank = random_saml(nf4_engine, 4, experts=3, window="fit")

    result = train_adapter(
        tiny_en_dir, voice("de")[:2], [], replace(TINY_SAML, saml_trained=trained), bank=bank
    )

    moved = {n for n in bank.tensors if not torch.equal(bank.tensors[n], result.adapter.tensors[n])}
    assert moved
    assert all(n.startswith("routers.") == (trained == "routers") for n in moved)


def test_a_bank_of_rank_two_experts_keeps_samls_scale(
    tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> None:
    speakers = [PoolSpeaker("german", voice("de")[:2]), PoolSpeaker("french", voice("fr")[:2])]

    result = build_bank(
        tiny_en_dir, speakers, BankConfig(experts=2, rank=2, expert_epochs=1, epochs=1)
    )

    bank = load_saml(dump_any(result.bank))
    assert (bank.config.rank, bank.config.scale) == (2, SamlConfig().scale)
    a = next(t for n, t in bank.tensors.items() if n.endswith("experts_A"))
    assert a.shape[:2] == (2, 2)
    nf4_engine.check_adapter(bank)
