"""The adaptation methods side by side, for `python -m bench.enrolment --methods lora,saml,auto`.

Every speaker of a suite enrols once per trained method, as the service trains it (the gate's
k-fold cross-validation over every recording, then the final adapter on all of them):

- `lora`: PQM's per-speaker LoRA (the report's `pqm` column, as in LoRA-only runs);
- `saml`: a copy of the suite's expert bank adapted to the speaker (the report's `saml` column);
- `auto`: nothing of its own to train: the service's `choose_method` over the two gates picks the
  adapter that may be activated; what is served is the winner where its gate activates it (and it
  is within the stored-adapter bounds), else the NF4 base.

A suite's bank is pre-trained on other speakers, never on a target: speechocean762's pool half
(disjoint from its evaluation half, asserted) for the real-speech suites (speechocean762's
evaluation half and FSDD), `speakers.POOL_SPEAKERS` for the synthetic suite (leaving out their
recordings of any sentence a target is tested on). Banks are cached like adapters, keyed by
the pool's audio, the bank's settings, the model and the engine's source.

Pooled over every test utterance: WER of each column, relative reduction against the NF4 base
with paired-bootstrap 95% intervals (as trained and as served), the difference SAML - LoRA in
points of relative reduction with its own interval, and per method the speakers served worse than
the NF4 base by more than `WORSE_WORDS` words.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench import speakers, speechocean
from bench.common import SAMPLE_RATE, write_json
from bench.speakers import Suite, Utterance, load

__all__ = [
    "METHODS",
    "WORSE_WORDS",
    "Bank",
    "auto_choice",
    "bank_for",
    "parse_methods",
    "pooled_methods",
    "served_model",
    "trained_methods",
]

METHODS = ("lora", "saml", "auto")
MODEL_OF = {"lora": "pqm", "saml": "saml"}
"""The report's score column of each trained method (`pqm`: NF4 + LoRA, as PQM named it)."""
WORSE_WORDS = 2
"""The gate issue's promise: no speaker served worse than the base by more than this."""
POOL_UTTERANCES = 20
"""Recordings per synthetic pool voice (as many as a speechocean762 pool speaker has)."""


def parse_methods(text: str) -> tuple[str, ...]:
    """`lora,saml,auto` -> the methods in canonical order; `auto` needs both others trained."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(METHODS)
    if unknown or not names:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if "auto" in names:
        names |= {"lora", "saml"}
    return tuple(method for method in METHODS if method in names)


TrainedMethod = Literal["lora", "saml"]


def trained_methods(methods: Sequence[str]) -> tuple[TrainedMethod, ...]:
    return tuple(m for m in ("lora", "saml") if m in methods)


# ---------------------------------------------------------------------------------------------
# Banks


@dataclass(frozen=True)
class Bank:
    data: bytes
    """The bank's file (`pqm-saml/1`), as a SAML enrolment receives it."""
    info: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _real_pool(targets: Suite) -> tuple[str, list[tuple[str, list[Utterance]]]]:
    pool = speechocean.build_suite("pool")
    overlap = set(pool.speakers) & set(targets.speakers)
    if overlap:
        raise RuntimeError(f"the bank's pool shares speakers with the targets: {sorted(overlap)}")
    speakers_ = [(name, [*d.train, *d.dev, *d.test]) for name, d in pool.speakers.items()]
    return f"speechocean762 pool half ({len(speakers_)} speakers)", speakers_


def _synthetic_pool(targets: Suite) -> tuple[str, list[tuple[str, list[Utterance]]]]:
    tested = {u.text for data in targets.speakers.values() for u in [*data.test, *data.heldout]}
    suite = speakers.build_suite(
        speakers.DEFAULT_OUT.parent / "pool-speakers", speakers.POOL_SPEAKERS
    )
    pool: list[tuple[str, list[Utterance]]] = []
    for name, data in suite.speakers.items():
        kept = [u for u in [*data.train, *data.dev] if u.text not in tested]
        pool.append((name, kept[:POOL_UTTERANCES]))
    return f"synthetic pool voices ({len(pool)}, no sentence a target is tested on)", pool


def bank_for(
    model_dir: Path, targets: Suite, threads: int, cache_root: Path | None, log: Any
) -> Bank:
    """The expert bank the suite's SAML enrolments start from (built once; cached)."""
    from app.engine.training import Utterance as TrainUtterance
    from app.engine.training.bank import BankConfig, PoolSpeaker
    from app.engine.training.process import BankRequest, run_in_subprocess
    from bench.enrolment import EvalSet, engine_stamp

    describe, pool = (_synthetic_pool if targets.kind == "synthetic" else _real_pool)(targets)
    config = BankConfig(threads=threads)
    sha = hashlib.sha256(f"{engine_stamp(model_dir, '**/*.py')}|{config!r}".encode())
    for name, utterances in pool:
        sha.update(name.encode() + EvalSet.of(utterances).digest().encode())
    path = None if cache_root is None else cache_root / "banks" / f"bank-{sha.hexdigest()[:24]}"
    if path is not None and path.with_suffix(".json").exists():
        log(f"{targets.kind}: expert bank from an earlier run ({path.name})")
        info = json.loads(path.with_suffix(".json").read_text())
        return Bank(path.with_suffix(".safetensors").read_bytes(), info)
    log(f"{targets.kind}: building the expert bank from {describe}")
    request = BankRequest(
        model_dir,
        [PoolSpeaker(name, [TrainUtterance(load(u), u.text) for u in us]) for name, us in pool],
        config,
    )
    start = time.perf_counter()
    result = run_in_subprocess(request)
    from app.engine.adaptation.files import dump_any

    data = dump_any(result.adapter)
    info = {
        "pool": describe,
        "speakers": [name for name, _ in pool],
        "utterances": sum(len(us) for _, us in pool),
        "audio_s": round(sum(len(load(u)) for _, us in pool for u in us) / SAMPLE_RATE, 1),
        "config": {
            "experts": config.experts,
            "router": config.router,
            "expert_epochs": config.expert_epochs,
            "epochs": config.epochs,
        },
        "bytes": len(data),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "threads": threads,
        "metrics": result.metrics,
    }
    log(f"{targets.kind}: bank built in {info['wall_seconds']:.0f} s ({len(data) / 1024:.0f} KiB)")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".safetensors").write_bytes(data)
        write_json(path.with_suffix(".json"), info)
    return Bank(data, info)


# ---------------------------------------------------------------------------------------------
# auto


def _gate_of(training: dict[str, Any] | None) -> dict[str, Any] | None:
    metrics = (training or {}).get("metrics") or {}
    gate = metrics.get("gate")
    return gate if isinstance(gate, dict) else None


def auto_choice(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What the service's `method=auto` would activate for this speaker, from the two gates."""
    from app.services.method_choice import choose_method

    saml = entry.get("saml") or {}
    gates = {"lora": _gate_of(entry.get("training")), "saml": _gate_of(saml.get("training"))}
    present = {method: gate for method, gate in gates.items() if gate is not None}
    if len(present) < len(gates):
        return None
    choice = choose_method(present)
    adapter = entry.get("adapter") if choice.winner == "lora" else saml.get("adapter")
    refused = ((adapter or {}).get("bounds") or {}).get("refused")
    activated = bool(present[choice.winner]["activate"]) and refused is None
    return {"winner": choice.winner, "activated": activated, "reason": choice.loser_note}


def served_model(entry: dict[str, Any], method: str) -> str:
    """The score column a speaker is served under `method` (`nf4` where nothing is activated)."""
    if method == "auto":
        auto = entry.get("auto") or {}
        return MODEL_OF[auto["winner"]] if auto.get("activated") else "nf4"
    training = (
        entry.get("training") if method == "lora" else (entry.get("saml") or {}).get("training")
    )
    gate = _gate_of(training)
    return MODEL_OF[method] if gate is not None and gate["activate"] else "nf4"


# ---------------------------------------------------------------------------------------------
# Pooled statistics


def _errors(entry: dict[str, Any], split: str, model: str) -> list[tuple[int, int]]:
    scored = entry["splits"].get(split, {}).get(model) or {}
    return [(u["errors"], u["words"]) for u in scored.get("utterances", [])]


def _interval(values: np.ndarray[Any, Any]) -> list[float]:
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def pooled_methods(
    entries: Sequence[dict[str, Any]], split: str, methods: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Pooled over every test utterance of the speakers every method was scored on."""
    trained = trained_methods(methods)
    columns = ["nf4", *(f"{m} trained" for m in trained), *(f"{m} served" for m in methods)]
    rows: list[list[int]] = []
    worse: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for entry in entries:
        nf4 = _errors(entry, split, "nf4")
        per_column = [nf4]
        per_column += [_errors(entry, split, MODEL_OF[m]) for m in trained]
        try:
            per_column += [_errors(entry, split, served_model(entry, m)) for m in methods]
        except KeyError:  # no auto choice: a method's adapter failed to train
            continue
        if not nf4 or any(len(c) != len(nf4) for c in per_column):
            continue
        rows += [[words, *(c[i][0] for c in per_column)] for i, (_, words) in enumerate(nf4)]
        for method, column in zip(methods, per_column[1 + len(trained) :], strict=True):
            extra = sum(e for e, _ in column) - sum(e for e, _ in nf4)
            if extra > WORSE_WORDS:
                worse[method].append({"speaker": entry["speaker"], "extra_words": extra})
    if not rows:
        return {}
    return _statistics(np.array(rows, dtype=np.int64), columns, worse, len(entries), seed)


def _statistics(
    data: np.ndarray[Any, Any],
    columns: list[str],
    worse: dict[str, list[dict[str, Any]]],
    speakers_: int,
    seed: int,
) -> dict[str, Any]:
    """`data`: one row per utterance, its words then each column's errors (`nf4` first)."""
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, len(data), size=(2000, len(data)))].sum(axis=1)
    totals = {name: int(data[:, 1 + i].sum()) for i, name in enumerate(columns)}
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = {
            name: (samples[:, 1] - samples[:, 1 + i]) / samples[:, 1]
            for i, name in enumerate(columns)
        }
    words, base = int(data[:, 0].sum()), totals["nf4"]

    def reduction(name: str) -> float | None:
        return None if base == 0 else round((base - totals[name]) / base, 4)

    result: dict[str, Any] = {
        "utterances": len(data),
        "words": words,
        "speakers": speakers_,
        "wer": {name: round(errors / max(1, words), 4) for name, errors in totals.items()},
        "vs_nf4": {
            name: {"relative_reduction": reduction(name), "ci95": _interval(boot[name])}
            for name in columns[1:]
        },
        "served_worse_than_nf4": worse,
    }
    if "saml trained" in totals and "lora trained" in totals:
        result["saml_minus_lora_points"] = {
            kind: _points(reduction(f"saml {kind}"), reduction(f"lora {kind}"), boot, kind)
            for kind in ("trained", "served")
        }
    return result


def _points(
    saml: float | None, lora: float | None, boot: dict[str, Any], kind: str
) -> dict[str, Any]:
    """SAML's relative reduction minus LoRA's, in points, with its paired-bootstrap interval."""
    difference = None if saml is None or lora is None else round(100 * (saml - lora), 2)
    interval = _interval(boot[f"saml {kind}"] - boot[f"lora {kind}"])
    return {"points": difference, "ci95": [round(100 * v, 2) for v in interval]}


# ---------------------------------------------------------------------------------------------
# Report


def report_methods(report: dict[str, Any]) -> tuple[str, ...]:
    """The methods a report compared (`lora` alone for reports without `--methods`)."""
    return tuple((report.get("options") or {}).get("methods") or ("lora",))


def _gate_cell(training: dict[str, Any] | None) -> str:
    gate = _gate_of(training)
    return "-" if gate is None else ("on" if gate["activate"] else "off")


def _wer_cell(entry: dict[str, Any], split: str, model: str) -> str:
    value = entry["splits"].get(split, {}).get(model, {}).get("wer")
    return "-" if value is None else f"{value:.3f}"


def _seconds(training: dict[str, Any] | None) -> str:
    return "-" if not training else f"{training['wall_seconds']:.0f}"


def method_rows(entries: Sequence[dict[str, Any]], split: str) -> list[list[object]]:
    """Per speaker: WER of the base and of each method's adapter, its gate, auto's choice."""
    rows: list[list[object]] = []
    for entry in entries:
        saml = entry.get("saml") or {}
        auto = entry.get("auto") or {}
        served = served_model(entry, "auto") if auto else None
        rows.append(
            [
                entry["speaker"],
                _wer_cell(entry, split, "nf4"),
                _wer_cell(entry, split, "pqm"),
                _gate_cell(entry.get("training")),
                _wer_cell(entry, split, "saml"),
                _gate_cell(saml.get("training")),
                auto.get("winner", "-"),
                "-" if served is None else _wer_cell(entry, split, served),
                _seconds(entry.get("training")),
                _seconds(saml.get("training")),
                "-" if not saml.get("adapter") else f"{saml['adapter']['bytes'] / 1024:.0f}",
            ]
        )
    return rows


METHOD_HEADERS = (
    "speaker",
    "nf4",
    "lora",
    "gate",
    "saml",
    "gate",
    "auto picks",
    "auto served",
    "lora s",
    "saml s",
    "saml KiB",
)


def pooled_lines(kind: str, split: str, stats: dict[str, Any]) -> list[str]:
    if not stats:
        return []
    wer = ", ".join(f"{name} {value:.3f}" for name, value in stats["wer"].items())
    lines = [
        f"{kind} {split}: {stats['speakers']} speakers, {stats['utterances']} utterances, "
        f"{stats['words']} words; WER {wer}"
    ]
    for name, value in stats["vs_nf4"].items():
        low, high = value["ci95"]
        lines.append(
            f"  {name}: {_percent(value['relative_reduction'])} vs nf4 "
            f"(95% {_percent(low)} to {_percent(high)})"
        )
    for kind_, value in stats.get("saml_minus_lora_points", {}).items():
        low, high = value["ci95"]
        lines.append(
            f"  saml - lora, {kind_}: {value['points']:+.1f} points (95% {low:+.1f} to {high:+.1f})"
        )
    for method, worse in stats["served_worse_than_nf4"].items():
        named = ", ".join(f"{w['speaker']} +{w['extra_words']}" for w in worse) or "none"
        lines.append(f"  {method} served worse than nf4 by > {WORSE_WORDS} words: {named}")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"
