"""Helpers shared by the benchmarks: WER, text normalisation, test audio, timing, memory, output.

Nothing here imports torch or the service, so a benchmark's child process decides for itself
what it loads (and what its memory measurement therefore contains).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# ---------------------------------------------------------------------------------------------
# Text normalisation and word error rate

_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:st|nd|rd|th)?")
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at "}
_APOSTROPHES = re.compile(r"['’‘`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def number_to_words(n: int) -> str:
    """Cardinal English words without "and": 105 -> "one hundred five"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            words = number_to_words(high) + " " + name
            return words if rest == 0 else words + " " + number_to_words(rest)
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """21 -> "twenty first", 12 -> "twelfth"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _spell_number(match: re.Match[str]) -> str:
    token = match.group(0).replace(",", "")
    if token[-2:] in ("st", "nd", "rd", "th"):
        return f" {ordinal_words(int(token[:-2]))} "
    whole, _, fraction = token.partition(".")
    words = number_to_words(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(digit)] for digit in fraction)
    return f" {words} "


def normalise_text(text: str) -> str:
    """Lower case, numerals spelled out, punctuation dropped, whitespace collapsed.

    "It's 8:30, Dr. Smith!" -> "its eight thirty dr smith". Hyphens split words
    ("twenty-one" -> "twenty one"); apostrophes join them ("don't" -> "dont").
    """
    text = text.lower()
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _NUMBER.sub(_spell_number, text)
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over tokens (substitutions, deletions, insertions all cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, ref_token in enumerate(ref, start=1):
        current = [i]
        for j, hyp_token in enumerate(hyp, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_token != hyp_token),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) after normalising both texts."""
    ref_words = normalise_text(ref).split()
    hyp_words = normalise_text(hyp).split()
    return edit_distance(ref_words, hyp_words), len(ref_words)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: all edits over all reference words (not a mean of per-item WERs).

    With no reference words at all it is 0.0 when the hypotheses are empty too, else inf.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        item_edits, item_words = word_errors(ref, hyp)
        edits += item_edits
        words += item_words
    if words == 0:
        return 0.0 if edits == 0 else math.inf
    return edits / words


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
