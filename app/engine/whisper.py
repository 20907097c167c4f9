"""The speech recogniser: one shared Whisper, many requests decoded together.

A request is a *task*: a generator that walks its audio window by window and yields one
`WindowJob` (a mel window to encode and decode) at a time. `run_round` advances any number of
tasks by one job each, encoding windows of equal length together and decoding all of them in
one batch, every row with its own adapter, prefix and temperature. `transcribe` is the
same machinery for a single request.

Features are computed a window at a time (`LogMelStream`), so a request holds one window of
them whatever its length; the pass that finds their global maximum first is spread over rounds
too (a task yields `SCANNING` until it is done), so a long request does not stall the others.

Long-form follows Whisper's own algorithm: decode a 30 s window with timestamps, keep the
complete segments, move the window to the end of the last complete segment; a window judged to
hold no speech (high no-speech probability *and* low confidence) is skipped, which is what keeps
silence from turning into hallucinated text without gating on loudness.
"""

import logging
import math
import threading
import zlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from app.engine.adaptation.lora.file import (
    AdapterFileError,
    AdapterWeights,
    check_bounds,
    check_compatible,
)
from app.engine.adaptation.lora.layer import inject_lora
from app.engine.adaptation.registry import adaptable_projections
from app.engine.adaptation.residency import AnyAdapter, ResidentAdapters
from app.engine.adaptation.rows import BASE_ROW, RowAdapter
from app.engine.adaptation.saml.config import ROUTES, Route
from app.engine.adaptation.saml.file import check_saml_bounds, check_saml_compatible
from app.engine.adaptation.slots import SlotStats
from app.engine.audio import DecodedAudio
from app.engine.backend import ComputeBackend, backend_for
from app.engine.decoding import MAX_TEXT_TOKENS, BatchDecoder, DecodeResult, DecodeRow
from app.engine.dense import ComputeDtype, compute_dtype, dense_weight
from app.engine.device_slots import resident_slots_for
from app.engine.encoder import EncoderWindow, window_frames
from app.engine.features import (
    FIRST_SCAN_FRAMES,
    HOP_LENGTH,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    LogMelStream,
    pad_or_trim,
)
from app.engine.loading import LoadedModel, load_model, weight_bytes
from app.engine.memory_plan import SlotSizing
from app.engine.model_import import describe_model_dir, model_description
from app.engine.row_adapters import AdapterRowsKind
from app.engine.speech_regions import (
    SpeechDetector,
    SpeechScan,
    VadPolicy,
    batches,
    plan_windows,
)
from app.engine.tokens import SpecialTokens
from app.engine.types import ModelInfo, Precision, Segment, Transcription, TranscriptionOptions
from app.engine.word_timing import Wording, token_times, with_words

__all__ = [
    "SCANNING",
    "DecodingPolicy",
    "LongformPolicy",
    "Scanning",
    "TranscriptionTask",
    "WhisperEngine",
    "WindowJob",
    "max_window_tokens",
]

logger = logging.getLogger(__name__)

FRAMES_PER_TIMESTAMP = 2
"""A timestamp token step is 20 ms: two 10 ms mel frames."""
SECONDS_PER_FRAME = HOP_LENGTH / SAMPLE_RATE
DEFAULT_RESIDENT_SLOTS = 8
TOKENS_PER_SECOND_BOUND = 12
"""No speech needs more tokens per second than this (fast read digits take about 6, with
timestamps); a decode that gets there is looping. Bounds the cost of a loop on short audio."""


def max_window_tokens(content_frames: int) -> int:
    """The longest decode a window holding `content_frames` mel frames can need."""
    seconds = content_frames / 100
    return min(MAX_TEXT_TOKENS, 16 + math.ceil(TOKENS_PER_SECOND_BOUND * seconds))


@dataclass(frozen=True, slots=True)
class LongformPolicy:
    """How audio longer than one 30 s window is walked (see the module's docstring)."""

    mode: Literal["sequential", "batched"] = "sequential"
    window_s: float = 30.0
    """Batched: the longest window cut at pauses."""
    adapter_window_s: float = 30.0
    """Batched, with a speaker's adapter: the longest window (adapters are trained on single
    utterances; shorter windows look more like them)."""
    batch_windows: int = 8
    """Batched: windows of one request decoded together (bounds a request's memory)."""
    vad: VadPolicy = field(default_factory=VadPolicy)
    condition_on_previous_text: bool = False
    """Sequential: each window's prefix carries the text decoded since the last reset, after
    the request's prompt (Whisper's default), reset after a window that needed a fallback hotter
    than `PROMPT_RESET_TEMPERATURE`. Off by default: one window's error or loop then runs on into
    the next (`docs/benchmarks/longform_conditioning.json`)."""

    def __post_init__(self) -> None:
        windows_ok = all(1.0 <= s <= 30.0 for s in (self.window_s, self.adapter_window_s))
        if not windows_ok or self.batch_windows < 1:
            raise ValueError("windows must be within 1-30 s and batch_windows >= 1")


@dataclass(frozen=True, slots=True)
class DecodingPolicy:
    """Whisper's published fallback thresholds."""

    fallback_temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    stationary_range_db: float = 12.0
    """Loud-to-quiet spread of 25 ms frame levels below which a window is stationary noise;
    speech, with its syllables and pauses, spreads well over 20 dB."""
    digital_silence_dbfs: float = -70.0
    """Windows whose peak is below this hold no recorded sound at all (zeros, dither) and are
    skipped undecoded. Quiet speech sits 30-40 dB higher; anything above this floor is left to the
    model's own no-speech judgement."""
    seed: int = 0


@dataclass(slots=True)
class WindowJob:
    """One window of one request: encoded once, decoded once per fallback temperature."""

    mel: Tensor  # [n_mels, frames]
    prefix: list[int]
    with_timestamps: bool = True
    temperature: float = 0.0
    generator: torch.Generator | None = None
    detect_language: bool = False
    """Only the language is wanted (multilingual models, no language given)."""
    beam_size: int = 1
    max_tokens: int = MAX_TEXT_TOKENS
    encoded: Tensor | None = None
    align: list[int] | None = None
    """Only the alignment heads' cross-attention while these tokens run is wanted (see
    `word_timing`); answered with the weights [heads, tokens, frames]."""


class Scanning:
    """Yielded by a task still scanning its features: it did a part and wants another turn."""


SCANNING = Scanning()

Steps = Generator[WindowJob | list[WindowJob] | Scanning, Any, Transcription]
WindowSteps = Generator[list[WindowJob] | Scanning, Any, list[Segment]]


class TranscriptionTask:
    """A request in flight: its adapter and the job (or jobs: windows of long audio decoded as
    rows of one batch) it waits on, or its outcome."""

    def __init__(self, steps: Steps, adapter: RowAdapter) -> None:
        self.adapter = adapter
        self._steps = steps
        self.job: WindowJob | list[WindowJob] | Scanning | None = None
        self.pending: dict[int, int] = {}
        """Decode handle -> the index of its job, while the job's decode is in the batch."""
        self._answers: dict[int, DecodeResult] = {}
        self.result: Transcription | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def decoding(self) -> bool:
        return bool(self.pending)

    def jobs(self) -> list[WindowJob]:
        assert isinstance(self.job, WindowJob | list), "the task waits on no window"
        return self.job if isinstance(self.job, list) else [self.job]

    def answer(self, handle: int, result: DecodeResult) -> None:
        """Takes one decode's result; the task advances once every job of its step has one."""
        self._answers[self.pending.pop(handle)] = result
        if self.pending:
            return
        answers = [self._answers[index] for index in range(len(self._answers))]
        self._answers = {}
        self.advance(answers if isinstance(self.job, list) else answers[0])

    def advance(self, answer: object) -> None:
        try:
            self.job = self._steps.send(answer)
        except StopIteration as stop:
            self.job, self.result = None, stop.value
        except Exception as exc:  # the request fails, the others go on
            self.job, self.error = None, exc

    def fail(self, error: BaseException) -> None:
        self.job, self.error = None, error
        self.pending, self._answers = {}, {}
        self._steps.close()

    def outcome(self) -> Transcription:
        if self.error is not None:
            raise self.error
        assert self.result is not None, "the task has not finished"
        return self.result


class WhisperEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        info: ModelInfo,
        policy: DecodingPolicy | None = None,
        *,
        lora: bool = True,
        resident_slots: int = DEFAULT_RESIDENT_SLOTS,
        dtype: ComputeDtype = "auto",
        base_window: EncoderWindow = "full",
        longform: LongformPolicy | None = None,
        adapter_rows: AdapterRowsKind | None = None,
    ) -> None:
        """`adapter_rows`: how a decode batch applies its rows' adapters, if not the device's
        own way (`backend`)."""
        self._loaded = loaded
        self._backend: ComputeBackend = backend_for(loaded.device, adapter_rows)
        self._info = info
        self._policy = policy or DecodingPolicy()
        self._tokens = SpecialTokens.from_tokenizer(
            loaded.tokenizer, loaded.model.generation_config
        )
        self._lock = threading.RLock()
        # Every projection an adapter may target gets a LoRA bank, once.
        self._lora_layers = inject_lora(loaded.model, adaptable_projections()) if lora else {}
        self._resident = (
            ResidentAdapters(self._lora_layers, loaded.device, resident_slots) if lora else None
        )
        self._dtype = compute_dtype(loaded.precision, self._backend.fast_bf16(), dtype)
        self._base_window = base_window
        """The encoder window of requests served by the base model (an adapter brings its own:
        the one it was trained on)."""
        self._decoder = BatchDecoder(loaded.model, self._tokens, self._dtype, self._backend)
        self._decoding: dict[int, TranscriptionTask] = {}
        """Decode handle -> the task whose job it is."""
        self._base_norms: dict[str, float] | None = None
        self._longform = longform or LongformPolicy()
        self._speech = SpeechDetector()

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        precision: Precision = "nf4",
        device: str = "auto",
        threads: int | None = None,
        lora: bool = True,
        resident_slots: int | SlotSizing = DEFAULT_RESIDENT_SLOTS,
        dtype: ComputeDtype = "auto",
        base_window: EncoderWindow = "full",
        longform: LongformPolicy | None = None,
        adapter_rows: AdapterRowsKind | None = None,
    ) -> "WhisperEngine":
        """`resident_slots`: the adapter pool's capacity, or how to size it once the model is
        loaded (`device_slots`)."""
        if threads is not None:
            torch.set_num_threads(threads)
        manifest = describe_model_dir(model_dir)
        loaded = load_model(model_dir, precision=precision, device=device)
        info = ModelInfo(
            model_id=manifest.model_id,
            multilingual=manifest.multilingual,
            precision=precision,
            device=str(loaded.device),
            fingerprint=manifest.fingerprint,
            weight_bytes=weight_bytes(loaded.model),
            description=model_description(manifest, precision),
        )
        if isinstance(resident_slots, SlotSizing):
            compute = compute_dtype(precision, backend_for(loaded.device).fast_bf16(), dtype)
            resident_slots = resident_slots_for(loaded, compute, resident_slots)
        if manifest.source_quantisation and precision != "fp32":
            logger.warning("model quantised twice", extra={"model": info.description})
        return cls(
            loaded,
            info,
            lora=lora,
            resident_slots=resident_slots,
            dtype=dtype,
            base_window=base_window,
            longform=longform,
            adapter_rows=adapter_rows,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def model(self) -> torch.nn.Module:
        model: torch.nn.Module = self._loaded.model
        return model

    @property
    def loaded(self) -> LoadedModel:
        return self._loaded

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def supports_adapters(self) -> bool:
        return self._resident is not None

    @property
    def holds_compute_weights(self) -> bool:
        """Whether dequantised compute weights are held (while busy, until an idle `tidy`)."""
        return self._decoder.holds_weights

    def slot_stats(self) -> SlotStats | None:
        """The LoRA adapters' resident pool."""
        return self._resident.stats() if self._resident is not None else None

    def check_adapter(self, adapter: AnyAdapter) -> None:
        """Raises `AdapterFileError` unless the adapter fits this base model."""
        if self._resident is None:
            raise AdapterFileError("this engine runs without adapter support")
        fingerprint = self._info.fingerprint
        if isinstance(adapter, AdapterWeights):
            check_compatible(adapter, fingerprint, self._lora_layers)
        else:
            check_saml_compatible(adapter, fingerprint, self._lora_layers, self.d_model_by_route)

    def check_adapter_bounds(self, adapter: AnyAdapter) -> None:
        """Raises `AdapterFileError` unless the adapter (checked with `check_adapter`) stays
        within its method's bounds of this model's weights (`lora.file.check_bounds`,
        `saml.file.check_saml_bounds`): what an adapter must meet to be stored (imported or
        trained)."""
        if isinstance(adapter, AdapterWeights):
            check_bounds(adapter, self.base_weight_norms())
        else:
            check_saml_bounds(adapter, self.base_weight_norms())

    @property
    def d_model_by_route(self) -> dict[Route, int]:
        """The width each SAML router sees (encoder and decoder may differ)."""
        return {route: self._loaded.model.config.d_model for route in ROUTES}

    def base_weight_norms(self) -> dict[str, float]:
        """`||W||_F` of every adaptable projection as served (NF4 dequantised), computed once."""
        with self._lock:
            if self._base_norms is None:
                self._base_norms = {
                    name: float(dense_weight(layer.base).double().norm())
                    for name, layer in self._lora_layers.items()
                }
            return self._base_norms

    def forget(self, adapter: AnyAdapter) -> None:
        """Frees `adapter`'s resident slot (once no request uses it)."""
        if self._resident is not None:
            with self._lock:
                self._resident.forget(adapter)

    def transcribe(
        self,
        audio: np.ndarray | DecodedAudio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> Transcription:
        """Transcribes one request with `adapter` applied (checked with `check_adapter`)."""
        with self._lock:
            task = self.open(audio, options, adapter)
            if task is None:
                raise RuntimeError("every adapter slot is in use")
            while not task.done:
                self.run_round([task])
            return task.outcome()

    def transcribe_all(
        self,
        audios: Sequence[np.ndarray],
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
        *,
        batch_size: int = 8,
    ) -> list[Transcription]:
        """Transcribes `audios` with one adapter, `batch_size` at a time as rows of one batch
        (each result bit for bit its solo transcription)."""
        results: list[Transcription] = []
        with self._lock:
            for start in range(0, len(audios), batch_size):
                tasks = [
                    self.open(audio, options, adapter)
                    for audio in audios[start : start + batch_size]
                ]
                opened = [task for task in tasks if task is not None]
                if len(opened) != len(tasks):
                    raise RuntimeError("every adapter slot is in use")
                while not all(task.done for task in opened):
                    self.run_round([task for task in opened if not task.done])
                results.extend(task.outcome() for task in opened)
        return results

    def open(
        self,
        audio: np.ndarray | DecodedAudio,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> TranscriptionTask | None:
        """Starts a request: pins its adapter's slot and starts on its features. None when every
        adapter slot is pinned by requests in flight (open it again after a round). Spooled
        audio is read, never closed, here: its owner closes it once the task is done."""
        if options.task == "translate" and not self._tokens.multilingual:
            raise ValueError("translation needs a multilingual model")
        with self._lock:
            if adapter is not None and self._resident is None:
                raise AdapterFileError("this engine runs without adapter support")
            row = self._resident.acquire(adapter) if self._resident is not None else BASE_ROW
            if row is None:
                return None
            window = adapter.encoder_window if adapter else self._base_window
            samples = audio if isinstance(audio, DecodedAudio) else DecodedAudio.from_array(audio)
            steps = self._steps(samples, options, window, adapted=adapter is not None)
            task = TranscriptionTask(steps, row)
            task.advance(None)
            self._release_if_done(task)
            return task

    def run_round(self, tasks: list[TranscriptionTask]) -> None:
        """Starts the new jobs of `tasks` (encoding their windows, joining the decode batch),
        then advances every decode in the batch by one token. A task whose decode ends moves
        on to its next job, or finishes, at once: nobody waits for a longer neighbour."""
        with self._lock:
            try:
                self._start_jobs(tasks)
                ended = self._decoder.step() if self._decoder.active else []
            except Exception as exc:  # a failed batch fails its requests, not the engine
                logger.exception("batch failed", extra={"batch": self._decoder.active})
                for handle in self._decoder.reset():
                    self._finish(self._decoding.pop(handle), error=exc)
                return
            for handle, result in ended:
                task = self._decoding.pop(handle)
                if task.done:  # failed while another of its windows was decoding
                    continue
                if isinstance(result, Exception):
                    self._finish(task, error=result)
                    continue
                task.answer(handle, result)
                self._release_if_done(task)

    def tidy(self, *, idle: bool = True) -> None:
        """Gives freed memory back (to the OS, or on CUDA to the device: see `backend`); when
        `idle`, also drops the compute weights kept while busy (rebuilt by the next request, in
        a few milliseconds)."""
        with self._lock:
            if idle and not self._decoder.active:
                self._decoder.release()
            self._backend.release_free_memory(idle=idle)

    def _start_jobs(self, tasks: list[TranscriptionTask]) -> None:
        new = [t for t in tasks if t.job is not None and not t.decoding and not t.done]
        for task in new:
            if isinstance(task.job, Scanning):
                task.advance(None)  # the next part of its scan; its first window comes after
                self._release_if_done(task)
                continue
            try:
                jobs = task.jobs()
                self._encode_missing(task.adapter, jobs)
                if jobs[0].detect_language:
                    [language] = self._decoder.detect_language([_encoded(jobs[0])], [task.adapter])
                    task.advance(language)  # its first decode starts next round
                    self._release_if_done(task)
                    continue
                if jobs[0].align is not None:
                    weights = [self._align(job, task.adapter) for job in jobs]
                    task.advance(weights if isinstance(task.job, list) else weights[0])
                    self._release_if_done(task)
                    continue
                for index, job in enumerate(jobs):
                    handle = self._decoder.start(self._row(task.adapter, job))
                    task.pending[handle] = index
                    self._decoding[handle] = task
            except Exception as exc:  # this request fails, the batch goes on
                logger.exception("decode failed to start")
                self._finish(task, error=exc)

    def _finish(self, task: TranscriptionTask, *, error: BaseException) -> None:
        task.fail(error)
        self._release_if_done(task)

    def _release_if_done(self, task: TranscriptionTask) -> None:
        if task.done and self._resident is not None:
            self._resident.release(task.adapter)
            task.adapter = BASE_ROW

    def _encode_missing(self, adapter: RowAdapter, jobs: list[WindowJob]) -> None:
        """Encodes the windows not encoded yet (a window is encoded once for all its
        decodes)."""
        missing = [job for job in jobs if job.encoded is None]
        if missing:
            encoded = self._decoder.encode([job.mel for job in missing], [adapter] * len(missing))
            for job, output in zip(missing, encoded, strict=True):
                job.encoded = output

    def _align(self, job: WindowJob, adapter: RowAdapter) -> Tensor:
        assert job.align is not None
        return self._decoder.alignment(_encoded(job), job.align, adapter)

    def _row(self, adapter: RowAdapter, job: WindowJob) -> DecodeRow:
        return DecodeRow(
            encoded=_encoded(job),
            prefix=job.prefix,
            temperature=job.temperature,
            with_timestamps=job.with_timestamps,
            generator=job.generator,
            adapter=adapter,
            beam_size=job.beam_size,
            max_tokens=job.max_tokens,
        )

    def _steps(
        self,
        audio: DecodedAudio,
        options: TranscriptionOptions,
        encoder_window: EncoderWindow,
        *,
        adapted: bool,
    ) -> Steps:
        mel = LogMelStream(self._loaded.feature_extractor, audio)
        scanned = mel.scan(FIRST_SCAN_FRAMES)
        while not scanned:
            yield SCANNING
            scanned = mel.scan()
        content_frames = len(audio) // HOP_LENGTH
        language = yield from self._language(mel, options)
        # Sequential long-form needs timestamps to place the next window, whatever the caller
        # asked for; batched windows are placed by the speech detector.
        sequential = self._longform.mode == "sequential" or content_frames <= WINDOW_FRAMES
        with_timestamps = options.with_timestamps or (sequential and content_frames > WINDOW_FRAMES)
        prefix = self._prefix(language, options, with_timestamps)
        walk = _Walk(
            audio, mel, prefix, options, encoder_window, with_timestamps, adapted, language
        )
        segments = yield from (self._sequential(walk) if sequential else self._batched(walk))
        text = "".join(segment.text for segment in segments).strip()
        return Transcription(
            text=text, language=language, duration=len(audio) / SAMPLE_RATE, segments=segments
        )

    def _sequential(self, walk: "_Walk") -> WindowSteps:
        """Whisper's long-form algorithm: a window at a time, moved to the end of its last
        complete segment; the prefix carries the previous windows' text only where the policy
        conditions on it (see `LongformPolicy.condition_on_previous_text`)."""
        audio, with_timestamps = walk.audio, walk.with_timestamps
        content_frames = len(audio) // HOP_LENGTH
        segments: list[Segment] = []
        context: list[int] = []
        seek = 0
        while seek < content_frames:
            chunk = min(WINDOW_FRAMES, content_frames - seek)  # mel frames of audio in view
            if self._is_digital_silence(audio, seek, chunk):
                seek += chunk
                continue
            window = self._window(walk, seek, chunk)
            prefix = self._conditioned(walk.prefix, context)
            [(result, job)] = yield from self._decode_with_fallback(walk, [window], prefix)
            if self._is_silence(result, audio, seek, chunk):
                seek += self._advance_past_silence(result, chunk)
                continue
            new_segments, advance = self._split(result, seek, chunk, with_timestamps)
            if self._longform.condition_on_previous_text:
                context = next_context(context, new_segments, result.temperature)
            if walk.options.word_timestamps:
                [new_segments] = yield from self._timed(walk, [(job, seek, chunk, new_segments)])
            segments.extend(_renumber(new_segments, start_id=len(segments)))
            seek += advance
        return segments

    def _batched(self, walk: "_Walk") -> WindowSteps:
        """Long audio cut at pauses into windows (`speech_regions`), decoded
        `batch_windows` at a time as rows of one batch; what the detector hears no speech in is
        never decoded. Every window is decoded as Whisper decodes a single 30 s window."""
        policy = self._longform
        scan = SpeechScan(self._speech, walk.audio, policy.vad)
        while not scan.done:  # a chunk of the detector's work per round
            scan.step()
            yield SCANNING
        window_s = policy.adapter_window_s if walk.adapted else policy.window_s
        windows = plan_windows(scan.regions(window_s), window_s)
        segments: list[Segment] = []
        for group in batches(windows, policy.batch_windows):
            spans = [
                (w.start // HOP_LENGTH, min(WINDOW_FRAMES, -(-(w.end - w.start) // HOP_LENGTH)))
                for w in group
            ]
            views = [self._window(walk, seek, frames) for seek, frames in spans]
            decoded = yield from self._decode_with_fallback(walk, views)
            spoken: list[_Decoded] = []
            for (seek, frames), (result, job) in zip(spans, decoded, strict=True):
                if not self._is_silence(result, walk.audio, seek, frames):
                    new_segments, _ = self._split(result, seek, frames, walk.with_timestamps)
                    spoken.append((job, seek, frames, new_segments))
            found = [new_segments for *_, new_segments in spoken]
            if walk.options.word_timestamps:
                found = yield from self._timed(walk, spoken)
            for new_segments in found:
                segments.extend(_renumber(new_segments, start_id=len(segments)))
        return segments

    def _timed(
        self, walk: "_Walk", windows: list["_Decoded"]
    ) -> Generator[list[WindowJob], Any, list[list[Segment]]]:
        """Each window's segments with their words timed (`word_timing`), all windows'
        alignments in one step."""
        tokens = self._tokens
        start = walk.prefix.index(tokens.sot)
        sot_sequence = [t for t in walk.prefix[start:] if t != tokens.no_timestamps]
        texts = [
            [t for segment in segments for t in self._text_tokens(segment.tokens)]
            for _, _, _, segments in windows
        ]
        aligned = [i for i, text in enumerate(texts) if text]
        jobs = [
            replace(
                windows[i][0],
                align=[*sot_sequence, tokens.no_timestamps, *texts[i], tokens.eot],
            )
            for i in aligned
        ]
        weights: list[Tensor] = (yield jobs) if jobs else []
        timed = [segments for *_, segments in windows]
        for i, attention in zip(aligned, weights, strict=True):
            _, seek, frames, segments = windows[i]
            timed[i] = with_words(
                segments,
                token_times(attention[:, len(sot_sequence) : -1], frames // 2),
                seek * SECONDS_PER_FRAME,
                Wording(self._loaded.tokenizer.decode, self._tokens.eot, walk.language),
            )
        return timed

    def _window(self, walk: "_Walk", seek: int, frames: int) -> tuple[Tensor, int]:
        """The model's input for `frames` mel frames from `seek`, and its decode's token bound."""
        features = self._on_device(walk.mel.frames(seek, seek + frames))
        window = pad_or_trim(features, window_frames(frames, walk.encoder_window))
        return window, max_window_tokens(frames)

    def _language(
        self, mel: LogMelStream, options: TranscriptionOptions
    ) -> Generator[WindowJob, Any, str]:
        if not self._tokens.multilingual:
            return "en"
        if options.language:
            return options.language
        first = self._on_device(mel.frames(0, WINDOW_FRAMES))  # padding included, as Whisper
        language: str = yield WindowJob(mel=first, prefix=[], detect_language=True)
        return language

    def _on_device(self, features: Tensor) -> Tensor:
        return features.to(self._loaded.device)

    def _prefix(
        self, language: str, options: TranscriptionOptions, with_timestamps: bool
    ) -> list[int]:
        tokens, prompt = self._tokens, options.prompt
        prefix: list[int] = []
        if prompt:
            prompt_ids = self._loaded.tokenizer.encode(
                " " + prompt.strip(), add_special_tokens=False
            )
            prefix = [tokens.sot_prev, *prompt_ids[-(MAX_TEXT_TOKENS - 1) :]]
        prefix.append(tokens.sot)
        if tokens.multilingual:
            prefix.append(tokens.language_ids.get(language, tokens.language_ids["en"]))
            task = tokens.translate if options.task == "translate" else tokens.transcribe
            if task is not None:
                prefix.append(task)
        if not with_timestamps:
            prefix.append(tokens.no_timestamps)
        return prefix

    def _conditioned(self, prefix: list[int], context: list[int]) -> list[int]:
        """`prefix` with `context` (earlier windows' tokens) after the request's own prompt,
        as Whisper's `<|startofprev|>` section holds it (its last `MAX_TEXT_TOKENS - 1`)."""
        if not context:
            return prefix
        sot = prefix.index(self._tokens.sot)
        prompt = prefix[1:sot]  # after <|startofprev|>, when the request has a prompt
        previous = [*prompt, *context][-(MAX_TEXT_TOKENS - 1) :]
        return [self._tokens.sot_prev, *previous, *prefix[sot:]]

    def _decode_with_fallback(
        self,
        walk: "_Walk",
        windows: list[tuple[Tensor, int]],
        prefix: list[int] | None = None,
    ) -> Generator[list[WindowJob], Any, list[tuple[DecodeResult, WindowJob]]]:
        """Decodes each (window, token limit) greedily (or with beams, or at the requested
        temperature), re-sampling hotter the windows that failed, all windows as rows of one
        batch; a window is encoded once for all its attempts, and decodes as it would alone.
        When every attempt fails, the most confident one that is not a repetition loop is kept
        (as faster-whisper does), not the last and hottest one. Returns each window's result
        and its job (which holds its encoder output)."""
        policy, options = self._policy, walk.options
        temperatures = [options.temperature] + [
            t for t in policy.fallback_temperatures if t > options.temperature
        ]
        jobs = [
            WindowJob(
                mel=window,
                prefix=walk.prefix if prefix is None else prefix,
                with_timestamps=walk.with_timestamps,
                generator=torch.Generator(device=self._loaded.device).manual_seed(policy.seed),
                beam_size=options.beam_size,
                max_tokens=max_tokens,
            )
            for window, max_tokens in windows
        ]
        attempts: list[list[DecodeResult]] = [[] for _ in jobs]
        final: dict[int, DecodeResult] = {}
        failing = list(range(len(jobs)))
        for temperature in temperatures:
            for index in failing:
                jobs[index].temperature = temperature
            results: list[DecodeResult] = yield [jobs[index] for index in failing]
            for index, result in zip(failing, results, strict=True):
                if self._needs_fallback(result):
                    attempts[index].append(result)
                else:
                    final[index] = result
            failing = [index for index in failing if index not in final]
            if not failing:
                break
        threshold = policy.compression_ratio_threshold
        for index in failing:
            fluent = [r for r in attempts[index] if self._compression_ratio(r) <= threshold]
            final[index] = max(fluent or attempts[index], key=lambda r: r.avg_logprob)
        return [(final[index], jobs[index]) for index in range(len(jobs))]

    def _needs_fallback(self, result: DecodeResult) -> bool:
        policy = self._policy
        if result.no_speech_prob > policy.no_speech_threshold:
            return False  # silence: a hotter sample would only invent words
        too_repetitive = self._compression_ratio(result) > policy.compression_ratio_threshold
        return too_repetitive or result.avg_logprob < policy.logprob_threshold

    def _is_digital_silence(self, audio: DecodedAudio, seek: int, frames: int) -> bool:
        window = audio.read(seek * HOP_LENGTH, (seek + frames) * HOP_LENGTH)
        floor = 10 ** (self._policy.digital_silence_dbfs / 20)
        return window.size == 0 or float(np.abs(window).max()) < floor

    def _is_silence(
        self, result: DecodeResult, audio: DecodedAudio, seek: int, frames: int
    ) -> bool:
        """A window holds no speech when nothing but punctuation was decoded, or when the model
        rates speech unlikely and either (Whisper's rule) it was unsure of its decode, or the
        signal is stationary: room tone, hum or hiss with no rise and fall of syllables. Loudness
        itself is never the test, so quiet speech is transcribed like loud speech."""
        policy = self._policy
        text = self._loaded.tokenizer.decode(self._text_tokens(result.tokens))
        if not any(char.isalnum() for char in text):
            return True
        if result.no_speech_prob <= policy.no_speech_threshold:
            return False
        window = audio.read(seek * HOP_LENGTH, (seek + frames) * HOP_LENGTH)
        return result.avg_logprob < policy.logprob_threshold or _is_stationary(
            window, policy.stationary_range_db
        )

    def _advance_past_silence(self, result: DecodeResult, window_frames: int) -> int:
        """Skips a window judged silent, but not past the last segment boundary the model placed
        in its second half: speech that starts near a window's end is then decoded whole in the
        next window instead of losing its first words."""
        begin = self._tokens.timestamp_begin
        tokens = result.tokens
        closed = [
            tokens[i] - begin
            for i in range(1, len(tokens))
            if tokens[i] >= begin and tokens[i - 1] >= begin
        ]
        if closed:
            boundary = closed[-1] * FRAMES_PER_TIMESTAMP
            if window_frames // 2 <= boundary < window_frames:
                return boundary
        return window_frames

    def _split(
        self, result: DecodeResult, seek: int, window_frames: int, with_timestamps: bool
    ) -> tuple[list[Segment], int]:
        """Cuts a window's tokens into segments; returns them and how far to move the window."""
        tokens = result.tokens
        begin = self._tokens.timestamp_begin
        offset = seek * SECONDS_PER_FRAME
        is_ts = [token >= begin for token in tokens]
        boundaries = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
        if not with_timestamps or not boundaries:
            stamps = [t for t in tokens if t >= begin]
            start, end = 0.0, window_frames * SECONDS_PER_FRAME
            if stamps and is_ts[0]:
                start = (stamps[0] - begin) * FRAMES_PER_TIMESTAMP * SECONDS_PER_FRAME
            if len(stamps) >= 2 and is_ts[-1]:
                end = (stamps[-1] - begin) * FRAMES_PER_TIMESTAMP * SECONDS_PER_FRAME
            segment = self._segment(result, seek, tokens, offset + start, offset + max(end, start))
            return [segment], window_frames
        single_timestamp_ending = len(tokens) >= 2 and is_ts[-1] and not is_ts[-2]
        cuts = [*boundaries, len(tokens)] if single_timestamp_ending else boundaries
        segments: list[Segment] = []
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            stamps = [t for t in piece if t >= begin]
            if len(stamps) >= 1 and self._text_tokens(piece):
                start = offset + (stamps[0] - begin) * FRAMES_PER_TIMESTAMP * SECONDS_PER_FRAME
                end = offset + (stamps[-1] - begin) * FRAMES_PER_TIMESTAMP * SECONDS_PER_FRAME
                segments.append(self._segment(result, seek, piece, start, max(end, start)))
            last = cut
        if single_timestamp_ending:
            return segments, window_frames
        last_timestamp = tokens[boundaries[-1] - 1] - begin
        return segments, max(1, last_timestamp * FRAMES_PER_TIMESTAMP)

    def _segment(
        self, result: DecodeResult, seek: int, tokens: list[int], start: float, end: float
    ) -> Segment:
        text_tokens = self._text_tokens(tokens)
        text = self._loaded.tokenizer.decode(text_tokens, skip_special_tokens=True)
        return Segment(
            id=0,
            seek=seek,
            start=round(start, 3),
            end=round(end, 3),
            text=text,
            tokens=tokens,
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=_compression_ratio(text),
            no_speech_prob=result.no_speech_prob,
        )

    def _text_tokens(self, tokens: list[int]) -> list[int]:
        return [token for token in tokens if token < self._tokens.eot]

    def _compression_ratio(self, result: DecodeResult) -> float:
        text = self._loaded.tokenizer.decode(self._text_tokens(result.tokens))
        return _compression_ratio(text)


@dataclass(frozen=True, slots=True)
class _Walk:
    """What every window of one request is decoded with."""

    audio: DecodedAudio
    mel: LogMelStream
    prefix: list[int]
    options: TranscriptionOptions
    encoder_window: EncoderWindow
    with_timestamps: bool
    adapted: bool
    """A speaker's adapter is applied (batched windows are then `adapter_window_s` long)."""
    language: str


_Decoded = tuple[WindowJob, int, int, list[Segment]]
"""A decoded window: its job, where it starts and how many mel frames of audio it holds, and
its segments."""


def _is_stationary(window: np.ndarray, range_db: float) -> bool:
    frame = SAMPLE_RATE // 40
    count = len(window) // frame
    if count < 8:
        return False
    frames = window[: count * frame].reshape(count, frame).astype(np.float64)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud, quiet = np.percentile(levels, [95, 10])
    return bool(loud - quiet < range_db)


def _compression_ratio(text: str) -> float:
    """High for repetitive text: Whisper's signal that decoding got stuck in a loop."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


PROMPT_RESET_TEMPERATURE = 0.5
"""Whisper's: a window decoded hotter than this is not carried into the next one's prefix."""


def next_context(context: list[int], segments: Sequence[Segment], temperature: float) -> list[int]:
    """What the next window is conditioned on, given this window's segments and the temperature
    they were decoded at: their tokens after the context so far, or nothing after a hot window."""
    if temperature > PROMPT_RESET_TEMPERATURE:
        return []
    decoded = [token for segment in segments for token in segment.tokens]
    return [*context, *decoded][-(MAX_TEXT_TOKENS - 1) :]


def _renumber(segments: list[Segment], start_id: int) -> list[Segment]:
    return [replace(segment, id=start_id + index) for index, segment in enumerate(segments)]


def _encoded(job: WindowJob) -> Tensor:
    assert job.encoded is not None
    return job.encoded
