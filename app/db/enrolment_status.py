"""A background job's status as a state machine: the states and every transition allowed.

One machine for every kind of job the worker runs: enrolment jobs and expert-bank builds.
`JobRepository` (and so `EnrolmentRepository`, `ExpertBankRepository`) is the only code that
changes a job's status, and it asks `check_transition` first. The database column holds the
states' values.
"""

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "NEXT_STATUSES",
    "UNFINISHED",
    "EnrolmentStatus",
    "IllegalTransitionError",
    "check_transition",
]


class EnrolmentStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return not NEXT_STATUSES[self]


NEXT_STATUSES: Mapping[EnrolmentStatus | None, frozenset[EnrolmentStatus]] = {
    None: frozenset({EnrolmentStatus.QUEUED}),  # a new job
    EnrolmentStatus.QUEUED: frozenset({EnrolmentStatus.RUNNING, EnrolmentStatus.CANCELLED}),
    EnrolmentStatus.RUNNING: frozenset(
        {
            EnrolmentStatus.QUEUED,  # its worker stopped or shut down: another may retry it
            EnrolmentStatus.SUCCEEDED,
            EnrolmentStatus.FAILED,
            EnrolmentStatus.CANCELLED,
        }
    ),
    EnrolmentStatus.SUCCEEDED: frozenset(),
    EnrolmentStatus.FAILED: frozenset(),
    EnrolmentStatus.CANCELLED: frozenset(),
}
"""Status -> the statuses it may change to (None: a job not yet recorded)."""

UNFINISHED = frozenset(status for status in EnrolmentStatus if not status.finished)


class IllegalTransitionError(Exception):
    def __init__(self, current: EnrolmentStatus | None, new: EnrolmentStatus) -> None:
        allowed = ", ".join(sorted(NEXT_STATUSES[current])) or "none, it is finished"
        origin = "a new job" if current is None else f"a job {current}"
        super().__init__(f"{origin} cannot become {new} (allowed: {allowed})")
        self.current = current
        self.new = new


def check_transition(current: str | None, new: EnrolmentStatus) -> EnrolmentStatus:
    """`new`, when a job whose status is `current` may change to it; raises
    `IllegalTransitionError` otherwise."""
    state = None if current is None else EnrolmentStatus(current)
    if new not in NEXT_STATUSES[state]:
        raise IllegalTransitionError(state, new)
    return new
