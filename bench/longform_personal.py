"""Enrolled speakers on long audio: does an adapter keep its gain beyond single utterances?

Part of `python -m bench.longform --personal DIR`: `DIR` holds speakers' trained LoRA adapters
as `bench.enrolment` caches them (`bench/results/enrolment-cache/adapters`, files named after
the synthetic speaker they belong to). Per speaker, on their test and held-out sentences (never
trained on):

- `single`: each utterance alone, NF4 base and NF4 + adapter;
- long recordings of the same utterances (two halves, read one after another with pauses):
  the base and the adapter, sequential and batched long-form, the batched adapter windows
  `ADAPTER_WINDOWS_S` long.

Gains are relative WER reductions of the adapter against the base on the same audio and mode;
`retained` is a long-form gain over the single-utterance gain (the target is at least 0.9).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import speakers
from bench.common import SAMPLE_RATE, wer
from bench.speakers import Utterance, load

ADAPTER_WINDOWS_S = (30.0, 10.0)
PAUSES_S = (0.3, 1.2)


def adapters_in(folder: Path) -> dict[str, Path]:
    """Synthetic speaker name -> their cached LoRA adapter file."""
    names = sorted((s.name for s in speakers.SPEAKERS), key=len, reverse=True)
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("synthetic-*.safetensors")):
        if "-saml-" in path.name:
            continue
        stem = path.name.removeprefix("synthetic-").removeprefix("lora-")
        name = next((n for n in names if stem.startswith(f"{n}-")), None)
        if name is not None:
            found[name] = path
    return found


def _long(utterances: Sequence[Utterance], seed: str) -> tuple[np.ndarray, str]:
    rng = random.Random(seed)
    parts = []
    for utterance in utterances:
        parts += [load(utterance), np.zeros(int(rng.uniform(*PAUSES_S) * SAMPLE_RATE), np.float32)]
    return np.concatenate(parts), " ".join(u.text for u in utterances)


def _gain(base: float, adapted: float) -> float | None:
    return None if base == 0 else round((base - adapted) / base, 4)


def speaker_gains(
    engines: dict[str, Any],
    adapters: dict[str, Any],
    utterances: Sequence[Utterance],
    name: str,
    score_text: Callable[[str], str] = str,
) -> dict[str, dict[str, Any]]:
    """Per adapter label, its gains over the base on `utterances` alone and read as two long
    recordings. `engines`: `sequential`, and `batched-<window>` per adapter window, sharing
    weights; `score_text` turns a hypothesis into the reference's writing (FSDD's digits)."""
    from app.engine.types import TranscriptionOptions

    options = TranscriptionOptions(language="en", with_timestamps=False)

    def score(engine: Any, clips: Sequence[Any], refs: Sequence[str], adapter: Any) -> float:
        hypotheses = [engine.transcribe(a, options, adapter=adapter).text for a in clips]
        return wer(list(refs), [score_text(h) for h in hypotheses])

    refs = [u.text for u in utterances]
    audio = [load(u) for u in utterances]
    halves = [utterances[: len(utterances) // 2], utterances[len(utterances) // 2 :]]
    recordings = [_long(half, f"{name}-{index}") for index, half in enumerate(halves)]
    long_audio, long_refs = [a for a, _ in recordings], [r for _, r in recordings]
    base_single = score(engines["sequential"], audio, refs, None)
    base_long = {mode: score(e, long_audio, long_refs, None) for mode, e in engines.items()}
    rows: dict[str, dict[str, Any]] = {}
    for label, adapter in adapters.items():
        tuned = score(engines["sequential"], audio, refs, adapter)
        single_gain = _gain(base_single, tuned)
        row: dict[str, Any] = {
            "single": {"base": base_single, "adapter": tuned, "gain": single_gain},
            "long_seconds": [round(len(a) / SAMPLE_RATE, 1) for a in long_audio],
        }
        for mode, engine in engines.items():
            tuned_long = score(engine, long_audio, long_refs, adapter)
            gain = _gain(base_long[mode], tuned_long)
            row[mode] = {
                "base": base_long[mode],
                "adapter": tuned_long,
                "gain": gain,
                "retained": None
                if gain is None or not single_gain
                else round(gain / single_gain, 3),
            }
        rows[label] = row
    return rows


def load_engines(
    model_dir: Path, threads: int, windows: Sequence[float], *, conditioned: bool = False
) -> dict[str, Any]:
    """`sequential`, `conditioned` (sequential conditioned on the previous windows' text) if
    asked, and `batched-<window>s` per adapter window (NF4, CPU)."""
    from app.engine.whisper import LongformPolicy, WhisperEngine

    engines: dict[str, Any] = {
        "sequential": WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=threads)
    }
    if conditioned:
        policy = LongformPolicy("sequential", condition_on_previous_text=True)
        engines["conditioned"] = WhisperEngine.load(
            model_dir, precision="nf4", device="cpu", threads=threads, longform=policy
        )
    for window in windows:
        policy = LongformPolicy("batched", adapter_window_s=window)
        engines[f"batched-{window:.0f}s"] = WhisperEngine.load(
            model_dir, precision="nf4", device="cpu", threads=threads, longform=policy
        )
    return engines


def run(model_dir: Path, folder: Path, threads: int, log: Any) -> dict[str, Any]:
    from app.engine.adaptation.lora.file import load_adapter

    found = adapters_in(folder)
    if not found:
        return {"skipped": f"no synthetic speaker's adapter in {folder}"}
    suite = speakers.build_suite(speakers.DEFAULT_OUT, speakers.select_speakers(list(found)))
    engines = load_engines(model_dir, threads, ADAPTER_WINDOWS_S)
    rows = {}
    for name, path in found.items():
        data = suite.speakers[name]
        adapter = load_adapter(path.read_bytes())
        utterances = [*data.test, *data.heldout]
        rows[name] = speaker_gains(engines, {"adapter": adapter}, utterances, name)["adapter"]
        log(f"personal {name}: {rows[name]}")
    return {"adapters": str(folder), "windows_s": list(ADAPTER_WINDOWS_S), "speakers": rows}


def table(personal: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    modes = [
        m for m in next(iter(personal["speakers"].values())) if m not in ("single", "long_seconds")
    ]
    headers = [
        "speaker",
        "single gain",
        *(f"{m} gain" for m in modes),
        *(f"{m} kept" for m in modes),
    ]
    rows: list[list[object]] = []
    for name, row in personal["speakers"].items():
        rows.append(
            [
                name,
                _percent(row["single"]["gain"]),
                *(_percent(row[m]["gain"]) for m in modes),
                *(row[m]["retained"] for m in modes),
            ]
        )
    return headers, rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.0f}%"
