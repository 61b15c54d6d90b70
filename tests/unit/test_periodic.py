"""Periodic tasks: schedules (pure), validation, and the Scheduler with a fake clock on a real file."""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import castor
from castor.errors import ConfigurationError, DatabaseLockedError
from castor.periodic import Schedule, Scheduler, build_schedule
from castord.control import _schedules, render
from tests.conftest import REPO

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, a multiple of 10 and of 100


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


def ping() -> str:
    return "pong"


def periodic_manager(path: str, **schedule: object) -> castor.Manager:
    """A Manager on `path` with one schedule named "ping" (defaults: every 10 s)."""
    manager = castor.Manager(path)
    manager.periodic(**(schedule or {"every": 10}), mode="thread", name="ping")(ping)  # type: ignore[arg-type]
    return manager


class TestSchedule:
    def test_every_ticks_are_multiples_of_the_interval(self):
        s = Schedule("s", every=300)
        assert s.next_tick(T0 + 1) == T0 + 100  # T0 is 200 s past a multiple of 300
        assert s.next_tick(T0 + 100) == T0 + 400  # strictly after
        assert s.next_tick(T0 + 99.999) == T0 + 100

    def test_every_with_fractional_seconds_is_strictly_after(self):
        s = Schedule("s", every=0.1)
        for after in (0.3, 0.7, 1.0, T0 + 0.3):
            tick = s.next_tick(after)
            assert after < tick <= after + 0.1 + 1e-6

    def test_cron_in_utc(self):
        s = Schedule("s", cron="*/5 * * * *")
        assert s.next_tick(utc(2024, 1, 1, 0, 2, 30)) == utc(2024, 1, 1, 0, 5)
        assert s.next_tick(utc(2024, 1, 1, 0, 5)) == utc(2024, 1, 1, 0, 10)  # strictly after
        assert s.next_tick(utc(2024, 1, 1, 23, 59, 59)) == utc(2024, 1, 2, 0, 0)

    def test_cron_with_seconds_field(self):
        s = Schedule("s", cron="*/15 * * * * *")
        assert s.next_tick(utc(2024, 1, 1) + 0.5) == utc(2024, 1, 1, 0, 0, 15)

    def test_cron_in_a_time_zone(self):
        s = Schedule("s", cron="0 9 * * *", tz="Europe/Paris")
        assert s.next_tick(utc(2024, 1, 10)) == utc(2024, 1, 10, 8, 0)  # CET = UTC+1
        assert s.next_tick(utc(2024, 7, 10)) == utc(2024, 7, 10, 7, 0)  # CEST = UTC+2

    def test_build_normalises_every(self):
        assert build_schedule("s", cron=None, every=timedelta(minutes=5)).every == 300.0
        assert build_schedule("s", cron=None, every=2).every == 2.0
        assert build_schedule("s", cron=None, every=0.5).every == 0.5


class TestValidation:
    @pytest.mark.parametrize(
        "kwargs,message",
        [
            ({}, "exactly one of cron= .* or every="),
            ({"cron": "* * * * *", "every": 5}, "exactly one of cron="),
            ({"every": 0}, "every must be more than 0 seconds"),
            ({"every": -5}, "zero or more seconds"),
            ({"every": "5m"}, "every must be a number of seconds or a timedelta"),
            ({"every": float("inf")}, "every must be a finite number of seconds, not inf"),
            ({"cron": "*/5 * * *"}, r"bad cron expression '\*/5 \* \* \*': Wrong number of fields .*five fields"),
            ({"cron": "61 * * * *"}, "bad cron expression .* Bad minute"),
            ({"cron": "0 0 31 2 *"}, "bad cron expression"),
            ({"cron": 5}, "cron must be a string such as"),
            ({"every": 5, "tz": "Europe/Paris"}, "tz= applies to cron= schedules only"),
            ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ],
    )
    def test_bad_schedules_say_how_to_fix_them(self, manager, kwargs, message):
        with pytest.raises(ConfigurationError, match=message):
            manager.periodic(**kwargs, mode="thread")(ping)
        assert manager.registry == {} and manager.schedules == {}  # nothing half-registered

    def test_task_options_are_checked_too(self, manager):
        with pytest.raises(ConfigurationError, match="mode is mandatory"):
            manager.periodic(every=5)(ping)
        with pytest.raises(ConfigurationError, match="unknown option 'queu'"):
            manager.periodic(every=5, mode="thread", queu="x")(ping)
        assert manager.schedules == {}

    def test_periodic_functions_take_no_arguments(self, manager):
        def needs(a, b=1):
            return a

        def defaults(a=1):
            return a

        with pytest.raises(ConfigurationError, match="called with no arguments; remove its parameters"):
            manager.periodic(every=5, mode="thread")(needs)
        manager.periodic(every=5, mode="thread", name="d")(defaults)
        assert "d" in manager.schedules


class TestRegistration:
    def test_a_periodic_task_is_a_normal_task(self, manager):
        fn = manager.periodic(cron="*/5 * * * *", mode="thread", queue="cron", name="ping")(ping)
        assert manager.registry["ping"] is fn
        assert manager.schedules["ping"] == Schedule("ping", cron="*/5 * * * *")
        assert fn() == "pong"
        assert fn.delay().id in {t.id for t in manager.tasks(name="ping", queue="cron")}

    def test_default_name_is_the_qualified_name(self, manager):
        manager.periodic(every=timedelta(hours=1), mode="process")(ping)
        assert list(manager.schedules) == [f"{__name__}.ping"]


class TestScheduler:
    def test_fires_each_tick_once(self, db_path):
        m = periodic_manager(db_path)
        try:
            s = Scheduler(m, now=T0 + 5)
            assert s.next_deadline() == T0 + 10
            assert s.due(T0 + 9.99) == [] and s.fire_due(T0 + 9.99) == []
            assert s.due(T0 + 10) == ["ping"]
            [task_id] = s.fire_due(T0 + 10)
            assert s.fire_due(T0 + 10.5) == []
            assert s.next_deadline() == T0 + 20
            assert m.count(name="ping") == 1 and m.get(task_id) is not None
            assert m.store.schedules()["ping"] == {"last_tick": T0 + 10, "fired_at": T0 + 10, "task_id": task_id}
        finally:
            m.close()

    def test_a_late_tick_fires_once_and_the_passed_ones_are_skipped(self, db_path):
        m = periodic_manager(db_path)
        try:
            s = Scheduler(m, now=T0)
            assert len(s.fire_due(T0 + 95)) == 1  # the loop was away for 9 ticks
            assert s.next_deadline() == T0 + 100
            assert s.fire_due(T0 + 99) == []
            assert m.count(name="ping") == 1
        finally:
            m.close()

    def test_no_storm_after_downtime(self, db_path):
        m = periodic_manager(db_path)
        try:
            assert len(Scheduler(m, now=T0).fire_due(T0 + 10)) == 1
            # Down for a day: the first tick fired on start is the next one in the future.
            s = Scheduler(m, now=T0 + 86_400 + 3)
            assert s.due(T0 + 86_400 + 3) == []
            assert s.next_deadline() == T0 + 86_410
            assert len(s.fire_due(T0 + 86_410)) == 1
            assert m.count(name="ping") == 2
        finally:
            m.close()

    def test_restart_within_a_tick_does_not_fire_it_again(self, db_path):
        m = periodic_manager(db_path)
        try:
            assert len(Scheduler(m, now=T0).fire_due(T0 + 10.2)) == 1
            # Restarted half a tick later, or with a clock that went back: starts after the fired tick.
            for now in (T0 + 10.5, T0 + 3):
                s = Scheduler(m, now=now)
                assert s.next_deadline() == T0 + 20
                assert s.fire_due(T0 + 10.9) == []
            assert m.count(name="ping") == 1
        finally:
            m.close()

    def test_two_schedulers_on_one_file_fire_each_tick_once(self, db_path):
        a, b = periodic_manager(db_path), periodic_manager(db_path)
        try:
            sa, sb = Scheduler(a, now=T0), Scheduler(b, now=T0)
            won = []
            for i in range(1, 6):
                first, second = (sa, sb) if i % 2 else (sb, sa)
                won += first.fire_due(T0 + 10 * i) + second.fire_due(T0 + 10 * i + 0.1)
            assert len(won) == 5 and a.count(name="ping") == 5
        finally:
            a.close()
            b.close()

    def test_racing_schedulers_in_threads_fire_each_tick_once(self, db_path):
        managers = [periodic_manager(db_path) for _ in range(3)]
        schedulers = [Scheduler(m, now=T0) for m in managers]
        barrier = threading.Barrier(len(schedulers))
        won: list[list[str]] = [[] for _ in schedulers]

        def run(i: int) -> None:
            for tick in range(1, 21):
                barrier.wait(timeout=10)
                won[i] += schedulers[i].fire_due(T0 + 10 * tick)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(schedulers))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert sum(len(w) for w in won) == 20
            assert managers[0].count(name="ping") == 20
            assert managers[0].store.schedules()["ping"]["last_tick"] == T0 + 200
        finally:
            for m in managers:
                m.close()

    def test_logs_the_tick_it_fired(self, db_path, caplog):
        caplog.set_level(logging.INFO, logger="castor.periodic")
        m = periodic_manager(db_path)
        try:
            [task_id] = Scheduler(m, now=T0).fire_due(T0 + 10)
            fired = [r.msg for r in caplog.records
                     if isinstance(r.msg, dict) and r.msg.get("event") == "periodic.fired"]
            assert len(fired) == 1
            assert fired[0]["schedule"] == "ping" and fired[0]["tick"] == T0 + 10
            assert fired[0]["task_id"] == task_id
        finally:
            m.close()

    def test_a_store_error_skips_the_tick_and_keeps_going(self, db_path, monkeypatch):
        m = periodic_manager(db_path)
        try:
            s = Scheduler(m, now=T0)
            real = m.store.fire_schedule

            def locked(*args, **kwargs):
                raise DatabaseLockedError("locked for 30 s")

            monkeypatch.setattr(m.store, "fire_schedule", locked)
            assert s.fire_due(T0 + 10) == []
            assert s.next_deadline() == T0 + 20  # no busy retry of a failing tick
            monkeypatch.setattr(m.store, "fire_schedule", real)
            assert len(s.fire_due(T0 + 20)) == 1
        finally:
            m.close()

    def test_cron_schedule_fires_on_its_ticks(self, db_path):
        m = periodic_manager(db_path, cron="*/5 * * * *")
        try:
            start = utc(2024, 1, 1, 0, 2)
            s = Scheduler(m, now=start)
            assert s.next_deadline() == utc(2024, 1, 1, 0, 5)
            assert len(s.fire_due(utc(2024, 1, 1, 0, 5, 1))) == 1
            assert s.next_deadline() == utc(2024, 1, 1, 0, 10)
        finally:
            m.close()

    def test_a_disabled_schedule_fires_nothing_and_enabling_fires_no_burst(self, db_path):
        m = periodic_manager(db_path)
        try:
            s = Scheduler(m, now=T0)
            assert len(s.fire_due(T0 + 10)) == 1
            assert m.disable_schedule("ping") is True
            for tick in range(2, 11):
                assert s.fire_due(T0 + 10 * tick) == []
            assert m.store.schedules()["ping"]["last_tick"] == T0 + 10
            assert m.enable_schedule("ping") is True
            assert s.fire_due(T0 + 105) == []  # nine ticks were missed: none fires now
            assert s.next_deadline() == T0 + 110
            assert len(s.fire_due(T0 + 110)) == 1
            assert m.count(name="ping") == 2
        finally:
            m.close()

    def test_a_scheduler_started_while_disabled_fires_once_enabled(self, db_path):
        m = periodic_manager(db_path)
        try:
            m.disable_schedule("ping")
            s = Scheduler(m, now=T0)
            assert s.fire_due(T0 + 10) == []
            m.enable_schedule("ping")
            assert len(s.fire_due(T0 + 20)) == 1
        finally:
            m.close()

    def test_run_now_enqueues_once_and_leaves_the_ticks_alone(self, db_path):
        m = periodic_manager(db_path)
        try:
            s = Scheduler(m, now=T0)
            assert len(s.fire_due(T0 + 10)) == 1
            m.disable_schedule("ping")  # by hand it runs even while disabled
            task = m.run_schedule_now("ping")
            assert task.status() == "pending" and m.count(name="ping") == 2
            assert m.store.schedules()["ping"]["last_tick"] == T0 + 10
            m.enable_schedule("ping")
            assert s.next_deadline() == T0 + 20
            assert len(s.fire_due(T0 + 20)) == 1
        finally:
            m.close()

    def test_an_unknown_schedule_name_is_refused(self, db_path):
        m = periodic_manager(db_path)
        try:
            for call in (m.disable_schedule, m.enable_schedule, m.run_schedule_now):
                with pytest.raises(castor.UnknownTaskError, match=r"no periodic task named 'nope'.*ping"):
                    call("nope")
            assert m.disabled_schedules() == set() and m.count() == 0
        finally:
            m.close()

    def test_without_schedules_there_is_no_deadline(self, manager):
        assert Scheduler(manager, now=T0).next_deadline() is None


def test_status_shows_schedules():
    fired = {"ping": {"last_tick": T0, "fired_at": T0 + 0.2, "task_id": "t1"}}
    merged = _schedules(fired, {"ping": T0 + 10, "new": T0 + 60})
    assert merged["ping"]["next_tick"] == T0 + 10 and merged["new"]["fired_at"] is None
    text = render({"running": False, "schedules": merged})
    assert "schedule ping: last fired 2023-11-14 22:13:20 UTC, next 2023-11-14 22:13:30 UTC" in text
    assert "schedule new: last fired never" in text
    stale = _schedules(fired, {"ping": T0})  # the daemon's report predates the last firing
    assert stale["ping"]["next_tick"] is None
    assert render({"running": False, "schedules": stale}).endswith("schedule ping: last fired 2023-11-14 22:13:20 UTC")


def test_docs_example_declares_its_schedules(tmp_path: Path):
    """docs/periodic.md's main.py runs, and declares what the doc says."""
    blocks = re.findall(r"```python\n(# main\.py\n.*?)```", (REPO / "docs" / "periodic.md").read_text(), re.S)
    assert len(blocks) == 1
    source = blocks[0].replace("/var/data/my_app.db", str(tmp_path / "app.db"))
    namespace: dict[str, object] = {"__name__": "main"}
    exec(compile(source, "main.py", "exec"), namespace)
    manager = namespace["manager"]
    assert isinstance(manager, castor.Manager)
    try:
        assert set(manager.schedules) == {"cleanup", "report", "heartbeat"}
        assert manager.schedules["cleanup"].every == 300.0
        assert manager.schedules["report"].tz == "Europe/Paris"
        assert manager.registry["heartbeat"]() is None
    finally:
        manager.close()
