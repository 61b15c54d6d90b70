"""`castord move --from FILE --to postgresql://...`: a beaver-db file's unfinished tasks to PostgreSQL.

What moves: every pending task (due, scheduled for later, waiting to retry) as it is
(id, arguments, eta, priority, queue, options, attempts, losses, history, unique and
cache keys), and each periodic schedule's last fired tick. Finished tasks stay in the
file. A running task moves only once its worker is gone: its lease ended (it goes back
to the queue first, counted as a lost worker, as any worker's recovery would), and no
castord runs on the file.

The order of writes makes a crash lose nothing. Page by page: the copies commit on the
target first, then the file deletes each task still as copied. A crash between the two
leaves a task in both; moving again finds its id on the target, leaves that one alone
and deletes the file's. Only if a castord (or worker) runs the file's copy before the
move is repeated can such a task run twice; it never runs zero times.

A task changed in the file between its copy and the delete (a worker outside castord
claimed it, someone cancelled it) stays in the file, and its copy is taken back from the
target unless a worker there claimed it already (then it may run twice: reported).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from castor.errors import ConfigurationError, StoreError
from castor.states import TaskStatus
from castor.store import POSTGRESQL_SCHEMES, Query, Store, database_path, display_url, is_server_url, open_store
from castor.store.base import TaskCopy
from castord.control import STALE_SECONDS, masters_using
from castord.errors import CastordError, ExitCode
from castord.pidfile import pid_alive

# Tasks read, copied and deleted per round (one transaction on each side).
PAGE = 500


@dataclass
class MoveReport:
    """What a move did (or, dry_run, would do), as data: the CLI prints or dumps it."""

    source: str
    target: str
    dry_run: bool
    # Running tasks whose lease had ended: back in the file's queue first (or failed:
    # WorkerLost after their third lost worker), then moved with the others.
    recovered: list[str] = field(default_factory=list)
    moved: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)
    scheduled: int = 0  # of the moved: with an ETA still ahead
    retrying: int = 0  # of the moved: attempted before
    # Of the moved: on the target already (a move that stopped before deleting them).
    already_there: list[str] = field(default_factory=list)
    schedules: list[str] = field(default_factory=list)
    # Left in the file: id -> why.
    left: dict[str, str] = field(default_factory=dict)
    # Changed in the file while their copy was claimed on the target: may run twice.
    doubled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MoveRefused(CastordError):
    exit_code = ExitCode.REFUSED


def source_path(source: str) -> str:
    """The beaver-db file named by a path or a sqlite: URL; it must exist (opening a
    missing one would create an empty file)."""
    if is_server_url(source):
        raise CastordError(f"--from must be a beaver-db file (a path or sqlite:///path), not "
                           f"{display_url(source)}", ExitCode.USAGE)
    try:
        path = database_path(source)
    except ConfigurationError as exc:
        raise CastordError(str(exc), ExitCode.USAGE) from None
    if not os.path.isfile(path):
        raise CastordError(f"--from: there is no beaver-db file at {path}", ExitCode.USAGE)
    return path


def check_target(target: str) -> None:
    if not target.startswith(POSTGRESQL_SCHEMES):
        raise CastordError(f"--to must be a PostgreSQL URL (postgresql://user@host/dbname), not "
                           f"{display_url(target)!r}", ExitCode.USAGE)


def _open(where: str, what: str) -> Store:
    try:
        return open_store(where)
    except ConfigurationError as exc:
        raise CastordError(f"{what}: {exc}", ExitCode.USAGE) from None
    except StoreError as exc:
        raise CastordError(f"{what}: {exc}", ExitCode.APP_LOAD_ERROR) from None


def castords_on(store: Store, path: str) -> list[str]:
    """Each castord that runs on the file, in words: a fresh heartbeat row (on this
    host: of a live pid), or a master of this host that holds the file open."""
    here = socket.gethostname()
    found: dict[tuple[str, int], str] = {}
    for row in store.daemons():
        if row["heartbeat_age"] > STALE_SECONDS or (row["host"] == here and not pid_alive(row["pid"])):
            continue
        found[(row["host"], row["pid"])] = f"pid {row['pid']} on {row['host']} (app {row['app']})"
    for pid in masters_using(path, None):
        found.setdefault((here, pid), f"pid {pid} on {here}")
    return [found[key] for key in sorted(found)]


def _return_lost(store: Store, report: MoveReport) -> None:
    """Running tasks: their worker must be gone (lease ended); they go back to the queue first."""
    from castor.worker import MAX_WORKER_LOSSES

    now = time.time()
    running = store.list(Query(status=TaskStatus.RUNNING))
    live = [r for r in running if r.lease_expires is not None and r.lease_expires >= now]
    if live:
        wait = max(r.lease_expires or now for r in live) - now
        raise MoveRefused(
            f"{len(live)} task{'s' if len(live) != 1 else ''} in {report.source} run under a live lease "
            f"(e.g. {live[0].id}): a worker outside castord (python -m castor?) may be running them. Stop "
            f"it, or, if it is gone, wait {wait:.0f} s for the leases to end, then move again")
    report.recovered = sorted(r.id for r in running)
    if running and not report.dry_run:
        store.recover_expired(now=now, max_lost=MAX_WORKER_LOSSES)


def _count(moved: Sequence[TaskCopy], report: MoveReport) -> None:
    now = time.time()
    report.moved += len(moved)
    queues = Counter(report.by_queue)
    queues.update(c.record.queue for c in moved)
    report.by_queue = dict(sorted(queues.items()))
    report.scheduled += sum(1 for c in moved if not c.at_once and c.record.eta > now)
    report.retrying += sum(1 for c in moved if c.record.attempts > 0)


def _move_page(page: Sequence[TaskCopy], source: Store, target: Store, report: MoveReport) -> list[TaskCopy]:
    """Copy, then delete from the file what is still as copied; returns the tasks moved."""
    outcome = target.insert_copies(page)
    for task_id, twin in outcome.twins.items():
        report.left[task_id] = f"the target has an unfinished task with its unique key: {twin}"
    copied = [c for c in page if c.id not in outcome.twins]
    deleted = set(source.delete_copies(copied))
    changed = [c for c in copied if c.id not in deleted]
    inserted = set(outcome.inserted)
    # Only the copies this round made are taken back; one an earlier move made is the target's.
    taken_back = set(target.delete_copies([c for c in changed if c.id in inserted]))
    for copy in changed:
        if copy.id in taken_back:
            report.left[copy.id] = "it changed in the file while it was being moved (claimed or cancelled there)"
        else:
            report.doubled.append(copy.id)
    report.already_there += sorted(set(outcome.present) & deleted)
    return [c for c in copied if c.id in deleted]


def move(source: str, target: str, *, dry_run: bool = False) -> MoveReport:
    """Move the unfinished tasks of the beaver-db file `source` to the PostgreSQL store
    `target` (see the module docstring); raises CastordError with the exit code."""
    path = source_path(source)
    check_target(target)
    report = MoveReport(source=path, target=display_url(target), dry_run=dry_run)
    src = _open(path, f"cannot use {path}")
    try:
        running = castords_on(src, path)
        if running:
            raise MoveRefused(f"castord runs on {path}: {', '.join(running)}. Stop it first (castord stop "
                              "APP): it would go on claiming the tasks being moved")
        workflows = src.unfinished_workflows()
        if workflows:
            # Members are copied one by one, so a workflow would be split between the stores.
            raise MoveRefused(f"{path} holds {workflows} unfinished workflow(s) (chains, groups, chords, links): moving would "
                              "split them between the two stores. Let them finish (or cancel them) first")
        _return_lost(src, report)
        dst = _open(target, f"cannot use {display_url(target)}")
        try:
            after: str | None = None
            while page := src.pending_copies(after=after, limit=PAGE):
                after = page[-1].id
                _count(page if dry_run else _move_page(page, src, dst, report), report)
            fired = src.schedules()
            report.schedules = sorted(fired) if dry_run else sorted(dst.merge_schedules(fired))
        finally:
            dst.close()
    finally:
        src.close()
    return report


def render(report: MoveReport) -> str:
    """The human form of a MoveReport."""
    verb = "would move" if report.dry_run else "moved"
    lines = [f"{'dry run: ' if report.dry_run else ''}from {report.source} to {report.target}"]
    if report.recovered:
        lines.append(f"{len(report.recovered)} running task(s) whose worker is gone (their leases ended) "
                     + ("would go back to the queue first, and move too (not counted below)" if report.dry_run
                        else "went back to the queue first"))
    queues = ", ".join(f"{q}={n}" for q, n in report.by_queue.items())
    lines.append(f"{verb} {report.moved} task{'s' if report.moved != 1 else ''}"
                 + (f" ({queues}; {report.scheduled} scheduled for later, {report.retrying} waiting to retry)"
                    if report.moved else ""))
    if report.already_there:
        lines.append(f"  {len(report.already_there)} of them were on the target already (an earlier move "
                     "stopped before removing them from the file): removed from the file now")
    if report.schedules:
        lines.append(f"{'would copy' if report.dry_run else 'copied'} the last tick of schedule(s): "
                     + ", ".join(report.schedules))
    lines.extend(f"left in the file: {task_id}: {why}" for task_id, why in sorted(report.left.items()))
    lines.extend(f"warning: {task_id} changed in the file after a worker on the target had claimed its copy: "
                 "it may run twice" for task_id in report.doubled)
    if report.dry_run:
        lines.append("nothing was written; run again without --dry-run to move")
    return "\n".join(lines)
