"""Enrolment recordings joined into long-form windows (`TrainingConfig.joined_windows`)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.encoder import window_frames
from app.engine.features import HOP_LENGTH, SAMPLE_RATE
from app.engine.tokens import SpecialTokens
from app.engine.training import TrainingConfig, TrainingProgress, Utterance, train_adapter
from app.engine.training.data import MAX_UTTERANCE_SECONDS, collate
from app.engine.training.joined import join_utterances, joined_example
from app.engine.whisper import WhisperEngine
from tests.support.audio import speech_16k


def _recordings(seconds: list[float]) -> list[Utterance]:
    """Distinguishable audio: recording i holds the constant (i + 1) / 100."""
    return [
        Utterance(np.full(round(s * SAMPLE_RATE), (i + 1) / 100, np.float32), f"words {i}")
        for i, s in enumerate(seconds)
    ]


def test_each_recording_joins_at_most_one_window_of_at_most_30_seconds() -> None:
    recordings = _recordings([3.0, 7.5, 4.2, 11.0, 2.5, 6.0, 9.0, 5.5, 3.3, 8.1, 2.0, 4.4])

    windows = join_utterances(recordings, seed=3, timestamps=True)

    used = [part.text for window in windows for part in window.parts]
    assert len(used) == len(set(used))
    assert len(used) >= len(recordings) - 1
    for index, window in enumerate(windows):
        assert len(window.parts) >= 2
        assert len(window.audio) / SAMPLE_RATE <= MAX_UTTERANCE_SECONDS
        assert window.with_timestamps == (index % 2 == 0)
        for part, start in zip(window.parts, window.starts_s, strict=True):
            at = round(start * SAMPLE_RATE)
            assert np.array_equal(window.audio[at : at + len(part.audio)], part.audio)
        assert window.text == " ".join(part.text for part in window.parts)
    again = join_utterances(recordings, seed=3, timestamps=True)
    assert [(w.parts, w.starts_s) for w in again] == [(w.parts, w.starts_s) for w in windows]
    assert not any(w.with_timestamps for w in join_utterances(recordings, 3, timestamps=False))


def test_a_timestamped_window_is_written_as_whisper_writes_segments(
    nf4_engine: WhisperEngine,
) -> None:
    loaded = nf4_engine.loaded
    tokens = SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    recordings = [
        Utterance(np.zeros(SAMPLE_RATE, np.float32), "Hello there."),
        Utterance(np.zeros(2 * SAMPLE_RATE, np.float32), "General Kenobi."),
    ]
    timed, plain = join_utterances(recordings, seed=0, timestamps=True) + join_utterances(
        recordings, seed=0, timestamps=False
    )
    kwargs = {
        "feature_extractor": loaded.feature_extractor,
        "tokenizer": loaded.tokenizer,
        "tokens": tokens,
        "device": loaded.device,
        "encoder_window": "fit",
    }

    example = joined_example(timed, **kwargs)
    untimed = joined_example(plain, **kwargs)

    first, second = timed.parts
    second_start, second_end = (
        timed.starts_s[1],
        timed.starts_s[1] + len(second.audio) / SAMPLE_RATE,
    )
    text = loaded.tokenizer.decode(
        example.tokens[example.prefix_length :], decode_with_timestamps=True
    )
    assert text == (
        f"<|0.00|> {first.text}<|{len(first.audio) / SAMPLE_RATE:.2f}|>"
        f"<|{round(second_start / 0.02) * 0.02:.2f}|> {second.text}"
        f"<|{round(second_end / 0.02) * 0.02:.2f}|><|endoftext|>"
    )
    assert tokens.no_timestamps not in example.tokens[: example.prefix_length]
    assert untimed.tokens[example.prefix_length] == tokens.no_timestamps
    assert example.utterances == 2
    assert example.frames == window_frames(len(timed.audio) // HOP_LENGTH, "fit")
    labels = collate([example], tokens.eot).labels[0].tolist()
    assert labels[example.prefix_length - 1] == tokens.timestamp_begin  # <|0.00|> is predicted


def test_training_with_joined_windows_changes_the_adapter_and_reports_whole_progress(
    tiny_en_dir: Path,
) -> None:
    sentences = ("The cat sat on the mat.", "It rained all day long.", "Turn left at the bank.")
    recordings = [Utterance(speech_16k(text), text) for text in sentences]
    config = TrainingConfig(rank=2, alpha=4.0, targets=("q_proj",), epochs=1, batch_size=4)
    threads = torch.get_num_threads()
    progress: list[TrainingProgress] = []

    plain = train_adapter(tiny_en_dir, recordings, [], config)
    joined = train_adapter(
        tiny_en_dir,
        recordings,
        [],
        dataclasses.replace(config, joined_windows=True),
        progress=progress.append,
    )
    torch.set_num_threads(threads)

    assert joined.metrics["config"]["joined_windows"] is True
    assert progress[-1].fraction == pytest.approx(1.0)
    assert max(p.fraction for p in progress[:-1]) == pytest.approx(1.0)
    assert isinstance(plain.adapter, AdapterWeights)
    assert isinstance(joined.adapter, AdapterWeights)
    assert plain.adapter.tensors.keys() == joined.adapter.tensors.keys()
    assert any(
        not torch.equal(tensor, joined.adapter.tensors[name])
        for name, tensor in plain.adapter.tensors.items()
    )
