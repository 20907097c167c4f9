"""Helpers shared by the benchmarks: WER, text normalisation, test audio, timing, memory, output.

Nothing here imports torch or the service, so a benchmark's child process decides for itself
what it loads (and what its memory measurement therefore contains).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

# Scoring lives in the service: its enrolment gate uses the same WER as the benchmarks.
from app.engine.text import normalise_text as normalise_text
from app.engine.text import wer as wer
from app.engine.text import word_errors as word_errors

SAMPLE_RATE = 16000
MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# ---------------------------------------------------------------------------------------------
# Test audio


def synthesise(text: str, path: Path, *, voice: str = "en-us", speed: int = 160) -> Path:
    """Speaks `text` with espeak-ng into a WAV file (espeak's own rate, 22.05 kHz mono)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(tmp), text],
        check=True,
        capture_output=True,
    )
    tmp.replace(path)
    return path


def load_audio_16k(path: Path) -> npt.NDArray[np.float32]:
    """Any soundfile-readable file as 16 kHz mono float32 in [-1, 1]."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def espeak_version() -> str:
    try:
        done = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"
    return done.stdout.decode(errors="replace").strip()


# ---------------------------------------------------------------------------------------------
# Timing and memory


def latency_stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / min / max of durations given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no timings")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def _proc_status_kib(field: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_bytes() -> int:
    """This process's resident set size now."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The highest resident set size this process has had (Linux VmHWM; ru_maxrss elsewhere)."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def thread_capped_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that caps OpenMP / BLAS pools at `threads` (set before torch is imported)."""
    env = dict(os.environ if base is None else base)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


# ---------------------------------------------------------------------------------------------
# Output


def write_json(path: Path, data: Any) -> Path:
    """Writes `data` as indented JSON, creating parent directories; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: numeric columns right-aligned, others left; None shows as "-"."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    numeric = [
        all(_looks_numeric(row[index]) for row in cells if row[index] != "-")
        for index in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        padded = (
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(format_table(headers, rows))


_NUMERIC_CELL = re.compile(r"[-+]?\d[\d.,]*\s*(?:%|x|ms|s|MB|MiB)?")


def _looks_numeric(cell: str) -> bool:
    return _NUMERIC_CELL.fullmatch(cell) is not None


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def serve(engine: Any, audio: Sequence[np.ndarray], adapters: Sequence[Any], batch: int) -> float:
    """Seconds to transcribe every clip, at most `batch` in flight (as the scheduler admits)."""
    from app.engine.types import TranscriptionOptions

    options = TranscriptionOptions(language="en", with_timestamps=False)
    waiting = list(zip(audio, adapters, strict=True))
    live: list[Any] = []
    synchronise = _synchroniser(engine)
    started = time.perf_counter()
    while waiting or live:
        while waiting and len(live) < batch:
            clip, adapter = waiting.pop(0)
            task = engine.open(clip, options, adapter)
            if task is None:
                waiting.insert(0, (clip, adapter))
                break
            live.append(task)
        engine.run_round(live)
        for task in [t for t in live if t.done]:
            task.outcome()
            live.remove(task)
    synchronise()
    return time.perf_counter() - started


def _synchroniser(engine: Any) -> Callable[[], None]:
    import torch

    if engine.loaded.device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def pyplot() -> Any | None:
    """matplotlib's pyplot drawing to files only, or None where matplotlib is not installed (the
    `bench` extra brings it): a benchmark then writes its JSON without a chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
