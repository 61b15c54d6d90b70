"""What a workflow member's worker puts before its own arguments, read when it runs.

The store never decodes a result: the worker that runs a follow-up reads its
predecessors' rows (one indexed read, outside any write transaction) and decodes each
result with the serializer that wrote it, so JSON and pickle members mix freely.
"""

from __future__ import annotations

from typing import Any

from castor.errors import WorkflowInputMissing
from castor.serialization import get_serializer
from castor.states import TaskStatus
from castor.store.base import INPUT_ERROR, INPUT_RESULT, INPUT_RESULTS, StepResult, Store, TaskRecord


def compose_inputs(store: Store, record: TaskRecord) -> tuple[Any, ...]:
    """The values to prepend to `record`'s own arguments (none for a plain task or a .si() member)."""
    if record.wf_input is None or record.workflow_id is None:
        return ()
    if record.wf_input == INPUT_ERROR:
        return _failed_member(store, record)
    step = (record.wf_step or 0) - 1
    members = store.step_results(record.workflow_id, step)
    if not members or any(m.status != TaskStatus.SUCCESS for m in members):
        raise WorkflowInputMissing(
            f"task {record.id} ({record.name}) needs the results of step {step} of workflow "
            f"{record.workflow_id}, and they are gone (a row deleted by hand?)")
    values = [_decoded(m) for m in members]
    if record.wf_input == INPUT_RESULT:
        return (values[0],)
    if record.wf_input == INPUT_RESULTS:
        return (values,)
    raise WorkflowInputMissing(f"task {record.id}: unknown workflow input {record.wf_input!r}")


def _failed_member(store: Store, record: TaskRecord) -> tuple[Any, ...]:
    """link_error's (task id, error dict): the member whose failure stopped the workflow."""
    workflow = store.workflow(record.workflow_id or "")
    failed = None if workflow is None or workflow.first_bad is None else store.get(workflow.first_bad)
    if failed is None:
        raise WorkflowInputMissing(
            f"task {record.id} ({record.name}) handles the failure of workflow {record.workflow_id}, "
            "and the failed member's row is gone (deleted by hand?)")
    return (failed.id, failed.error)


def _decoded(member: StepResult) -> Any:
    return None if member.result is None else get_serializer(member.serializer).loads(member.result)
