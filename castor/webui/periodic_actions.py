"""Disable, enable and "run now" on a periodic task, from the Periodic screen.

Each goes through the Manager, so the dashboard does what `castord schedules
disable|enable|run` does, and each is logged as one `web.action` line (who, what).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from castor.logs import get_logger

if TYPE_CHECKING:
    from castor.manager import Manager

log = get_logger("castor.webui")

SCHEDULE_ACTIONS = ("disable", "enable", "run")


def act_on_schedule(manager: Manager, action: str, name: str, *, who: dict[str, Any]) -> str | None:
    """Do `action` on schedule `name` (UnknownTaskError for a name the app does not
    register). Returns the id of the task "run" enqueued, else None."""
    if action == "run":
        task_id = manager.run_schedule_now(name).id
        log.info("web.action", action=action, scope="schedule", schedule=name, task_ids=[task_id], count=1, **who)
        return task_id
    changed = manager.enable_schedule(name) if action == "enable" else manager.disable_schedule(name)
    log.info("web.action", action=action, scope="schedule", schedule=name, count=int(changed), **who)
    return None
