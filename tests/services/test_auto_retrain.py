"""Which stored recordings an automatic retraining takes: the newest that fit one enrolment."""

from app.config import EnrolmentSettings
from app.db.models import Recording
from app.services.auto_retrain import newest_that_fit


def recordings(*seconds: float) -> list[Recording]:
    return [
        Recording(id=f"r{index}", transcript="x", blob_key="k", duration_seconds=length)
        for index, length in enumerate(seconds)
    ]


def ids(chosen: list[Recording]) -> list[str]:
    return [recording.id for recording in chosen]


def test_all_when_they_fit() -> None:
    assert ids(newest_that_fit(recordings(2.0, 3.0, 4.0), EnrolmentSettings())) == [
        "r0",
        "r1",
        "r2",
    ]


def test_the_newest_within_the_count_oldest_first() -> None:
    limits = EnrolmentSettings(min_utterances=2, max_utterances=2)
    assert ids(newest_that_fit(recordings(2.0, 3.0, 4.0), limits)) == ["r1", "r2"]


def test_the_newest_within_the_seconds() -> None:
    limits = EnrolmentSettings(max_total_seconds=7.5)
    assert ids(newest_that_fit(recordings(1.0, 2.0, 3.0, 4.0), limits)) == ["r2", "r3"]
