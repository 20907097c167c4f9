"""bench.enrolment resumes: a speaker trained by an earlier run of the same code comes back."""

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from app.engine.whisper import WhisperEngine
from bench.enrolment import AdapterCache, Trained
from bench.speakers import SpeakerData, Utterance
from tests.support.adapters import random_adapter


def speaker(tmp_path: Path, name: str, seed: int) -> SpeakerData:
    path = tmp_path / f"{name}-{seed}.wav"
    noise = np.random.default_rng(seed).normal(0, 0.1, 16_000).astype(np.float32)
    sf.write(path, noise, 16_000)
    return SpeakerData(name=name, description="", train=[Utterance(path, "hello there")])


def test_a_trained_speaker_comes_back_and_different_audio_misses(
    tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> None:
    cache = AdapterCache(tmp_path / "cache", tiny_en_dir)
    alice = speaker(tmp_path, "alice", 1)
    adapter = random_adapter(nf4_engine, seed=3)
    cache.put("suite", alice, 1, Trained(adapter, {"rank": 4}, {"wall_seconds": 9.0}))

    again = AdapterCache(tmp_path / "cache", tiny_en_dir).get("suite", alice, 1)

    assert again is not None
    assert (again.info, again.training) == ({"rank": 4}, {"wall_seconds": 9.0})
    assert again.adapter.tensors.keys() == adapter.tensors.keys()
    for name, tensor in adapter.tensors.items():
        torch.testing.assert_close(again.adapter.tensors[name], tensor)
    assert cache.get("suite", speaker(tmp_path, "alice", 2), 1) is None
    assert cache.get("other-suite", alice, 1) is None
    assert cache.get("suite", alice, 2) is None
    assert AdapterCache(None, tiny_en_dir).get("suite", alice, 1) is None
