"""castor/workflow_rules.py: next_move over the failure table (docs/workflows.md), and the
WAITING transitions. Pure: no store."""

from __future__ import annotations

import pytest

from castor.states import TaskStatus, WorkflowStatus, can_transition, parse_status
from castor.workflow_rules import Move, WorkflowRow, next_move

S, F, C = TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED
RUNNING, SUCCESS, FAILED, CANCELLED = (WorkflowStatus.RUNNING, WorkflowStatus.SUCCESS, WorkflowStatus.FAILED,
                                       WorkflowStatus.CANCELLED)

# a.apply_async(link=b, link_error=e): [a] [b], the handler covering step 0.
LINK = WorkflowRow(step=0, remaining=1, sizes=(1, 1), handler_step=0, has_handler=True)
LINK_AT_B = WorkflowRow(step=1, remaining=1, sizes=(1, 1), handler_step=0, has_handler=True)
CHAIN = WorkflowRow(step=1, remaining=1, sizes=(1, 1, 1))
CHAIN_LAST = WorkflowRow(step=2, remaining=1, sizes=(1, 1, 1))
TWO_LINKS = WorkflowRow(step=1, remaining=2, sizes=(1, 2))
GROUP = WorkflowRow(step=0, remaining=3, sizes=(3,))
CHORD = WorkflowRow(step=0, remaining=3, sizes=(3, 1))
CHORD_AT_CALLBACK = WorkflowRow(step=1, remaining=1, sizes=(3, 1))
# chain(a, group(b, c), d): [a] [b c] [d], at the group.
GROUP_IN_CHAIN = WorkflowRow(step=1, remaining=2, sizes=(1, 2, 1))


def move(state: WorkflowStatus, step: int, remaining: int, first_bad: str | None = None, *,
         release_step: int | None = None, release_handler: bool = False, stop: bool = False,
         cancel_handler: bool = False) -> Move:
    return Move(state, step, remaining, first_bad, release_step, release_handler, stop, cancel_handler)


# (row, ended members, the move): one line per row of the failure table slices 1-4 cover.
TABLE = {
    "link: the task succeeds -> link released, handler cancelled":
        (LINK, [("a", S)], move(RUNNING, 1, 1, release_step=1, cancel_handler=True)),
    "link: the link succeeds -> success":
        (LINK_AT_B, [("b", S)], move(SUCCESS, 1, 0, stop=True)),
    "link: the task fails for good -> failed, handler released, link stopped":
        (LINK, [("a", F)], move(FAILED, 0, 0, "a", release_handler=True, stop=True)),
    "link: the link fails -> failed, the handler (past its steps) not released":
        (LINK_AT_B, [("b", F)], move(FAILED, 1, 0, "b", stop=True)),
    "link: the task cancelled -> cancelled, link and handler stopped (a cancel is no failure)":
        (LINK, [("a", C)], move(CANCELLED, 0, 0, "a", stop=True)),
    "link without a handler: the task fails":
        (WorkflowRow(0, 1, (1, 1)), [("a", F)], move(FAILED, 0, 0, "a", stop=True)),
    "link_error only: the task succeeds -> success, the handler stopped (not needed)":
        (WorkflowRow(0, 1, (1,), 0, True), [("a", S)], move(SUCCESS, 0, 0, stop=True)),
    "chain: a link succeeds -> the next released":
        (CHAIN, [("b", S)], move(RUNNING, 2, 1, release_step=2)),
    "chain: the last link succeeds -> success":
        (CHAIN_LAST, [("c", S)], move(SUCCESS, 2, 0, stop=True)),
    "chain: a link fails for good -> failed, later links stopped":
        (CHAIN, [("b", F)], move(FAILED, 1, 0, "b", stop=True)),
    "chain: a link cancelled -> cancelled":
        (CHAIN, [("b", C)], move(CANCELLED, 1, 0, "b", stop=True)),
    "chain with link_error (covers all): a late link fails -> the handler released":
        (WorkflowRow(2, 1, (1, 1, 1), None, True), [("c", F)], move(FAILED, 2, 0, "c", release_handler=True,
                                                                     stop=True)),
    "chain with link_error: a link succeeds -> the handler keeps waiting":
        (WorkflowRow(0, 1, (1, 1), None, True), [("a", S)], move(RUNNING, 1, 1, release_step=1)),
    "two links: one succeeds -> the step waits for the other":
        (TWO_LINKS, [("b", S)], move(RUNNING, 1, 1)),
    "two links: both in one batch -> success":
        (TWO_LINKS, [("b", S), ("b1", S)], move(SUCCESS, 1, 0, stop=True)),
    "two links: a failure and a cancel in one batch -> failed, named by the failure":
        (TWO_LINKS, [("b", C), ("b1", F)], move(FAILED, 1, 0, "b1", stop=True)),
    "two links: two cancels -> cancelled, the first by id":
        (TWO_LINKS, [("b1", C), ("b", C)], move(CANCELLED, 1, 0, "b", stop=True)),
    "group: a member succeeds -> the group waits for the others":
        (GROUP, [("m1", S)], move(RUNNING, 0, 2)),
    "group: the last members succeed in one batch -> success":
        (WorkflowRow(0, 2, (3,)), [("m2", S), ("m0", S)], move(SUCCESS, 0, 0, stop=True)),
    "group: a member fails for good -> failed at once, the others left running":
        (GROUP, [("m1", F)], move(FAILED, 0, 2, "m1", stop=True)),
    "group: a member cancelled -> cancelled at once":
        (GROUP, [("m2", C)], move(CANCELLED, 0, 2, "m2", stop=True)),
    "chord: a member succeeds -> the callback keeps waiting":
        (CHORD, [("m0", S)], move(RUNNING, 0, 2)),
    "chord: the last member succeeds -> the callback released":
        (WorkflowRow(0, 1, (3, 1)), [("m1", S)], move(RUNNING, 1, 1, release_step=1)),
    "chord: a member fails for good -> failed, the callback stopped":
        (CHORD, [("m2", F), ("m0", S)], move(FAILED, 0, 1, "m2", stop=True)),
    "chord: the callback fails -> failed":
        (CHORD_AT_CALLBACK, [("cb", F)], move(FAILED, 1, 0, "cb", stop=True)),
    "chord: the callback succeeds -> success":
        (CHORD_AT_CALLBACK, [("cb", S)], move(SUCCESS, 1, 0, stop=True)),
    "group in a chain: both members succeed -> the link after it released":
        (GROUP_IN_CHAIN, [("c", S), ("b", S)], move(RUNNING, 2, 1, release_step=2)),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_next_move_follows_the_failure_table(case: str) -> None:
    row, ended, expected = TABLE[case]
    assert next_move(row, ended) == expected


def test_a_finished_move_says_so() -> None:
    assert next_move(LINK, [("a", F)]).finished
    assert not next_move(LINK, [("a", S)]).finished


def test_waiting_is_released_or_cancelled_only() -> None:
    waiting = TaskStatus.WAITING
    assert can_transition(waiting, TaskStatus.PENDING) and can_transition(waiting, TaskStatus.CANCELLED)
    assert not any(can_transition(waiting, s) for s in (TaskStatus.RUNNING, S, F))
    assert not waiting.finished
    assert not any(can_transition(s, waiting) for s in TaskStatus)  # only enqueue makes one
    assert parse_status("waiting") is waiting


def test_workflow_states() -> None:
    assert not RUNNING.finished
    assert SUCCESS.finished and FAILED.finished and CANCELLED.finished
