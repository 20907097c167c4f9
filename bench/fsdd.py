"""Real speakers for the enrolment benchmark: the Free Spoken Digit Dataset (FSDD).

    python -m bench.fsdd [--speakers george,nicolas]

FSDD holds 8 kHz recordings `{digit}_{speaker}_{index}.wav` of six male speakers (jackson and
theo: USA; nicolas: Belgian French; yweweler and lucas: German; george: Greek), 50 takes of each
digit. Per speaker this builds "dictated number" utterances by joining 4-6 clips with 0.15 s of
silence (resampled to 16 kHz with soxr when loaded; nothing is written, the recordings stay
where they are):

- enrolment: 40 utterances from clip indices 0-29 (each clip used at most once), of which the
  last 8 are the dev split (early stopping) and the first 32 the train split;
- test: 50 utterances of 4 clips from indices 30-49, every one of those 200 clips used once.

The transcript is the digit words ("seven three nine"); hypotheses are scored after spelling
each numeral out digit by digit (`score_text`), so "739" counts as "seven three nine".
Everything is seeded from the speaker's name: the same files give the same suite.

The data lives outside the repository (CC BY-SA 4.0; `../shared/data/fsdd`, or `$PQM_FSDD_DIR`).
When it is absent, `build_suite` raises `FsddUnavailable`, which the benchmark reports as a skip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import REPO_ROOT
from bench.speakers import SpeakerData, Suite, Utterance, print_suite

__all__ = [
    "ACCENTS",
    "DEFAULT_DIR",
    "FSDD_SPEAKERS",
    "FsddUnavailable",
    "build_suite",
    "fsdd_dir",
    "spell_digits",
]

DEFAULT_DIR = REPO_ROOT.parent / "shared" / "data" / "fsdd"
ENV_DIR = "PQM_FSDD_DIR"
FSDD_SPEAKERS = ("jackson", "theo", "nicolas", "yweweler", "lucas", "george")
ACCENTS = {
    "jackson": "USA",
    "theo": "USA",
    "nicolas": "Belgian/French",
    "yweweler": "German",
    "lucas": "German",
    "george": "Greek",
}
QUICK_SPEAKERS = ("george",)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENROL_INDICES = range(30)
TEST_INDICES = range(30, 50)
ENROL_UTTERANCES = 40
DEV_UTTERANCES = 8
ENROL_CLIPS = (4, 6)
"""Clips per enrolment utterance, inclusive bounds."""
TEST_UTTERANCES = 50
TEST_CLIPS = 4
GAP_S = 0.15
_FILE = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")
_DIGIT = re.compile(r"\d")


class FsddUnavailable(RuntimeError):
    """The FSDD recordings are not where the benchmark looks for them."""


def fsdd_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def spell_digits(text: str) -> str:
    """Every numeral spelled out digit by digit: "call 739" -> "call  seven  three  nine "."""
    return _DIGIT.sub(lambda match: f" {DIGIT_WORDS[int(match.group())]} ", text)


Clip = tuple[int, int, Path]
"""(digit, index, path)."""


def _clips(recordings: Path, speaker: str) -> list[Clip]:
    clips = []
    for path in recordings.glob(f"*_{speaker}_*.wav"):
        match = _FILE.fullmatch(path.name)
        if match and match.group(2) == speaker:
            clips.append((int(match.group(1)), int(match.group(3)), path))
    return sorted(clips)


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("|".join(("fsdd", *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _utterance(clips: Sequence[Clip]) -> Utterance:
    text = " ".join(DIGIT_WORDS[digit] for digit, _, _ in clips)
    parts = tuple(path for _, _, path in clips)
    return Utterance(parts[0], text, parts=parts, gap_s=GAP_S)


def _enrolment(pool: list[Clip], rng: random.Random, speaker: str) -> list[Utterance]:
    rng.shuffle(pool)
    utterances = []
    for _ in range(ENROL_UTTERANCES):
        size = rng.randint(*ENROL_CLIPS)
        if len(pool) < size:
            raise FsddUnavailable(f"{speaker}: too few clips with index 0-29 for the enrolment set")
        utterances.append(_utterance(pool[:size]))
        del pool[:size]
    return utterances


def _test(pool: list[Clip], rng: random.Random, speaker: str) -> list[Utterance]:
    if len(pool) < TEST_UTTERANCES * TEST_CLIPS:
        raise FsddUnavailable(
            f"{speaker}: {len(pool)} clips with index 30-49, need {TEST_UTTERANCES * TEST_CLIPS}"
        )
    rng.shuffle(pool)
    return [
        _utterance(pool[start : start + TEST_CLIPS])
        for start in range(0, TEST_UTTERANCES * TEST_CLIPS, TEST_CLIPS)
    ]


def speaker_data(recordings: Path, speaker: str) -> SpeakerData:
    clips = _clips(recordings, speaker)
    if not clips:
        raise FsddUnavailable(f"no FSDD recordings for speaker {speaker!r} in {recordings}")
    enrol_pool = [clip for clip in clips if clip[1] in ENROL_INDICES]
    test_pool = [clip for clip in clips if clip[1] in TEST_INDICES]
    enrolment = _enrolment(enrol_pool, _rng("enrol", speaker), speaker)
    test = _test(test_pool, _rng("test", speaker), speaker)
    cut = len(enrolment) - DEV_UTTERANCES
    return SpeakerData(
        name=speaker,
        description=f"FSDD, {ACCENTS.get(speaker, 'unknown')} accent",
        train=enrolment[:cut],
        dev=enrolment[cut:],
        test=test,
        heldout=[],
        info={"accent": ACCENTS.get(speaker), "clips": len(clips)},
    )


def build_suite(
    speakers: Sequence[str] | None = None, *, quick: bool = False, root: Path | None = None
) -> Suite:
    """The FSDD suite for `speakers` (default: all six; `quick`: george only).

    Raises `FsddUnavailable` when the recordings are missing, `ValueError` for an unknown name.
    """
    root = fsdd_dir() if root is None else root
    recordings = root / "recordings"
    if not recordings.is_dir():
        raise FsddUnavailable(
            f"FSDD recordings not found at {recordings} (set ${ENV_DIR} to the dataset directory)"
        )
    names = list(speakers) if speakers else list(QUICK_SPEAKERS if quick else FSDD_SPEAKERS)
    unknown = [name for name in names if name not in FSDD_SPEAKERS]
    if unknown:
        raise ValueError(f"unknown FSDD speaker(s) {unknown}; known: {list(FSDD_SPEAKERS)}")
    return Suite(
        kind="fsdd",
        root=root,
        speakers={name: speaker_data(recordings, name) for name in names},
        score_text=spell_digits,
        info={"source": str(root), "licence": "CC BY-SA 4.0"},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fsdd", description=__doc__)
    parser.add_argument("--speakers", help="comma-separated names (default: all six)")
    args = parser.parse_args(argv)
    try:
        suite = build_suite(args.speakers.split(",") if args.speakers else None)
    except FsddUnavailable as exc:
        print(f"FSDD skipped: {exc}", file=sys.stderr)
        return 0
    except ValueError as exc:
        parser.error(str(exc))
    print_suite(suite, "accent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
