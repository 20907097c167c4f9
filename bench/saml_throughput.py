"""Throughput of the serving engine on a mixed load (1/3 SAML, 1/3 LoRA, 1/3 base-model
requests) against an all-base load, in the same process, on fresh audio every round.

    python -m bench.saml_throughput [--rounds 3] [--requests 12] [--threads 2]
                                    [--out bench/results/saml_throughput.json]

The engine is driven as the scheduler drives it (`open` while fewer than `--batch` requests are
in flight, `run_round` until all are done), so SAML rows share passes with LoRA and base rows.
Every adapter uses the base model's encoder window, so both loads do the same encoder work and
the difference is the methods' own cost. SAML adapters are copies of a real expert bank
(`--bank`, e.g. the pool bank `scripts/tune_enrolment.py` builds), their experts jittered so
that each is its own adapter; LoRA adapters are rank 8 on every projection with small random
factors. The loads alternate order from round to round;
the table gives each round, the median and the spread, and mixed / base.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import speakers
from bench.common import (
    RESULTS_DIR,
    SAMPLE_RATE,
    load_audio_16k,
    print_table,
    serve,
    write_json,
)
from bench.serving import LOAD_VOICES

DEFAULT_OUT = RESULTS_DIR / "saml_throughput.json"
AUDIO_DIR = RESULTS_DIR / "saml-throughput-audio"
LORA_STRENGTH = 2e-4
"""Of the random B factors: strong enough to change a word here and there, weak enough to keep
transcripts sane (1e-3 garbled them into fallback after fallback: a load of different work)."""


def log(message: str) -> None:
    print(f"[saml-throughput] {message}", file=sys.stderr, flush=True)


def clips(count: int) -> list[np.ndarray]:
    """`count` different prompt sentences, voices in turn (cached renders)."""
    prompts = (Path(speakers.__file__).parent.parent / "app" / "data" / "prompts.txt").read_text()
    sentences = [line.strip() for line in prompts.splitlines() if line.strip()][:count]
    if len(sentences) < count:
        raise SystemExit(f"only {len(sentences)} prompt sentences; ask for fewer requests")
    audio = []
    for index, text in enumerate(sentences):
        voice = LOAD_VOICES[index % len(LOAD_VOICES)]
        path = AUDIO_DIR / f"{index:03d}-{voice.name}.wav"
        if not path.exists():
            speakers.render(voice, text, path)
        audio.append(load_audio_16k(path))
    return audio


def lora_adapters(engine: Any, count: int) -> list[Any]:
    from app.engine.adaptation.lora.config import ADAPTABLE
    from app.engine.adaptation.lora.file import AdapterWeights
    from app.engine.adaptation.lora.layer import target_module_names

    adapters = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        tensors = {}
        for name in target_module_names(engine.model, ADAPTABLE):
            layer = engine.model.get_submodule(name)
            a = torch.randn(8, layer.in_features, generator=generator)
            tensors[f"{name}.lora_A"] = a
            b = torch.randn(layer.out_features, 8, generator=generator) * LORA_STRENGTH
            tensors[f"{name}.lora_B"] = b
        adapters.append(
            AdapterWeights(tensors, rank=8, alpha=16.0, base_fingerprint=engine.info.fingerprint)
        )
    return adapters


def saml_adapters(bank_path: Path, count: int) -> list[Any]:
    """Distinct copies of the bank as speakers' adapters (experts jittered by 1%)."""
    from app.engine.adaptation.saml.file import load_saml

    bank = load_saml(bank_path.read_bytes())
    adapters = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        tensors = {
            name: t * (1 + 0.01 * torch.randn(t.shape, generator=generator))
            if "experts_" in name
            else t
            for name, t in bank.tensors.items()
        }
        adapters.append(replace(bank, tensors=tensors, kind="adapter", encoder_window="full"))
    return adapters


def run(bank: Path, rounds: int, requests: int, threads: int, batch: int) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model
    from app.engine.whisper import WhisperEngine

    model_dir = import_bundled_model("tiny.en", RESULTS_DIR / "models")
    engine = WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=threads)
    third = requests // 3
    mixed = [None] * (requests - 2 * third) + lora_adapters(engine, third)
    mixed += saml_adapters(bank, third)
    audio = clips(2 * rounds * requests)
    seconds_of = [len(a) / SAMPLE_RATE for a in audio]
    serve(engine, audio[:batch], [None] * batch, batch)  # warm-up: compute weights, caches
    runs: dict[str, list[dict[str, float]]] = {"base": [], "mixed": []}
    for index in range(rounds):
        order = ("base", "mixed") if index % 2 == 0 else ("mixed", "base")
        for turn, load in enumerate(order):
            first = (2 * index + turn) * requests
            fresh = audio[first : first + requests]
            adapters = [None] * requests if load == "base" else mixed
            wall = serve(engine, fresh, adapters, batch)
            audio_s = sum(seconds_of[first : first + requests])
            runs[load].append({"wall_s": round(wall, 3), "audio_s": round(audio_s, 2)})
            log(f"round {index + 1} {load}: {requests / wall:.2f} requests/s ({wall:.1f} s)")
    return {
        "benchmark": "saml_throughput",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "bank": bank.name,
        "requests_per_round": requests,
        "batch": batch,
        "runs": runs,
    }


def summary(report: dict[str, Any]) -> list[list[object]]:
    rates = {
        load: [report["requests_per_round"] / r["wall_s"] for r in runs]
        for load, runs in report["runs"].items()
    }
    base = statistics.median(rates["base"])
    table: list[list[object]] = []
    for load, values in rates.items():
        median = statistics.median(values)
        table.append(
            [
                load,
                " ".join(f"{v:.2f}" for v in values),
                f"{median:.2f}",
                f"{min(values):.2f}-{max(values):.2f}",
                f"{median / base:.2f}x",
            ]
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.saml_throughput", description=__doc__)
    parser.add_argument("--bank", type=Path, required=True, help="a pqm-saml/1 expert bank")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12, help="per load and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(args.bank, args.rounds, args.requests, args.threads, args.batch)
    write_json(args.out, report)
    header = ["load", "requests/s per round", "median", "spread", "vs base"]
    print_table(header, summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
