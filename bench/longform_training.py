"""Does enrolment training on joined windows keep an adapter's gain on long audio?

    python -m bench.longform_training [--synthetic de-m3,scot-phone] [--fsdd george,jackson]
                                      [--threads 2] [--out docs/benchmarks/longform_training.json]

Per speaker (espeak-ng voices of `bench.speakers`, real FSDD speakers of `bench.fsdd`), two LoRA
adapters trained on the same enrolment recordings with the service's defaults, each as the
service trains its final adapter (every recording, every epoch, in a child process; the gate's
folds are left out, they choose nothing here):

- `utterances`: the recordings one by one (`TrainingConfig()`);
- `joined`: the same plus the recordings joined into long-form windows
  (`TrainingConfig(joined_windows=True)`, `app.engine.training.joined`).

Each adapter and the NF4 base transcribe the speaker's test utterances alone and read one after
another as two long recordings (`bench.longform_personal.speaker_gains`): sequential long-form,
sequential conditioned on the previous windows' text, and batched. `kept` is the long-form
relative gain over the single-utterance gain of the same adapter (the long-audio issue's target:
at least 0.9). Adapters are cached like `bench.enrolment`'s, so a run resumes. Writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fsdd, longform_personal, speakers
from bench.common import RESULTS_DIR, SAMPLE_RATE, print_table, write_json
from bench.enrolment import CACHE_DIR, MODELS_DIR, AdapterCache, Trained
from bench.speakers import SpeakerData, Suite, load

DEFAULT_OUT = RESULTS_DIR / "longform_training.json"
VARIANTS = ("utterances", "joined")
WINDOWS_S = (30.0,)
"""Batched long-form with the default adapter window (shorter ones did not help)."""


def log(message: str) -> None:
    print(f"[longform-training] {message}", file=sys.stderr, flush=True)


def train(model_dir: Path, data: SpeakerData, variant: str, threads: int) -> Trained:
    """The speaker's final adapter of `variant`, trained in a child process."""
    from app.engine.training import TrainingConfig, TrainingRequest, run_in_subprocess
    from app.engine.training import Utterance as TrainUtterance

    recordings = [TrainUtterance(load(u), u.text) for u in [*data.train, *data.dev]]
    config = replace(TrainingConfig(), threads=threads, joined_windows=variant == "joined")
    start = time.perf_counter()
    result = run_in_subprocess(TrainingRequest(model_dir, recordings, [], config, precision="nf4"))
    training = {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "recordings": len(recordings),
        "audio_s": round(sum(len(u.audio) for u in recordings) / SAMPLE_RATE, 1),
        "epoch_train_loss": result.metrics.get("epoch_train_loss"),
    }
    return Trained(result.adapter, {"variant": variant}, training)


def build_suites(synthetic: Sequence[str], digits: Sequence[str]) -> list[Suite]:
    suites = []
    if synthetic:
        chosen = speakers.select_speakers(list(synthetic))
        suites.append(speakers.build_suite(speakers.DEFAULT_OUT, chosen, log=log))
    if digits:
        suites.append(fsdd.build_suite(list(digits)))
    return suites


def held_out_utterances(suite: Suite, data: SpeakerData) -> list[Any]:
    """What the speaker never trained on: test (and, for the synthetic voices, held-out)."""
    return [*data.test, *data.heldout] if suite.kind == "synthetic" else list(data.test)


def run(synthetic: Sequence[str], digits: Sequence[str], threads: int) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    suites = build_suites(synthetic, digits)
    model_dir = import_bundled_model("tiny.en", MODELS_DIR)
    cache = AdapterCache(CACHE_DIR, model_dir)
    adapters: dict[tuple[str, str], dict[str, Trained]] = {}
    for suite in suites:
        for name, data in suite.speakers.items():
            for variant in VARIANTS:
                key = f"final-{variant}"
                trained = cache.get(suite.kind, data, threads, key)
                if trained is None:
                    log(f"{suite.kind}/{name}: training {variant}")
                    trained = train(model_dir, data, variant, threads)
                    cache.put(suite.kind, data, threads, trained, key)
                adapters.setdefault((suite.kind, name), {})[variant] = trained
    engines = longform_personal.load_engines(model_dir, threads, WINDOWS_S, conditioned=True)
    rows: dict[str, Any] = {}
    for suite in suites:
        for name, data in suite.speakers.items():
            by_variant = adapters[suite.kind, name]
            gains = longform_personal.speaker_gains(
                engines,
                {variant: t.adapter for variant, t in by_variant.items()},
                held_out_utterances(suite, data),
                name,
                suite.score_text,
            )
            rows[f"{suite.kind}/{name}"] = {
                variant: {**gains[variant], "training": by_variant[variant].training}
                for variant in VARIANTS
            }
            log(f"{suite.kind}/{name}: {rows[f'{suite.kind}/{name}']}")
    return {
        "benchmark": "longform_training",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor(),
            "threads": threads,
        },
        "load_before": load_before,
        "modes": list(engines),
        "speakers": rows,
        "pooled": pooled(rows, list(engines)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def pooled(rows: dict[str, Any], modes: Sequence[str]) -> dict[str, Any]:
    """Per variant and mode, the mean WER of base and adapter over the speakers and the gain
    of those means (and the single-utterance gain it keeps)."""
    result: dict[str, Any] = {}
    for variant in VARIANTS:
        entries = [row[variant] for row in rows.values()]
        single = _mean_gain(entries, "single")
        result[variant] = {"single": single}
        for mode in modes:
            gain = _mean_gain(entries, mode)
            kept = (
                None
                if gain["gain"] is None or not single["gain"]
                else round(gain["gain"] / single["gain"], 3)
            )
            result[variant][mode] = {**gain, "kept": kept}
    return result


def _mean_gain(entries: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    base = sum(e[mode]["base"] for e in entries) / len(entries)
    adapter = sum(e[mode]["adapter"] for e in entries) / len(entries)
    gain = None if base == 0 else (base - adapter) / base
    return {"base": round(base, 4), "adapter": round(adapter, 4), "gain": gain}


def table(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    modes = report["modes"]
    headers = ["speaker", "variant", "single base->adapter (gain)"]
    headers += [f"{mode} base->adapter (gain, kept)" for mode in modes]
    body: list[list[object]] = []
    named = {**report["speakers"], "mean": report["pooled"]}
    for speaker, row in named.items():
        for variant in VARIANTS:
            cells: list[object] = [speaker, variant, _cell(row[variant]["single"])]
            for mode in modes:
                entry = row[variant][mode]
                cells.append(_cell(entry, entry.get("kept", entry.get("retained"))))
            body.append(cells)
    return headers, body


def _cell(entry: dict[str, Any], *kept: float | None) -> str:
    gain = "-" if entry["gain"] is None else f"{100 * entry['gain']:+.0f}%"
    return f"{entry['base']:.3f}->{entry['adapter']:.3f} ({', '.join([gain, *map(str, kept)])})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.longform_training", description=__doc__)
    parser.add_argument("--synthetic", default="de-m3,scot-phone", help="espeak-ng voices")
    parser.add_argument("--fsdd", default="george,jackson", help="FSDD speakers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    names = [
        [n.strip() for n in text.split(",") if n.strip()] for text in (args.synthetic, args.fsdd)
    ]
    report = run(names[0], names[1], args.threads)
    print_table(*table(report))
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
