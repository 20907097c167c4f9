"""Real non-native speakers for the enrolment benchmark: the speechocean762 subset.

    python -m bench.speechocean [--half evaluation|pool] [--speakers 0005,0026]

60 speakers (30 children, 30 adults; Mandarin first language) reading short English sentences,
20 utterances each, split by the dataset's `speakers.tsv` into a `pool` half (for tuning and for
methods that pre-train on many speakers) and an `evaluation` half (benchmarks only). Per speaker:
the first 14 utterances in manifest order are the enrolment (what the speaker uploads; the gate
cross-validates over it), the other 6 the test set. Nothing is written; the recordings stay where
they are (`../shared/data/speechocean762`, or `$PQM_SPEECHOCEAN_DIR`).

Every suite built checks that the two halves share no speaker and no recording: tuning on one
and reporting on the other is only honest if they are disjoint.

Source: speechocean762, Junbo Zhang et al., Interspeech 2021 (arXiv 2104.01378), OpenSLR 101,
CC BY 4.0; keep this attribution with any table derived from it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from bench.common import REPO_ROOT
from bench.speakers import SpeakerData, Suite, Utterance, print_suite

__all__ = [
    "DEFAULT_DIR",
    "ENROL_UTTERANCES",
    "Half",
    "SpeechoceanUnavailable",
    "build_suite",
    "speakers_of",
]

DEFAULT_DIR = REPO_ROOT.parent / "shared" / "data" / "speechocean762"
ENV_DIR = "PQM_SPEECHOCEAN_DIR"
ENROL_UTTERANCES = 14
"""What a speaker uploads; the rest of their 20 utterances are the test set."""
ATTRIBUTION = "speechocean762 (Zhang et al., Interspeech 2021), OpenSLR 101, CC BY 4.0"

Half = Literal["pool", "evaluation"]


class SpeechoceanUnavailable(RuntimeError):
    """The recordings are not where the benchmark looks for them."""


def speechocean_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def speakers_of(root: Path) -> dict[str, dict[str, str]]:
    """speaker -> its `speakers.tsv` row (age, gender, half)."""
    return {row["speaker"]: row for row in _rows(root / "speakers.tsv")}


def _recordings(root: Path) -> dict[str, list[Utterance]]:
    """speaker -> their utterances, in manifest order."""
    by_speaker: dict[str, list[Utterance]] = {}
    for row in _rows(root / "manifest.tsv"):
        utterance = Utterance(root / row["path"], row["text"].lower())
        by_speaker.setdefault(row["speaker"], []).append(utterance)
    return by_speaker


def _check_disjoint(
    speakers: dict[str, dict[str, str]], recordings: dict[str, list[Utterance]]
) -> None:
    halves = {row["half"] for row in speakers.values()}
    if halves != {"pool", "evaluation"}:
        raise SpeechoceanUnavailable(f"speakers.tsv names halves {sorted(halves)}")
    paths: dict[str, set[Path]] = {"pool": set(), "evaluation": set()}
    for speaker, utterances in recordings.items():
        paths[speakers[speaker]["half"]].update(u.path for u in utterances)
    shared = paths["pool"] & paths["evaluation"]
    if shared:
        raise AssertionError(f"the pool and evaluation halves share recordings: {sorted(shared)}")


def build_suite(
    half: Half = "evaluation", speakers: Sequence[str] | None = None, *, root: Path | None = None
) -> Suite:
    """The suite of one half (default: every speaker of it), enrolment and test per speaker.

    Raises `SpeechoceanUnavailable` when the data is missing, `ValueError` for a speaker that
    is unknown or belongs to the other half.
    """
    root = speechocean_dir() if root is None else root
    if not (root / "manifest.tsv").is_file():
        raise SpeechoceanUnavailable(
            f"speechocean762 not found at {root} (set ${ENV_DIR} to the dataset directory)"
        )
    table = speakers_of(root)
    recordings = _recordings(root)
    _check_disjoint(table, recordings)
    in_half = [speaker for speaker, row in table.items() if row["half"] == half]
    names = list(speakers) if speakers else in_half
    wrong = [name for name in names if name not in in_half]
    if wrong:
        raise ValueError(f"speaker(s) {wrong} are not in the {half} half")
    return Suite(
        kind=f"speechocean762-{half}",
        root=root,
        speakers={name: _speaker(name, table[name], recordings[name]) for name in names},
        info={"source": str(root), "half": half, "attribution": ATTRIBUTION},
    )


def pool_speakers(count: int) -> list[str]:
    """`count` pool speakers, children and adults alternately, in speakers.tsv order."""
    table = speakers_of(speechocean_dir())
    pool = [(name, int(row["age"]) < 18) for name, row in table.items() if row["half"] == "pool"]
    children = [name for name, child in pool if child]
    adults = [name for name, child in pool if not child]
    mixed = [name for pair in zip(children, adults, strict=False) for name in pair]
    rest = [name for name, _ in pool if name not in mixed]
    return (mixed + rest)[:count]


def _speaker(name: str, row: dict[str, str], utterances: list[Utterance]) -> SpeakerData:
    group = "child" if int(row["age"]) < 18 else "adult"
    return SpeakerData(
        name=name,
        description=f"speechocean762 {group}, age {row['age']}, {row['gender']}",
        train=utterances[:ENROL_UTTERANCES],
        test=utterances[ENROL_UTTERANCES:],
        info={"age": int(row["age"]), "gender": row["gender"], "group": group},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speechocean", description=__doc__)
    parser.add_argument("--half", choices=("evaluation", "pool"), default="evaluation")
    parser.add_argument("--speakers", help="comma-separated ids (default: the whole half)")
    args = parser.parse_args(argv)
    try:
        suite = build_suite(args.half, args.speakers.split(",") if args.speakers else None)
    except SpeechoceanUnavailable as exc:
        print(f"speechocean762 skipped: {exc}", file=sys.stderr)
        return 0
    except ValueError as exc:
        parser.error(str(exc))
    print_suite(suite, "group")
    print(ATTRIBUTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
