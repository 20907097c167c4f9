"""Plain data the engine takes and returns (no torch types leak out of the engine)."""

from dataclasses import dataclass, field
from typing import Literal

Precision = Literal["nf4", "int8", "fp32"]
ComputeDtype = Literal["auto", "float32", "bfloat16"]
"""What projections compute in (see `dense.compute_dtype`)."""
EncoderWindow = Literal["full", "fit", "fit10"]
"""`full`: always 30 s. `fit`: the speech rounded up to whole seconds, plus a second of margin
(at least 2 s; what adapters are trained on). `fit10`: the same, but at least 10 s (an option
for the base model, which was never trained on short windows; see `encoder`)."""
TrainingPriority = Literal["idle", "low", "normal"]
"""CPU priority of a training process beside serving (see `training.process`)."""


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    language: str | None = None
    """ISO-639-1 code; None lets a multilingual model detect it (English-only models force `en`)."""
    prompt: str | None = None
    """Previous-context text fed to the decoder as `<|startofprev|>` tokens."""
    temperature: float = 0.0
    """0 = greedy with temperature fallback on failure; > 0 samples at that temperature first."""
    with_timestamps: bool = True
    beam_size: int = 1
    """Hypotheses kept by beam search at temperature 0 (1: greedy). Fallback temperatures
    sample a single hypothesis, as in Whisper."""
    task: Literal["transcribe", "translate"] = "transcribe"
    """`translate`: English text from speech in any language (multilingual models only)."""
    word_timestamps: bool = False
    """Times every word (`word_timing`): one more decoder pass per window."""


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    seek: int
    """Start of the 30 s window the segment was decoded in, in mel frames (10 ms each)."""
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None
    """With `TranscriptionOptions.word_timestamps`: the segment's words, timed."""


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    language: str
    duration: float
    """Seconds of audio that were transcribed (all of it)."""
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    multilingual: bool
    precision: Precision
    device: str
    fingerprint: str
    """sha256 of the full-precision base checkpoint (independent of the serving precision)."""
    weight_bytes: int
    """Bytes held by parameters and buffers as loaded (4-bit weights count as packed bytes)."""
    description: str = ""
    """What an operator should know about the served weights (`model_description`)."""
