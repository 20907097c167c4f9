"""Tunes the training defaults (LoRA and SAML) on real speakers: the speechocean762 **pool** half.

    python scripts/tune_enrolment.py --configs default,lr2e-3 [--speakers 12] [--jobs 2]
    python scripts/tune_enrolment.py --configs saml,saml-e4 --speakers 10
    python scripts/tune_enrolment.py --table

SAML configs start from an expert bank built from the pool speakers *not* tuned on (the first
`--speakers` are tuned on; the rest of the pool builds the bank, once, cached by its inputs and
the engine's source).

Each (speaker, config) run trains an adapter on the speaker's 14 enrolment recordings as the
gate's final adapter is trained (every recording, the config's fixed epochs, no dev set) and
scores the speaker's 6 other recordings with the NF4 base and with NF4 + the adapter, as served
(30 s base window, the adapter's own window), in word errors. The table pools word errors over
every test recording per config: WER, the relative reduction against NF4, speakers helped and
hurt, the worst speaker in words and the training time.

The evaluation half is refused: it is for `bench.enrolment` only. Rows are appended to --out as
JSON lines and a rerun skips the (speaker, config) pairs already there, so a run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.types import TranscriptionOptions
from bench import speechocean
from bench.common import RESULTS_DIR, print_table
from bench.speakers import SpeakerData, load

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "lora": {},  # the default again: the base model's errors differ from machine to machine
    "lr2e-3": {"learning_rate": 2e-3},
    "lr4e-3": {"learning_rate": 4e-3},
    "e16": {"epochs": 16},
    "e16-lr2e-3": {"epochs": 16, "learning_rate": 2e-3},
    "b4": {"batch_size": 4},
    "b4-lr2e-3": {"batch_size": 4, "learning_rate": 2e-3},
    "attn": {"targets": ATTENTION},
    "r4": {"rank": 4},
    "r16-attn": {"rank": 16, "targets": ATTENTION},
    "drop0.2": {"dropout": 0.2},
    "wd0.1": {"weight_decay": 0.1},
    "e4": {"epochs": 4},
    "enc": {"stacks": ("encoder",)},
    "enc-lr2e-3": {"stacks": ("encoder",), "learning_rate": 2e-3},
    "enc-e16": {"stacks": ("encoder",), "epochs": 16},
    "dec": {"stacks": ("decoder",)},
    "specaug": {"spec_augment": True},
    "specaug-e16": {"spec_augment": True, "epochs": 16},
    "enc-specaug": {"stacks": ("encoder",), "spec_augment": True},
    "kl0.5": {"kl_weight": 0.5},
    "enc-kl0.5": {"stacks": ("encoder",), "kl_weight": 0.5},
    "kl0.3": {"kl_weight": 0.3},
    "kl0.7": {"kl_weight": 0.7},
    "kl0.8": {"kl_weight": 0.8},
    "kl0.5-specaug": {"kl_weight": 0.5, "spec_augment": True},
    "kl0.5-e12": {"kl_weight": 0.5, "epochs": 12},
    "kl0.7-lr2e-3": {"kl_weight": 0.7, "learning_rate": 2e-3},
    "enc-e12": {"stacks": ("encoder",), "epochs": 12},
    "enc-r16": {"stacks": ("encoder",), "rank": 16},
    "saml": {"method": "saml"},
    "saml-e4": {"method": "saml", "epochs": 4},
    "saml-e16": {"method": "saml", "epochs": 16},
    "saml-dw": {"method": "saml"},
    "saml-dw-routers": {"method": "saml", "saml_trained": "routers"},
    "saml-dw-experts": {"method": "saml", "saml_trained": "experts"},
    "saml-dw-e20": {"method": "saml"},
    "saml-dw-pool10": {"method": "saml"},
    "saml-dw-r2": {"method": "saml"},
}


@dataclass(frozen=True)
class BankSpec:
    """The bank a SAML config starts from (the rows were made so)."""

    router: str = "depthwise"
    experts: int = 10
    rank: int = 1
    pool: int | None = None
    """How many of the pool speakers not tuned on it learns from (None: all of them)."""


CONVOLUTION = BankSpec(router="conv")
BANKS = {
    "saml": CONVOLUTION,
    "saml-e4": CONVOLUTION,
    "saml-e16": CONVOLUTION,
    "saml-dw": BankSpec(),
    "saml-dw-routers": BankSpec(),
    "saml-dw-experts": BankSpec(),
    "saml-dw-e20": BankSpec(experts=20),
    "saml-dw-pool10": BankSpec(pool=10),
    "saml-dw-r2": BankSpec(rank=2),
}
DEFAULT_OUT = RESULTS_DIR / "tune-enrolment.jsonl"


def base_errors(engine: Any, speaker: SpeakerData, cache: Path) -> list[int]:
    """The NF4 base's word errors per test recording, computed once per speaker and model."""
    from app.engine.text import word_errors

    path = cache / f"base-{speaker.name}-{engine.info.fingerprint[:16]}.json"
    if path.exists():
        cached: list[int] = json.loads(path.read_text())
        return cached
    options = TranscriptionOptions(language="en", with_timestamps=False)
    errors = [
        word_errors(u.text, engine.transcribe(load(u), options).text)[0] for u in speaker.test
    ]
    path.write_text(json.dumps(errors))
    return errors


def pool_bank(model_dir: Path, tuned: Sequence[str], spec: BankSpec, cache: Path) -> Path:
    """The expert bank of the pool speakers not in `tuned` (built once; cached)."""
    from app.engine.adaptation.files import dump_any
    from app.engine.training import Utterance
    from app.engine.training.bank import BankConfig, PoolSpeaker, build_bank

    names = sorted(speechocean.pool_speakers(10_000))
    others = [name for name in names if name not in set(tuned)][: spec.pool]
    suite = speechocean.build_suite("pool", others)
    stamp = hashlib.sha256(
        f"{sorted(others)}|{_bank_key(spec)}|{_engine_source_digest()}".encode()
    ).hexdigest()[:16]
    path = cache / f"bank-{spec.router}-{stamp}.safetensors"
    if path.exists():
        return path
    speakers = [
        PoolSpeaker(name, [Utterance(load(u), u.text) for u in [*data.train, *data.test]])
        for name, data in suite.speakers.items()
    ]
    started = time.perf_counter()
    config = BankConfig(
        threads=2,
        router="depthwise" if spec.router == "depthwise" else "conv",
        experts=spec.experts,
        rank=spec.rank,
    )
    result = build_bank(model_dir, speakers, config)
    path.write_bytes(dump_any(result.bank))
    report = {**result.metrics, "wall_seconds": round(time.perf_counter() - started, 1)}
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(f"bank from {len(speakers)} speakers: {report}", file=sys.stderr, flush=True)
    return path


def _bank_key(spec: BankSpec) -> str:
    """The router alone for the authors' shape (the key older cached banks were made with)."""
    return spec.router if spec == BankSpec(router=spec.router) else repr(spec)


def _engine_source_digest() -> str:
    root = Path(__file__).resolve().parent.parent / "app" / "engine"
    digest = hashlib.sha256()
    for source in sorted(root.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def run_one(task: tuple[str, str, Path, Path, Path | None]) -> dict[str, Any]:
    name, config_name, model_dir, cache, bank_path = task
    from app.engine.adaptation.saml.file import load_saml
    from app.engine.text import word_errors
    from app.engine.training import TrainingConfig, Utterance, train_adapter
    from app.engine.whisper import WhisperEngine

    speaker: SpeakerData = speechocean.build_suite("pool", [name]).speakers[name]
    config = replace(TrainingConfig(**CONFIGS[config_name]), threads=1)
    train = [Utterance(load(u), u.text) for u in speaker.train]
    bank = load_saml(bank_path.read_bytes()) if config.method == "saml" and bank_path else None
    started = time.perf_counter()
    result = train_adapter(model_dir, train, [], config, bank=bank)
    seconds = time.perf_counter() - started
    engine = WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=1)
    options = TranscriptionOptions(language="en", with_timestamps=False)
    rows = []
    for utterance, nf4 in zip(speaker.test, base_errors(engine, speaker, cache), strict=True):
        adapted = engine.transcribe(load(utterance), options, adapter=result.adapter).text
        errors, words = word_errors(utterance.text, adapted)
        rows.append({"words": words, "nf4": nf4, "adapter": errors})
    return {
        "speaker": name,
        "group": speaker.info["group"],
        "config": config_name,
        "settings": {**asdict(config), "targets": list(config.targets)},
        "bank": None if bank is None else bank_path.name if bank_path else None,
        "train_seconds": round(seconds, 1),
        "train_loss": [round(x, 3) for x in result.metrics["epoch_train_loss"]],
        "utterances": rows,
    }


def summary(rows: Sequence[dict[str, Any]], baseline: str = "default") -> list[list[object]]:
    table: list[list[object]] = []
    errors = {(row["speaker"], row["config"]): _errors(row) for row in rows}
    for config in dict.fromkeys(row["config"] for row in rows):
        mine = [row for row in rows if row["config"] == config]
        words = sum(u["words"] for row in mine for u in row["utterances"])
        nf4 = sum(u["nf4"] for row in mine for u in row["utterances"])
        adapter = sum(u["adapter"] for row in mine for u in row["utterances"])
        deltas = [sum(u["adapter"] - u["nf4"] for u in row["utterances"]) for row in mine]
        paired = [
            errors[row["speaker"], config] - errors[row["speaker"], baseline]
            for row in mine
            if (row["speaker"], baseline) in errors
        ]
        table.append(
            [
                config,
                len(mine),
                f"{nf4 / words:.3f}",
                f"{adapter / words:.3f}",
                f"{100 * (nf4 - adapter) / nf4:+.1f}%",
                sum(d < 0 for d in deltas),
                sum(d > 0 for d in deltas),
                max(deltas),
                _paired_interval(paired) if config != baseline else "",
                f"{sum(row['train_seconds'] for row in mine) / len(mine):.0f}",
            ]
        )
    return table


def _errors(row: dict[str, Any]) -> int:
    return sum(u["adapter"] for u in row["utterances"])


def _paired_interval(differences: Sequence[int], resamples: int = 4000) -> str:
    """Word errors against the default on the same speakers, with a 95% bootstrap interval
    over speakers (training noise per speaker is large: a few words either way)."""
    if not differences:
        return ""
    rng = random.Random(0)
    totals = sorted(sum(rng.choices(differences, k=len(differences))) for _ in range(resamples))
    low, high = totals[int(0.025 * resamples)], totals[int(0.975 * resamples)]
    return f"{sum(differences):+d} [{low:+d}, {high:+d}] ({len(differences)})"


def print_summary(path: Path, baseline: str = "default") -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = [
        "config",
        "speakers",
        "nf4",
        "adapter",
        "reduction",
        "helped",
        "hurt",
        "worst +words",
        f"vs {baseline} (words, 95%, speakers)",
        "train s",
    ]
    print_table(header, summary(rows, baseline))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="default", help=f"among {', '.join(CONFIGS)}")
    parser.add_argument("--speakers", type=int, default=12, help="pool speakers to use")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table", action="store_true", help="print the results so far")
    parser.add_argument(
        "--baseline",
        default="default",
        help="the config the others are compared with, speaker by speaker (rows made on the "
        "same machine: the base model's errors differ between machines)",
    )
    args = parser.parse_args(argv)
    if args.table:
        print_summary(args.out, args.baseline)
        return 0
    from app.engine.model_import import import_bundled_model

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model_dir = import_bundled_model("tiny.en", RESULTS_DIR / "models")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["speaker"], row["config"]))
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}")
    cache = args.out.parent / "tune-enrolment-base"
    cache.mkdir(exist_ok=True)
    tuned = speechocean.pool_speakers(args.speakers)
    banks = {
        config: pool_bank(model_dir, tuned, BANKS[config], cache)
        for config in configs
        if CONFIGS[config].get("method") == "saml"
    }
    tasks = [
        (name, config, model_dir, cache, banks.get(config))
        for config in configs
        for name in tuned
        if (name, config) not in done
    ]
    print(f"{len(tasks)} runs", file=sys.stderr)
    with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(run_one, tasks):
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
            delta = sum(u["adapter"] - u["nf4"] for u in row["utterances"])
            print(
                f"{row['config']:12} {row['speaker']} {delta:+d} words "
                f"({row['train_seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print_summary(args.out, args.baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
