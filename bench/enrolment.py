"""What enrolment buys: a speaker's test WER before and after training their LoRA adapter.

    python -m bench.enrolment [--quick] [--suite synthetic|fsdd|speechocean|all] [--speakers a,b]
                              [--methods lora|lora,saml,auto] [--threads 2] [--jobs 1]
                              [--no-train] [--enrol-recordings N]
                              [--no-cross] [--no-cache] [--out bench/results/enrolment.json]

Per speaker, and averaged over speakers, on the speaker's test sentences:

- `fp32`: the converted tiny.en at full precision, no adapter;
- `nf4`: the served NF4 base, no adapter, 30 s encoder window;
- `nf4w`: the same with the encoder window cut to the speech (at least 10 s, `fit10`);
- `pqm`: NF4 plus the speaker's adapter as the service trains it (`TrainingConfig()`'s
  defaults; every enrolment recording goes through the gate's k-fold cross-validation, then the
  adapter is trained on all of them), applied whether the gate activated it or not;
- "served": `pqm` where the gate activated it, else `nf4`: what the speaker gets;
- the relative WER reduction of `pqm` against `fp32`, the adapter's size (bytes of its file,
  parameters, % of the base's parameters) and the training wall time.

Suites: `synthetic` (`bench.speakers`: espeak-ng voices and channels; scored on test sentences
from the enrolment corpus and on held-out sentences of a different register), `speechocean`
(the evaluation half of speechocean762, `bench.speechocean`: 30 real non-native speakers,
children and adults, each enrolling with 14 recordings and tested on the other 6; never tune
on it; `--half pool` runs the other half, for tuning only) and `fsdd` (real speakers reading
digit strings, `bench.fsdd`; missing data is a skip), where every adapter is also applied to
every other speaker's test set (cross-speaker table: rows = adapter, columns = test speaker).

`--methods lora,saml,auto` also enrols every speaker with SAML, from an expert bank pre-trained
on other speakers, and reports what `method=auto` serves: `bench.methods` says how.

Memory: one fp32 engine evaluates every speaker and is released; then one NF4 engine evaluates
the bases and every adapter (adapters are attached per call). `train_adapter` loads its own models
in a child process (`run_in_subprocess`, as the service trains), so they leave with it.
Per suite and split, pooled over every test utterance: the relative WER reduction against the
NF4 base of the adapter and of what is served, with paired-bootstrap 95% intervals, the speaker
served worst against the base (in words), and the gate against held-out truth (activated but
worse, refused but better). Writes `enrolment.json` and a chart `enrolment.png` (WER bars per
speaker, cross-speaker map).
Base-model scores and trained adapters are cached under `bench/results/enrolment-cache/`, keyed
by the exact audio, the model and the engine's source (training's too, for adapters): an
interrupted suite resumes where it stopped, and repeated runs only pay for what changed;
`--no-cache` re-measures and retrains everything.
`--enrol-recordings N`: every speaker enrols with only the first N of their recordings (FSDD and
the synthetic voices were compared at 14, as many as a speechocean762 speaker enrols with).
`--quick`: two synthetic speakers and FSDD's george, for tuning (about 20 minutes on two busy
cores). The run sets OMP_WAIT_POLICY=PASSIVE unless it is set: on a shared machine spinning
OpenMP workers starve each other.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from bench import fsdd, methods, speakers, speechocean
from bench.common import (
    MIB,
    REPO_ROOT,
    RESULTS_DIR,
    SAMPLE_RATE,
    espeak_version,
    normalise_text,
    print_table,
    rss_bytes,
    wer,
    word_errors,
    write_json,
)
from bench.speakers import SpeakerData, Suite, Utterance, load
from bench.speechocean import Half

if TYPE_CHECKING:
    from app.engine.adaptation.residency import AnyAdapter
    from app.engine.training import GateConfig
    from app.engine.whisper import WhisperEngine

BUNDLED_MODEL = "tiny.en"
MODELS_DIR = RESULTS_DIR / "models"
DEFAULT_OUT = RESULTS_DIR / "enrolment.json"
CACHE_DIR = RESULTS_DIR / "enrolment-cache"
SUITES = ("synthetic", "fsdd", "speechocean")
QUICK_SYNTHETIC = speakers.QUICK_SPEAKERS[:2]
QUICK_FSDD = ("george",)
EVAL_SPLITS = {
    "synthetic": ("test", "heldout"),
    "fsdd": ("test",),
    "speechocean762-evaluation": ("test",),
    "speechocean762-pool": ("test",),
}
MODELS = ("fp32", "nf4", "nf4w", "pqm")
"""`nf4w`: the NF4 base with the shortened encoder window (`fit10`), the serving option
measured here; every other base runs Whisper's 30 s window."""

AudioArray = npt.NDArray[np.float32]


def log(message: str) -> None:
    print(f"[enrolment] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Scored:
    """One model on one speaker's split."""

    wer: float
    errors: int
    words: int
    seconds: float
    """Transcription time of the whole split."""
    utterances: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    """Read from the base-model cache (`seconds` is then the original run's)."""

    def summary(self) -> dict[str, Any]:
        return {
            "wer": self.wer,
            "errors": self.errors,
            "words": self.words,
            "seconds": round(self.seconds, 2),
            "cached": self.cached,
        }


@dataclass
class EvalSet:
    """A speaker's evaluation utterances with their audio, loaded once."""

    utterances: list[Utterance]
    audio: list[AudioArray]

    @classmethod
    def of(cls, utterances: Sequence[Utterance]) -> EvalSet:
        return cls(list(utterances), [load(u) for u in utterances])

    @property
    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE

    def digest(self) -> str:
        """Identifies the audio and transcripts exactly."""
        sha = hashlib.sha256()
        for utterance, audio in zip(self.utterances, self.audio, strict=True):
            sha.update(utterance.text.encode() + b"\0")
            sha.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
        return sha.hexdigest()


def score(
    engine: WhisperEngine,
    evalset: EvalSet,
    score_text: Callable[[str], str],
    adapter: AnyAdapter | None = None,
) -> Scored:
    from app.engine.types import TranscriptionOptions

    options = TranscriptionOptions(language="en", with_timestamps=False)
    refs: list[str] = []
    hyps: list[str] = []
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for utterance, audio in zip(evalset.utterances, evalset.audio, strict=True):
        text = engine.transcribe(audio, options, adapter=adapter).text
        scored = score_text(text)
        errors, words = word_errors(utterance.text, scored)
        refs.append(utterance.text)
        hyps.append(scored)
        rows.append(
            {
                "reference": utterance.text,
                "hypothesis": text.strip(),
                "hypothesis_normalised": normalise_text(scored),
                "errors": errors,
                "words": words,
            }
        )
    seconds = time.perf_counter() - start
    total_errors = sum(row["errors"] for row in rows)
    total_words = sum(row["words"] for row in rows)
    return Scored(wer(refs, hyps), total_errors, total_words, seconds, rows)


class BaseCache:
    """Base-model (no adapter) scores from earlier runs, so tuning runs only pay for training.

    An entry is keyed by the precision, the suite, the exact audio and transcripts, the model's
    fingerprint and the source of the engine (`app/engine/*.py`): a change to any of them misses.
    """

    def __init__(self, root: Path | None, model_dir: Path) -> None:
        self.root = root
        self.stamp = engine_stamp(model_dir) if root is not None else ""

    def _path(self, precision: str, kind: str, evalset: EvalSet) -> Path | None:
        if self.root is None:
            return None
        key = hashlib.sha256(f"{self.stamp}|{precision}|{kind}|{evalset.digest()}".encode())
        return self.root / f"{precision}-{kind}-{key.hexdigest()[:24]}.json"

    def get(self, precision: str, kind: str, evalset: EvalSet) -> Scored | None:
        path = self._path(precision, kind, evalset)
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return Scored(
                wer=float(data["wer"]),
                errors=int(data["errors"]),
                words=int(data["words"]),
                seconds=float(data["seconds"]),
                utterances=list(data["utterances"]),
                cached=True,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, precision: str, kind: str, evalset: EvalSet, scored: Scored) -> None:
        path = self._path(precision, kind, evalset)
        if path is not None:
            write_json(path, {**scored.summary(), "utterances": scored.utterances})


def engine_stamp(model_dir: Path, pattern: str = "*.py") -> str:
    from app.engine.model_import import describe_model_dir

    sha = hashlib.sha256(describe_model_dir(model_dir).fingerprint.encode())
    for source in sorted((REPO_ROOT / "app" / "engine").glob(pattern)):
        sha.update(str(source.relative_to(REPO_ROOT)).encode() + b"\0" + source.read_bytes())
    return sha.hexdigest()


class AdapterCache:
    """Speakers already trained by an earlier run of the same code: an interrupted suite resumes.

    An entry (the adapter file, its info and training report) is keyed by the suite, the
    speaker's enrolment audio and transcripts, the service's gate settings, the model and every
    source file of the engine (`app/engine/**/*.py`, training and its defaults included).
    """

    def __init__(self, root: Path | None, model_dir: Path) -> None:
        self.root = None if root is None else root / "adapters"
        gate = repr(service_gate())  # the service's thresholds live in its settings
        self.stamp = engine_stamp(model_dir, "**/*.py") + gate if root is not None else ""

    def _path(self, kind: str, data: SpeakerData, threads: int, variant: str) -> Path | None:
        if self.root is None:
            return None
        sha = hashlib.sha256(f"{self.stamp}|{kind}|{data.name}|{threads}|{variant}".encode())
        sha.update(EvalSet.of([*data.train, *data.dev]).digest().encode())
        method = variant.split("|", 1)[0]
        return self.root / f"{kind}-{method}-{data.name}-{sha.hexdigest()[:24]}"

    def has(self, kind: str, data: SpeakerData, threads: int, variant: str = "lora") -> bool:
        path = self._path(kind, data, threads, variant)
        return path is not None and path.with_suffix(".json").exists()

    def get(
        self, kind: str, data: SpeakerData, threads: int, variant: str = "lora"
    ) -> Trained | None:
        """`variant`: the method, and for SAML the digest of the bank it starts from."""
        from app.engine.adaptation.files import load_any

        path = self._path(kind, data, threads, variant)
        if path is None or not path.with_suffix(".json").exists():
            return None
        try:
            report = json.loads(path.with_suffix(".json").read_text())
            adapter = load_any(path.with_suffix(".safetensors").read_bytes())
        except (OSError, ValueError, KeyError):
            return None
        log(f"{kind}/{data.name}: adapter from an earlier run ({path.name})")
        return Trained(adapter, report["info"], report["training"])

    def put(
        self, kind: str, data: SpeakerData, threads: int, trained: Trained, variant: str = "lora"
    ) -> None:
        from app.engine.adaptation.files import dump_any

        path = self._path(kind, data, threads, variant)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".safetensors").write_bytes(dump_any(trained.adapter))
        write_json(path.with_suffix(".json"), {"info": trained.info, "training": trained.training})


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class SpeakerResult:
    suite: str
    name: str
    description: str
    splits: dict[str, dict[str, Scored]] = field(default_factory=dict)
    """split -> model ("fp32", "nf4", "pqm") -> score."""
    adapter: dict[str, Any] | None = None
    """The LoRA adapter's size and bounds (`pqm`)."""
    training: dict[str, Any] | None = None
    """The LoRA enrolment's report (its gate included)."""
    saml: dict[str, Any] | None = None
    """With `--methods`: the SAML adapter's `adapter` and `training`, as the two above."""
    auto: dict[str, Any] | None = None
    """With `--methods ...auto`: `bench.methods.auto_choice`."""
    error: str | None = None

    def wer(self, split: str, model: str) -> float | None:
        scored = self.splits.get(split, {}).get(model)
        return None if scored is None else scored.wer

    def reduction(self, split: str) -> float | None:
        """Relative WER reduction of the adapter against the fp32 base (0.25 = 25 % fewer)."""
        base, tuned = self.wer(split, "fp32"), self.wer(split, "pqm")
        if base is None or tuned is None or base == 0:
            return None
        return (base - tuned) / base

    def to_json(self, with_utterances: bool = True) -> dict[str, Any]:
        splits: dict[str, Any] = {}
        for split, models in self.splits.items():
            splits[split] = {
                model: {**s.summary(), **({"utterances": s.utterances} if with_utterances else {})}
                for model, s in models.items()
            }
            splits[split]["relative_reduction_vs_fp32"] = self.reduction(split)
        return {
            "suite": self.suite,
            "speaker": self.name,
            "description": self.description,
            "splits": splits,
            "adapter": self.adapter,
            "training": self.training,
            **({"saml": self.saml} if self.saml is not None else {}),
            **({"auto": self.auto} if self.auto is not None else {}),
            "error": self.error,
        }


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def averages(results: Sequence[SpeakerResult], split: str) -> dict[str, float | None]:
    """Macro averages over speakers (each speaker weighs the same)."""
    models = (*MODELS, "saml") if any(r.saml for r in results) else MODELS
    out: dict[str, float | None] = {m: mean(r.wer(split, m) for r in results) for m in models}
    out["relative_reduction_vs_fp32"] = mean(r.reduction(split) for r in results)
    return out


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class Trained:
    adapter: AnyAdapter
    info: dict[str, Any]
    training: dict[str, Any]


def service_gate() -> GateConfig:
    """The gate as `pqm serve` runs it on its default settings."""
    from app.config import EnrolmentSettings
    from app.engine.training import GateConfig

    settings = EnrolmentSettings()
    return GateConfig(
        folds=settings.gate_folds,
        confidence=settings.gate_confidence,
        min_words_saved=settings.gate_min_words_saved,
    )


def train_speaker(
    model_dir: Path,
    data: SpeakerData,
    threads: int,
    method: Literal["lora", "saml"] = "lora",
    bank: bytes | None = None,
) -> Trained:
    """The service's enrolment with the tuned defaults (but `threads`): the gate's k-fold
    cross-validation over every recording, then the adapter trained on all of them, in a child
    process as the service runs it (its models and memory go away with the child). SAML starts
    from `bank`."""
    from app.engine.adaptation.files import dump_any
    from app.engine.training import (
        GatedTraining,
        ServingNumerics,
        TrainingConfig,
        TrainingRequest,
        run_in_subprocess,
    )
    from app.engine.training import Utterance as TrainUtterance

    # Everything the speaker recorded goes through the gate's folds, as the service does it.
    train = [TrainUtterance(load(u), u.text) for u in [*data.train, *data.dev]]
    dev: list[TrainUtterance] = []
    config = replace(TrainingConfig(), threads=threads, method=method)
    gated = GatedTraining(service_gate(), None, "the base model", ServingNumerics(), bank=bank)
    start = time.perf_counter()
    result = run_in_subprocess(
        TrainingRequest(model_dir, train, dev, config, precision="nf4", gated=gated)
    )
    wall = time.perf_counter() - start
    adapter = result.adapter
    metrics = dict(result.metrics)
    parameters = adapter.parameter_count
    base_parameters = metrics.get("base_parameters")
    ratio = metrics.get("parameter_ratio")
    if ratio is None and base_parameters:
        ratio = parameters / base_parameters
    info = {
        "bytes": len(dump_any(adapter)),
        "parameters": parameters,
        "base_parameters": base_parameters,
        "percent_of_base": None if ratio is None else 100.0 * float(ratio),
        "method": method,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "encoder_window": adapter.encoder_window,
        "target_modules": len(adapter.target_modules),
    }
    training = {
        "wall_seconds": round(wall, 2),
        "train_utterances": len(train),
        "train_audio_s": round(sum(len(u.audio) for u in train) / SAMPLE_RATE, 1),
        "dev_utterances": len(dev),
        "threads": threads,
        "metrics": metrics,
    }
    return Trained(adapter, info, training)


@dataclass(frozen=True)
class Enrolment:
    """One speaker's enrolment with one method."""

    model_dir: Path
    suite: Suite
    data: SpeakerData
    threads: int
    method: Literal["lora", "saml"]
    banks: dict[str, methods.Bank]

    @property
    def bank(self) -> bytes | None:
        return self.banks[self.suite.kind].data if self.method == "saml" else None

    @property
    def variant(self) -> str:
        """The adapter cache's key for the method (SAML's includes its bank)."""
        if self.method == "lora":
            return "lora"
        return f"saml|{self.banks[self.suite.kind].digest}"


def _enrol(enrolment: Enrolment, cache: AdapterCache, result: SpeakerResult) -> Trained | None:
    """The speaker's adapter of the enrolment's method (from `cache`, or trained); None, with
    `result.error` set, when training failed: the other methods and speakers still run."""
    kind, data, threads = enrolment.suite.kind, enrolment.data, enrolment.threads
    try:
        trained = cache.get(kind, data, threads, enrolment.variant)
        if trained is None:
            trained = train_speaker(
                enrolment.model_dir, data, threads, enrolment.method, enrolment.bank
            )
            cache.put(kind, data, threads, trained, enrolment.variant)
    except Exception as exc:  # an enrolment may fail in any way; it is reported
        error = f"{enrolment.method} training failed: {type(exc).__name__}: {exc}"
        result.error = error if result.error is None else f"{result.error}; {error}"
        log(f"{kind}/{data.name}: {error}\n{traceback.format_exc()}")
        return None
    return trained


def _train_side_by_side(enrolments: list[Enrolment], cache: AdapterCache, jobs: int) -> None:
    """Trains what `cache` misses, `jobs` enrolments at a time (each in its own child process,
    as every enrolment is), into `cache`; a failure is met again, and reported, by the run."""
    todo = [e for e in enrolments if not cache.has(e.suite.kind, e.data, e.threads, e.variant)]
    log(f"training {len(todo)} enrolments, {jobs} at a time")
    with ThreadPoolExecutor(jobs) as pool:
        for enrolment in todo:
            scratch = SpeakerResult(enrolment.suite.kind, enrolment.data.name, "")
            pool.submit(_enrol, enrolment, cache, scratch)


def _record(result: SpeakerResult, method: str, trained: Trained, bounds: dict[str, Any]) -> None:
    info = {**trained.info, "bounds": bounds}
    if method == "lora":
        result.adapter, result.training = info, trained.training
    else:
        result.saml = {"adapter": info, "training": trained.training}


def bounds_report(engine: WhisperEngine, adapter: AnyAdapter) -> dict[str, Any]:
    """Where the adapter sits against the bounds every stored adapter must meet
    (`lora.file.check_bounds`, `saml.file.check_saml_bounds`): the service would quarantine it
    past them."""
    from app.engine.adaptation.lora.file import (
        MAX_UPDATE_RATIO,
        AdapterFileError,
        AdapterWeights,
        update_ratios,
    )
    from app.engine.adaptation.saml.file import saml_update_bounds

    norms = engine.base_weight_norms()
    ratios = (
        update_ratios(adapter, norms)
        if isinstance(adapter, AdapterWeights)
        else saml_update_bounds(adapter, norms)
    )
    largest = max(ratios.values())
    try:
        engine.check_adapter_bounds(adapter)
    except AdapterFileError as exc:
        refused: str | None = str(exc)
    else:
        refused = None
    return {
        "max_update_ratio": round(largest, 5),
        "margin": round(MAX_UPDATE_RATIO / largest, 1) if largest > 0 else None,
        "refused": refused,
    }


def training_available() -> str | None:
    """None when the training API imports, else why not."""
    try:
        from app.engine.training import (  # noqa: F401
            TrainingConfig,
            TrainingRequest,
            run_in_subprocess,
        )
    except Exception as exc:  # an API being written may fail in any way on import
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Options:
    report: Path | None
    suites: tuple[str, ...]
    synthetic: tuple[str, ...] | None
    fsdd: tuple[str, ...] | None
    threads: int
    train: bool
    cross: bool
    quick: bool
    cache: bool = True
    speechocean: tuple[str, ...] | None = None
    """Speakers of `speechocean_half` (None: all 30)."""
    speechocean_half: Half = "evaluation"
    """`pool` only to tune (the gate's thresholds): reported numbers come from `evaluation`."""
    methods: tuple[str, ...] = ("lora",)
    """`bench.methods.METHODS` to compare; SAML starts from each suite's expert bank."""
    jobs: int = 1
    """Enrolments trained side by side, each with `threads // jobs` threads."""
    enrol_recordings: int | None = None
    """Each speaker enrols with only the first this many of their enrolment recordings."""

    @property
    def training_threads(self) -> int:
        return max(1, self.threads // self.jobs)


def build_suites(options: Options) -> tuple[list[Suite], dict[str, str]]:
    suites: list[Suite] = []
    skipped: dict[str, str] = {}
    if "synthetic" in options.suites:
        chosen = speakers.select_speakers(options.synthetic)
        start = time.perf_counter()
        suites.append(speakers.build_suite(speakers.DEFAULT_OUT, chosen, log=log))
        log(f"synthetic suite ready: {len(chosen)} speakers ({time.perf_counter() - start:.1f} s)")
    if "fsdd" in options.suites:
        try:
            suites.append(fsdd.build_suite(options.fsdd))
        except fsdd.FsddUnavailable as exc:
            skipped["fsdd"] = str(exc)
            log(f"FSDD skipped: {exc}")
    if "speechocean" in options.suites:
        try:
            half = options.speechocean_half
            suites.append(speechocean.build_suite(half, options.speechocean))
        except speechocean.SpeechoceanUnavailable as exc:
            skipped["speechocean"] = str(exc)
            log(f"speechocean762 skipped: {exc}")
    if options.enrol_recordings is not None:
        for suite in suites:
            for data in suite.speakers.values():
                cap_enrolment(data, options.enrol_recordings)
    return suites, skipped


def cap_enrolment(data: SpeakerData, recordings: int) -> None:
    """Keeps the first `recordings` of the speaker's enrolment (train, then dev) as its train."""
    data.train, data.dev = [*data.train, *data.dev][:recordings], []


def load_engine(
    model_dir: Path, precision: str, threads: int, base_window: str = "full"
) -> WhisperEngine:
    from app.engine.whisper import WhisperEngine

    return WhisperEngine.load(
        model_dir,
        precision="fp32" if precision == "fp32" else "nf4",
        device="cpu",
        threads=threads,
        base_window="fit10" if base_window == "fit10" else "full",
    )


def run(options: Options) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    suites, skipped = build_suites(options)
    model_dir = import_bundled_model(BUNDLED_MODEL, MODELS_DIR)
    train_error = training_available() if options.train else "disabled (--no-train)"
    if train_error and options.train:
        log(f"training API unavailable, base models only: {train_error}")

    results: dict[tuple[str, str], SpeakerResult] = {}
    evalsets: dict[tuple[str, str, str], EvalSet] = {}
    for suite in suites:
        for name, data in suite.speakers.items():
            results[suite.kind, name] = SpeakerResult(suite.kind, name, data.description)
            for split in EVAL_SPLITS[suite.kind]:
                if data.split(split):
                    evalsets[suite.kind, name, split] = EvalSet.of(data.split(split))
    eval_audio_s = sum(e.seconds for e in evalsets.values())
    log(f"{len(results)} speakers, {len(evalsets)} evaluation sets, {eval_audio_s / 60:.1f} min")

    cache = BaseCache(CACHE_DIR if options.cache else None, model_dir)
    trained_cache = AdapterCache(CACHE_DIR if options.cache else None, model_dir)
    banks: dict[str, methods.Bank] = {}
    if train_error is None and "saml" in options.methods:
        for suite in suites:
            root = CACHE_DIR if options.cache else None
            banks[suite.kind] = methods.bank_for(model_dir, suite, options.threads, root, log)
    enrolments = {
        (suite.kind, name, method): Enrolment(
            model_dir, suite, data, options.training_threads, method, banks
        )
        for suite in suites
        for name, data in suite.speakers.items()
        for method in methods.trained_methods(options.methods)
    }
    if train_error is None and options.jobs > 1:
        _train_side_by_side(list(enrolments.values()), trained_cache, options.jobs)

    # fp32: one engine for every speaker (loaded only if the cache misses), then released.
    phase = time.perf_counter()
    fp32_engine: WhisperEngine | None = None
    rss_fp32: int | None = None
    for suite in suites:
        for name in suite.speakers:
            speaker_start = time.perf_counter()
            for split in EVAL_SPLITS[suite.kind]:
                key = (suite.kind, name, split)
                if key not in evalsets:
                    continue
                scored = cache.get("fp32", suite.kind, evalsets[key])
                if scored is None:
                    if fp32_engine is None:
                        fp32_engine = load_engine(model_dir, "fp32", options.threads)
                        rss_fp32 = rss_bytes()
                    scored = score(fp32_engine, evalsets[key], suite.score_text)
                    cache.put("fp32", suite.kind, evalsets[key], scored)
                results[suite.kind, name].splits.setdefault(split, {})["fp32"] = scored
            seconds = time.perf_counter() - speaker_start
            wers = _wers(results[suite.kind, name], "fp32")
            log(f"fp32 {suite.kind}/{name}: {wers} ({seconds:.0f} s)")
    fp32_seconds = time.perf_counter() - phase
    del fp32_engine
    gc.collect()

    # NF4: one engine for the bases and every adapter, one more for the shortened base window.
    engine = load_engine(model_dir, "nf4", options.threads)
    rss_nf4 = rss_bytes()
    short_window = load_engine(model_dir, "nf4", options.threads, base_window="fit10")
    adapters: dict[tuple[str, str], AnyAdapter] = {}
    for suite in suites:
        for name in suite.speakers:
            result = results[suite.kind, name]
            speaker_start = time.perf_counter()
            splits = [s for s in EVAL_SPLITS[suite.kind] if (suite.kind, name, s) in evalsets]
            for split in splits:
                evalset = evalsets[suite.kind, name, split]
                for model, base_engine in (("nf4", engine), ("nf4w", short_window)):
                    scored = cache.get(model, suite.kind, evalset)
                    if scored is None:
                        scored = score(base_engine, evalset, suite.score_text)
                        cache.put(model, suite.kind, evalset, scored)
                    result.splits[split][model] = scored
            if train_error is None:
                for method in methods.trained_methods(options.methods):
                    trained = _enrol(enrolments[suite.kind, name, method], trained_cache, result)
                    if trained is None:
                        continue
                    engine.check_adapter(trained.adapter)
                    if method == "lora":
                        adapters[suite.kind, name] = trained.adapter
                    for split in splits:
                        evalset = evalsets[suite.kind, name, split]
                        result.splits[split][methods.MODEL_OF[method]] = score(
                            engine, evalset, suite.score_text, trained.adapter
                        )
                    _record(result, method, trained, bounds_report(engine, trained.adapter))
                    gc.collect()
                if "auto" in options.methods:
                    result.auto = methods.auto_choice(result.to_json(with_utterances=False))
            log(f"{_progress_line(result)} ({time.perf_counter() - speaker_start:.0f} s)")

    cross = None
    fsdd_suite = next((s for s in suites if s.kind == "fsdd"), None)
    if options.cross and fsdd_suite is not None:
        cross = cross_speaker(engine, fsdd_suite, adapters, results, evalsets)

    return {
        "benchmark": "enrolment",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": BUNDLED_MODEL,
        "model_dir": str(model_dir),
        "options": asdict(options),
        "training_error": train_error,
        "skipped": skipped,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": options.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "espeak": espeak_version(),
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "suites": {
            suite.kind: {
                "info": suite.info,
                "speakers": list(suite.speakers),
                "averages": {
                    split: averages([results[suite.kind, n] for n in suite.speakers], split)
                    for split in EVAL_SPLITS[suite.kind]
                },
            }
            for suite in suites
        },
        "speakers": [r.to_json() for r in results.values()],
        "cross_speaker": cross,
        "banks": {kind: bank.info for kind, bank in banks.items()},
        "timing": {
            "total_s": round(time.perf_counter() - started, 1),
            "fp32_eval_s": round(fp32_seconds, 1),
            "eval_audio_s": round(eval_audio_s, 1),
        },
        "memory": {
            "rss_with_fp32_engine_bytes": rss_fp32,
            "rss_with_nf4_engine_bytes": rss_nf4,
            "rss_end_bytes": rss_bytes(),
        },
    }


def cross_speaker(
    engine: WhisperEngine,
    suite: Suite,
    adapters: dict[tuple[str, str], AnyAdapter],
    results: dict[tuple[str, str], SpeakerResult],
    evalsets: dict[tuple[str, str, str], EvalSet],
) -> dict[str, Any] | None:
    """WER of every FSDD adapter on every FSDD speaker's test set (the diagonal is reused)."""
    names = [n for n in suite.speakers if (suite.kind, n, "test") in evalsets]
    rows = [n for n in names if (suite.kind, n) in adapters]
    if not rows:
        return None
    matrix: dict[str, dict[str, float | None]] = {
        "none (nf4)": {col: results[suite.kind, col].wer("test", "nf4") for col in names}
    }
    start = time.perf_counter()
    for row in rows:
        matrix[row] = {}
        for col in names:
            if col == row:
                matrix[row][col] = results[suite.kind, col].wer("test", "pqm")
                continue
            scored = score(
                engine,
                evalsets[suite.kind, col, "test"],
                suite.score_text,
                adapters[suite.kind, row],
            )
            matrix[row][col] = scored.wer
        log(f"cross-speaker: {row}'s adapter on {len(names)} test sets done")
    return {
        "rows": "adapter",
        "columns": "test speaker",
        "split": "test",
        "matrix": matrix,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.0f}%"


def _wers(result: SpeakerResult, model: str) -> str:
    return ", ".join(f"{split} {_fmt(result.wer(split, model))}" for split in result.splits)


def _progress_line(result: SpeakerResult) -> str:
    parts = []
    for split in result.splits:
        wers = "/".join(_fmt(result.wer(split, m)) for m in MODELS)
        parts.append(f"{split} fp32/nf4/nf4w/pqm {wers}")
    if result.training:
        parts.append(f"train {result.training['wall_seconds']:.0f} s")
    if result.error:
        parts.append(result.error)
    return f"done {result.suite}/{result.name}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Report


def gate(entry: dict[str, Any]) -> bool | None:
    """Whether the service's gate activates this speaker's first adapter (None when no adapter
    was trained). Reports written before the k-fold gate: dev WER below the base's."""
    metrics = (entry.get("training") or {}).get("metrics") or {}
    if "gate" in metrics:
        return bool(metrics["gate"]["activate"])
    before, after = metrics.get("wer_before"), metrics.get("wer_after")
    if before is None or after is None:
        return None
    return bool(after < before)


def served_wer(entry: dict[str, Any], split: str) -> float | None:
    """The WER the user is served: the adapter if the gate activates it, else the NF4 base."""
    data = entry["splits"].get(split, {})
    model = "pqm" if gate(entry) else "nf4"
    value = data.get(model, {}).get("wer")
    return None if value is None else float(value)


def _utterance_errors(entry: dict[str, Any], split: str, model: str) -> list[tuple[int, int]]:
    """(errors, words) of each utterance of a speaker's split under `model`."""
    scored = entry["splits"].get(split, {}).get(model) or {}
    return [(u["errors"], u["words"]) for u in scored.get("utterances", [])]


def _relative(base: int, other: int) -> float | None:
    return None if base == 0 else (base - other) / base


def pooled(entries: Sequence[dict[str, Any]], split: str, seed: int = 0) -> dict[str, Any]:
    """Pooled over every test utterance of the suite: relative WER reduction against the NF4
    base of the adapter as trained and of what is served after the gate, each with a paired
    bootstrap 95% interval (utterances resampled, their scores kept together); the speaker
    served worst against the NF4 base, in words; and the gate against held-out truth."""
    rows: list[tuple[int, int, int, int]] = []  # words, nf4, pqm, served errors
    worst: tuple[int, str] | None = None
    confusion = {"activated_helps": 0, "activated_hurts": 0, "refused_helps": 0, "refused_not": 0}
    for entry in entries:
        nf4 = _utterance_errors(entry, split, "nf4")
        pqm = _utterance_errors(entry, split, "pqm")
        if not nf4 or len(pqm) != len(nf4):
            continue
        activated = bool(gate(entry))
        served = pqm if activated else nf4
        rows += [(w, n, p, v) for (n, w), (p, _), (v, _) in zip(nf4, pqm, served, strict=True)]
        extra = sum(v for v, _ in served) - sum(n for n, _ in nf4)
        if worst is None or extra > worst[0]:
            worst = (extra, entry["speaker"])
        helps = sum(p for p, _ in pqm) < sum(n for n, _ in nf4)
        if activated:
            key = "activated_helps" if helps else "activated_hurts"
        else:
            key = "refused_helps" if helps else "refused_not"
        confusion[key] += 1
    if not rows:
        return {}
    data = np.array(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, len(data), size=(2000, len(data)))].sum(axis=1)
    result: dict[str, Any] = {"utterances": len(data), "words": int(data[:, 0].sum())}
    for column, name in ((2, "pqm"), (3, "served")):
        base = data[:, 1].sum()
        relative = _relative(int(base), int(data[:, column].sum()))
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (samples[:, 1] - samples[:, column]) / samples[:, 1]
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        result[f"{name}_vs_nf4"] = {
            "relative_reduction": None if relative is None else round(relative, 4),
            "ci95": [round(float(low), 4), round(float(high), 4)],
        }
    result["wer"] = {
        name: round(int(data[:, column].sum()) / max(1, int(data[:, 0].sum())), 4)
        for column, name in ((1, "nf4"), (2, "pqm"), (3, "served"))
    }
    result["worst_served_extra_words"] = (
        None if worst is None else {"words": worst[0], "speaker": worst[1]}
    )
    result["gate_confusion"] = confusion
    return result


def add_pooled(report: dict[str, Any]) -> None:
    """Each suite's `pooled` statistics per split (see `pooled`), from its speakers' entries."""
    for kind, suite in report["suites"].items():
        entries = [entry for entry in report["speakers"] if entry["suite"] == kind]
        suite["pooled"] = {split: pooled(entries, split) for split in EVAL_SPLITS[kind]}
        compared = methods.report_methods(report)
        if "saml" in compared:
            suite["pooled_methods"] = {
                split: methods.pooled_methods(entries, split, compared)
                for split in EVAL_SPLITS[kind]
            }


def _print_pooled(kind: str, split: str, stats: dict[str, Any]) -> None:
    if not stats:
        return
    served, trained = stats["served_vs_nf4"], stats["pqm_vs_nf4"]
    worst = stats.get("worst_served_extra_words") or {}
    print(
        f"{kind} {split}, pooled over {stats['utterances']} utterances ({stats['words']} words): "
        f"WER nf4 {stats['wer']['nf4']:.3f}, adapter {stats['wer']['pqm']:.3f}, served "
        f"{stats['wer']['served']:.3f}; reduction vs nf4: served "
        f"{_pct(served['relative_reduction'])} "
        f"(95% {_pct(served['ci95'][0])} to {_pct(served['ci95'][1])}), adapter "
        f"{_pct(trained['relative_reduction'])} (95% {_pct(trained['ci95'][0])} to "
        f"{_pct(trained['ci95'][1])}); worst speaker served {worst.get('words')} words more "
        f"({worst.get('speaker')}); gate {stats['gate_confusion']}"
    )


def print_report(report: dict[str, Any]) -> None:
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for entry in report["speakers"]:
        by_suite.setdefault(entry["suite"], []).append(entry)
    for kind, entries in by_suite.items():
        splits = EVAL_SPLITS[kind]
        headers = ["speaker"]
        for split in splits:
            headers += [f"{split} fp32", "nf4", "nf4w", "pqm", "rel", "served"]
        headers += ["gate", "adapter KiB", "params", "% base", "train s", "epoch"]
        rows: list[list[object]] = []
        for entry in entries:
            row: list[object] = [entry["speaker"]]
            for split in splits:
                data = entry["splits"].get(split, {})
                row += [_fmt(data.get(m, {}).get("wer")) for m in MODELS]
                row.append(_pct(data.get("relative_reduction_vs_fp32")))
                row.append(_fmt(served_wer(entry, split)))
            activated = gate(entry)
            row.append("-" if activated is None else ("on" if activated else "off"))
            row += _adapter_cells(entry)
            rows.append(row)
        average: list[object] = ["mean"]
        for split in splits:
            avg = report["suites"][kind]["averages"][split]
            average += [_fmt(avg[m]) for m in MODELS]
            average.append(_pct(avg["relative_reduction_vs_fp32"]))
            average.append(_fmt(mean(served_wer(e, split) for e in entries)))
        average += [None, *_adapter_means(entries)]
        rows.append(average)
        print(
            f"\n== {kind}: test WER (rel = WER reduction of pqm vs fp32; served = pqm where "
            "the acceptance gate activates the adapter, else nf4)"
        )
        print_table(headers, rows)
        for split, stats in report["suites"][kind].get("pooled", {}).items():
            _print_pooled(kind, split, stats)
        for split, stats in report["suites"][kind].get("pooled_methods", {}).items():
            print(
                f"\n== {kind} {split}: methods (served = the adapter where its gate activates it)"
            )
            print_table(list(methods.METHOD_HEADERS), methods.method_rows(entries, split))
            print("\n".join(methods.pooled_lines(kind, split, stats)))
    cross = report.get("cross_speaker")
    if cross:
        columns = list(next(iter(cross["matrix"].values())))
        print("\n== fsdd cross-speaker test WER (rows: adapter, columns: test speaker)")
        print_table(
            ["adapter", *columns],
            [[row, *(_fmt(v) for v in values.values())] for row, values in cross["matrix"].items()],
        )
    for kind, reason in report.get("skipped", {}).items():
        print(f"\n{kind}: skipped ({reason})")
    if report.get("training_error"):
        print(f"\nno adapters trained: {report['training_error']}")
    timing = report["timing"]
    memory = report["memory"]
    fp32_rss = memory["rss_with_fp32_engine_bytes"]
    fp32_text = "-" if fp32_rss is None else f"{fp32_rss / MIB:.0f} MiB"
    print(
        f"\ntotal {timing['total_s']:.0f} s; RSS with fp32 engine {fp32_text}, with nf4 engine "
        f"{memory['rss_with_nf4_engine_bytes'] / MIB:.0f} MiB, at end "
        f"{memory['rss_end_bytes'] / MIB:.0f} MiB"
    )


def _adapter_cells(entry: dict[str, Any]) -> list[object]:
    adapter, training = entry.get("adapter"), entry.get("training")
    if not adapter or not training:
        return ["-"] * 5
    percent = adapter.get("percent_of_base")
    return [
        f"{adapter['bytes'] / 1024:.0f}",
        adapter["parameters"],
        "-" if percent is None else f"{percent:.2f}%",
        f"{training['wall_seconds']:.0f}",
        training["metrics"].get("best_epoch", "-"),
    ]


def _adapter_means(entries: Sequence[dict[str, Any]]) -> list[object]:
    trained = [e for e in entries if e.get("adapter") and e.get("training")]
    if not trained:
        return ["-"] * 5
    seconds = mean(e["training"]["wall_seconds"] for e in trained)
    return [None, None, None, None if seconds is None else f"{seconds:.0f}", None]


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of test WER per speaker: fp32, NF4, NF4 + adapter (hatched where the gate
    refused it, so the speaker is served NF4); one panel per split."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        log("matplotlib is not installed; no chart (pip install -e '.[bench]')")
        return None
    panels = [(kind, split) for kind in report["suites"] for split in EVAL_SPLITS[kind]]
    if not panels:
        return None
    cross = report.get("cross_speaker")
    rows = len(panels) + (1 if cross else 0)
    figure, axes = plt.subplots(
        rows, 1, figsize=(11, 3.2 * rows), squeeze=False, constrained_layout=True
    )
    colours = {
        "fp32": "#9e9e9e",
        "nf4": "#5c6bc0",
        "nf4w": "#90caf9",
        "pqm": "#2e7d32",
        "saml": "#ef6c00",
    }
    labels = {
        "fp32": "fp32 base",
        "nf4": "NF4 base",
        "nf4w": "NF4 base, short window",
        "pqm": "NF4 + LoRA (PQM)",
        "saml": "NF4 + SAML",
    }
    shown = (*MODELS, "saml") if any("saml" in e for e in report["speakers"]) else MODELS
    for axis, (kind, split) in zip(axes[: len(panels), 0], panels, strict=True):
        entries = [e for e in report["speakers"] if e["suite"] == kind]
        names = [e["speaker"] for e in entries] + ["mean"]
        positions = np.arange(len(names))
        width = 0.8 / len(shown)
        heights_seen: list[float] = []
        for offset, model in enumerate(shown):
            values = [e["splits"].get(split, {}).get(model, {}).get("wer") for e in entries]
            values.append(report["suites"][kind]["averages"][split][model])
            heights = [np.nan if v is None else min(v, 1.5) for v in values]
            heights_seen += heights
            bars = axis.bar(
                positions + (offset - (len(shown) - 1) / 2) * width,
                heights,
                width,
                label=labels[model],
                color=colours[model],
            )
            if model in ("pqm", "saml"):  # what the gate refused is not served: drawn hollow
                for bar, entry in zip(bars, entries, strict=False):
                    if _refused(entry, model):
                        bar.set_facecolor("white")
                        bar.set_hatch("///")
                        bar.set_edgecolor(colours[model])
        axis.set_xticks(positions, names, rotation=20, ha="right")
        axis.set_ylabel("WER (capped at 1.5)")
        top = max((v for v in heights_seen if not np.isnan(v)), default=1.0)
        axis.set_ylim(0.0, max(top, 0.1) * 1.3)  # headroom for the legend
        titles = {"heldout": "held-out sentences", "test": "test sentences"}
        title = "test digit strings" if kind == "fsdd" else titles.get(split, split)
        axis.set_title(f"{kind}: {title}")
        axis.grid(axis="y", alpha=0.3)
        handles = [Patch(color=colours[m], label=labels[m]) for m in shown]
        handles.append(
            Patch(
                facecolor="white",
                edgecolor=colours["pqm"],
                hatch="///",
                label="refused by the gate",
            )
        )
        axis.legend(handles=handles, fontsize="small", ncols=len(handles), loc="upper left")
    if cross:
        _plot_cross(axes[-1, 0], cross)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _refused(entry: dict[str, Any], model: str) -> bool:
    if model == "pqm":
        return gate(entry) is False
    saml = entry.get("saml")
    return saml is not None and methods.served_model(entry, "saml") == "nf4"


def _plot_cross(axis: Any, cross: dict[str, Any]) -> None:
    """Heat map of the cross-speaker table, each cell annotated with its WER."""
    matrix = cross["matrix"]
    row_names = list(matrix)
    col_names = list(next(iter(matrix.values())))
    values = np.array(
        [[np.nan if matrix[r][c] is None else matrix[r][c] for c in col_names] for r in row_names],
        dtype=np.float64,
    )
    image = axis.imshow(values, cmap="RdYlGn_r", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(np.arange(len(col_names)), col_names)
    axis.set_yticks(np.arange(len(row_names)), row_names)
    axis.set_xlabel("test speaker")
    axis.set_ylabel("adapter")
    axis.set_title("fsdd: cross-speaker test WER")
    for i in range(len(row_names)):
        for j in range(len(col_names)):
            if not np.isnan(values[i, j]):
                axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    axis.figure.colorbar(image, ax=axis, shrink=0.8)


# ---------------------------------------------------------------------------------------------
# CLI


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.enrolment", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 synthetic speakers + george")
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--speakers", help="comma-separated speaker names (any suite)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (eval + training)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="enrolments trained side by side (threads // jobs each)"
    )
    parser.add_argument("--no-train", action="store_true", help="base models only")
    parser.add_argument("--no-cross", action="store_true", help="skip the cross-speaker table")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help=f"re-measure the base models and retrain every adapter (cache: {CACHE_DIR})",
    )
    parser.add_argument(
        "--half",
        choices=("evaluation", "pool"),
        default="evaluation",
        help="speechocean762 half: pool only for tuning (e.g. scripts/tune_gate.py)",
    )
    parser.add_argument(
        "--methods",
        default="lora",
        help="adaptation methods to compare: lora, saml, auto (auto trains both others)",
    )
    parser.add_argument(
        "--enrol-recordings",
        type=int,
        help="enrol each speaker with only the first N of their recordings (a smaller enrolment)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument(
        "--report", type=Path, help="only print the tables (and chart) of an earlier JSON report"
    )
    args = parser.parse_args(argv)
    try:
        compared = methods.parse_methods(args.methods)
    except ValueError as exc:
        parser.error(str(exc))
    suites: tuple[str, ...] = SUITES if args.suite == "all" else (args.suite,)
    synthetic: tuple[str, ...] | None = QUICK_SYNTHETIC if args.quick else None
    digits: tuple[str, ...] | None = QUICK_FSDD if args.quick else None
    ocean: tuple[str, ...] | None = None
    if args.speakers:
        names = [n.strip() for n in args.speakers.split(",") if n.strip()]
        known_synthetic = {s.name for s in speakers.SPEAKERS}
        known_fsdd = set(fsdd.FSDD_SPEAKERS)
        known_ocean = _speechocean_speakers(args.half)
        unknown = [n for n in names if n not in known_synthetic | known_fsdd | known_ocean]
        if unknown:
            parser.error(
                f"unknown speaker(s) {unknown}; synthetic: {sorted(known_synthetic)}, "
                f"fsdd: {list(fsdd.FSDD_SPEAKERS)}, speechocean762 {args.half} half: "
                f"{sorted(known_ocean)}"
            )
        synthetic = tuple(n for n in names if n in known_synthetic)
        digits = tuple(n for n in names if n in known_fsdd)
        ocean = tuple(n for n in names if n in known_ocean)
        chosen = {"synthetic": synthetic, "fsdd": digits, "speechocean": ocean}
        suites = tuple(s for s in suites if chosen[s])
        if not suites:
            parser.error("none of --speakers belongs to the chosen --suite")
    options = Options(
        report=args.report,
        suites=tuple(suites),
        synthetic=synthetic,
        fsdd=digits,
        speechocean=ocean,
        speechocean_half=args.half,
        threads=args.threads,
        train=not args.no_train,
        cross=not args.no_cross,
        quick=args.quick,
        cache=not args.no_cache,
        methods=compared,
        jobs=max(1, args.jobs),
        enrol_recordings=args.enrol_recordings,
    )
    if args.enrol_recordings is not None and args.enrol_recordings < 2:
        parser.error("--enrol-recordings needs at least 2 (the gate's folds)")
    return options, args.out


def _speechocean_speakers(half: str) -> set[str]:
    try:
        table = speechocean.speakers_of(speechocean.speechocean_dir())
    except OSError:
        return set()
    return {name for name, row in table.items() if row["half"] == half}


def main(argv: Sequence[str] | None = None) -> int:
    options, out = parse_options(argv)
    if options.report is not None:
        report = json.loads(options.report.read_text())
        add_pooled(report)
        print_report(report)
        chart = plot(report, options.report.with_suffix(".png"))
        print(f"\nchart: {chart}")
        return 0
    # The machine may be shared: spinning OpenMP workers then starve each other (measured: a 3 s
    # clip took 10 s instead of 1.4 s with two threads). Set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report = run(options)
    add_pooled(report)
    print_report(report)
    write_json(out, report)
    chart = plot(report, out.with_suffix(".png"))
    print(f"\nwrote {out}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
