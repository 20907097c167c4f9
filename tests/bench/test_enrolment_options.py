from pathlib import Path

import pytest

from bench.enrolment import cap_enrolment, parse_options
from bench.speakers import SpeakerData, Utterance


def _utterances(prefix: str, count: int) -> list[Utterance]:
    return [Utterance(Path(f"{prefix}{i}.wav"), f"{prefix} {i}") for i in range(count)]


def test_a_capped_enrolment_keeps_the_first_recordings_train_before_dev() -> None:
    data = SpeakerData("s", "", train=_utterances("train", 3), dev=_utterances("dev", 2))

    cap_enrolment(data, 4)

    assert [u.text for u in data.train] == ["train 0", "train 1", "train 2", "dev 0"]
    assert data.dev == []


def test_the_cap_is_recorded_in_the_options_and_a_cap_below_two_is_refused() -> None:
    options, _ = parse_options(["--suite", "fsdd", "--enrol-recordings", "14"])
    assert options.enrol_recordings == 14
    with pytest.raises(SystemExit):
        parse_options(["--suite", "fsdd", "--enrol-recordings", "1"])
