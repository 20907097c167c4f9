"""The speechocean762 suites: real speakers, halves that never meet."""

import shutil
from pathlib import Path

import pytest

from bench.speakers import load
from bench.speechocean import (
    ENROL_UTTERANCES,
    SpeechoceanUnavailable,
    build_suite,
    speakers_of,
    speechocean_dir,
)

pytestmark = pytest.mark.skipif(
    not (speechocean_dir() / "manifest.tsv").is_file(), reason="speechocean762 is not on disk"
)


def test_each_half_holds_its_30_speakers_and_they_never_meet() -> None:
    pool, evaluation = build_suite("pool"), build_suite("evaluation")

    assert len(pool.speakers) == len(evaluation.speakers) == 30
    assert not set(pool.speakers) & set(evaluation.speakers)
    paths = [
        {u.path for data in suite.speakers.values() for u in data.train + data.test}
        for suite in (pool, evaluation)
    ]
    assert not paths[0] & paths[1]


def test_a_speaker_enrols_with_14_and_is_tested_on_the_other_6() -> None:
    suite = build_suite("evaluation", ["0005"])
    data = suite.speakers["0005"]

    assert (len(data.train), len(data.dev), len(data.test)) == (ENROL_UTTERANCES, 0, 6)
    assert not {u.path for u in data.train} & {u.path for u in data.test}
    audio = load(data.test[0])
    assert 1.0 < len(audio) / 16_000 < 20.0
    assert data.test[0].text == data.test[0].text.lower()


def test_a_speaker_of_the_other_half_is_refused() -> None:
    pool_speaker = next(
        s for s, row in speakers_of(speechocean_dir()).items() if row["half"] == "pool"
    )
    with pytest.raises(ValueError, match="not in the evaluation half"):
        build_suite("evaluation", [pool_speaker])


def test_halves_that_share_a_recording_are_caught(tmp_path: Path) -> None:
    root = tmp_path / "speechocean762"
    root.mkdir()
    shutil.copy(speechocean_dir() / "speakers.tsv", root / "speakers.tsv")
    manifest = (speechocean_dir() / "manifest.tsv").read_text().splitlines()
    table = speakers_of(root)
    pool_line = next(line for line in manifest[1:] if table[line.split("\t")[1]]["half"] == "pool")
    evaluation_speaker = next(s for s, row in table.items() if row["half"] == "evaluation")
    path, _, text = pool_line.split("\t")
    leaked = f"{path}\t{evaluation_speaker}\t{text}"
    (root / "manifest.tsv").write_text("\n".join([*manifest, leaked]) + "\n")

    with pytest.raises(AssertionError, match="share recordings"):
        build_suite("evaluation", root=root)


def test_missing_data_is_a_clear_skip(tmp_path: Path) -> None:
    with pytest.raises(SpeechoceanUnavailable, match="not found"):
        build_suite(root=tmp_path)
