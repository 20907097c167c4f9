"""The enrolment job's state machine: every allowed transition passes, every other one raises,
and no code outside `EnrolmentRepository` writes a job's status."""

import ast
from itertools import product
from pathlib import Path

import pytest

from app.db.enrolment_status import (
    NEXT_STATUSES,
    UNFINISHED,
    EnrolmentStatus,
    IllegalTransitionError,
    check_transition,
)

S = EnrolmentStatus
ALLOWED = {
    (None, S.QUEUED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.QUEUED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
}
EVERY_PAIR = list(product([None, *EnrolmentStatus], EnrolmentStatus))
APP = Path(__file__).parents[2] / "app"
REPOSITORIES = {
    APP / "db" / "repositories" / name for name in ("jobs.py", "enrolments.py", "expert_banks.py")
}
"""Where job statuses are written: the shared job machinery and each kind's `add`."""
JOB_MODELS = ("EnrolmentJob", "ExpertBank", "self._model")


def test_the_table_is_the_one_documented_here() -> None:
    declared = {(current, new) for current, nexts in NEXT_STATUSES.items() for new in nexts}
    assert declared == ALLOWED
    assert set(NEXT_STATUSES) == {None, *EnrolmentStatus}


def test_the_values_are_the_stored_and_published_ones() -> None:
    assert [status.value for status in EnrolmentStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert {S.QUEUED, S.RUNNING} == UNFINISHED
    assert [status for status in EnrolmentStatus if status.finished] == [
        S.SUCCEEDED,
        S.FAILED,
        S.CANCELLED,
    ]


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED, key=str))
def test_an_allowed_transition_passes(
    current: EnrolmentStatus | None, new: EnrolmentStatus
) -> None:
    assert check_transition(current, new) is new
    if current is not None:  # as read back from the database
        assert check_transition(current.value, new) is new


@pytest.mark.parametrize(
    ("current", "new"), [pair for pair in EVERY_PAIR if pair not in ALLOWED], ids=str
)
def test_any_other_transition_raises(current: EnrolmentStatus | None, new: EnrolmentStatus) -> None:
    with pytest.raises(IllegalTransitionError, match=f"cannot become {new}") as raised:
        check_transition(current, new)
    assert (raised.value.current, raised.value.new) == (current, new)


def test_an_unknown_stored_status_is_refused() -> None:
    with pytest.raises(ValueError, match="paused"):
        check_transition("paused", S.RUNNING)


def _status_writes(tree: ast.AST) -> list[tuple[int, ast.expr]]:
    """(line, value written) of every `<anything>.status = ...` and every `status=` passed to
    a job model's constructor or to the values of an `update(<job model>)`."""
    writes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                if any(isinstance(e, ast.Attribute) and e.attr == "status" for e in elements):
                    writes.append((node.lineno, node.value))
        if isinstance(node, ast.Call) and any(m in ast.unparse(node.func) for m in JOB_MODELS):
            writes += [(node.lineno, k.value) for k in node.keywords if k.arg == "status"]
    return writes


def test_only_the_repository_writes_a_job_status() -> None:
    found = {
        f"{path.relative_to(APP)}:{line}"
        for path in APP.rglob("*.py")
        if path not in REPOSITORIES
        for line, _ in _status_writes(ast.parse(path.read_text(), str(path)))
    }
    assert found == set()


def test_the_repository_writes_a_status_only_through_the_machine() -> None:
    writes = [
        write for path in REPOSITORIES for write in _status_writes(ast.parse(path.read_text()))
    ]
    assert len(writes) >= 4, "adding, claiming, re-queueing and finishing each write one"
    for line, value in writes:
        assert isinstance(value, ast.Call), line
        assert ast.unparse(value.func) == "check_transition", line
