"""Chooses the gate's thresholds on the speechocean762 pool half, by replaying its decision.

    python -m bench.enrolment --suite speechocean --half pool --no-cross \\
        --out bench/results/enrolment-pool.json
    python scripts/tune_gate.py bench/results/enrolment-pool.json

Each pool speaker's job recorded what the gate saw: every enrolment recording's words and word
errors, by what was served and by an adapter trained without it (`metrics.gate.recordings`). The
adapter's effect on the speaker's 6 test recordings is the truth. For each (confidence, minimum
words saved) the decision is replayed and the table shows what would be served: the pooled
reduction against the NF4 base with its bootstrap interval, the speaker served worst in words,
and the gate's confusion. Reports of the evaluation half are refused: it is for reporting only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.training.gate import GateConfig, HeldOutScore, decide
from bench.common import print_table
from bench.enrolment import pooled

CONFIDENCES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_WORDS = (0, 1, 2, 3, 4)


def replayed(entries: Sequence[dict[str, Any]], config: GateConfig) -> list[dict[str, Any]]:
    """The entries with the gate's decision made again under `config`."""
    out = []
    for entry in entries:
        gate = entry["training"]["metrics"]["gate"]
        scores = [HeldOutScore(*row) for row in gate["recordings"]]
        evidence = decide(scores, config, folds=gate["folds"], served="the base model")
        copied = copy.deepcopy(entry)
        copied["training"]["metrics"]["gate"]["activate"] = evidence.activate
        out.append(copied)
    return out


def rows(entries: Sequence[dict[str, Any]]) -> list[list[object]]:
    table: list[list[object]] = []
    for confidence in CONFIDENCES:
        for min_words in MIN_WORDS:
            config = GateConfig(confidence=confidence, min_words_saved=min_words)
            stats = pooled(replayed(entries, config), "test")
            served = stats["served_vs_nf4"]
            confusion = stats["gate_confusion"]
            worst = stats["worst_served_extra_words"]
            helped = confusion["activated_helps"] + confusion["refused_helps"]
            table.append(
                [
                    f"{confidence:.0%}",
                    min_words,
                    f"{100 * served['relative_reduction']:+.1f}%",
                    f"{100 * served['ci95'][0]:+.1f}..{100 * served['ci95'][1]:+.1f}%",
                    f"{worst['words']:+d} ({worst['speaker']})",
                    f"{confusion['activated_helps']}/{helped}",
                    confusion["activated_hurts"],
                ]
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path, help="a bench.enrolment JSON of the pool half")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    if "speechocean762-evaluation" in report["suites"]:
        parser.error("this report holds the evaluation half: tune on the pool half only")
    entries = [
        e
        for e in report["speakers"]
        if e["suite"] == "speechocean762-pool"
        and "gate" in (e.get("training") or {}).get("metrics", {})
    ]
    if not entries:
        parser.error("no pool-half speaker with the gate's evidence in this report")
    adapter = pooled(entries, "test")["pqm_vs_nf4"]
    print(
        f"{len(entries)} pool speakers; the adapter as trained, on every speaker: "
        f"{100 * adapter['relative_reduction']:+.1f}% vs NF4"
    )
    headers = [
        "confidence",
        "min words",
        "served vs nf4",
        "95% interval",
        "worst served",
        "activated/helped",
        "activated but worse",
    ]
    print_table(headers, rows(entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
