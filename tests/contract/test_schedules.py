"""Periodic tasks: each tick of a schedule fires once, however many callers try."""

from __future__ import annotations

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim, new


def test_a_tick_fires_once(store, clocks):
    tick = clocks.wall
    assert store.fire_schedule("nightly", tick, new("t1"), now=clocks.wall)
    assert not store.fire_schedule("nightly", tick, new("t2"), now=clocks.wall)
    assert [r.id for r in store.list(Query())] == ["t1"]
    assert store.status("t1") == TaskStatus.PENDING


def test_a_later_tick_fires_an_earlier_one_does_not(store, clocks):
    t = clocks.wall
    assert store.fire_schedule("s", t, new("first"), now=t)
    assert store.fire_schedule("s", t + 60, new("second"), now=t + 60)
    assert not store.fire_schedule("s", t + 30, new("late"), now=t + 61)  # a missed tick is skipped
    assert not store.fire_schedule("s", t, new("again"), now=t + 61)
    assert sorted(r.id for r in store.list(Query())) == ["first", "second"]


def test_schedules_are_independent(store, clocks):
    t = clocks.wall
    assert store.fire_schedule("a", t, new("a1"), now=t)
    assert store.fire_schedule("b", t, new("b1"), now=t)


def test_schedules_report_their_last_tick(store, clocks):
    t = clocks.wall
    assert store.schedules() == {}
    store.fire_schedule("s", t, new("first"), now=t + 1)
    store.fire_schedule("s", t + 60, new("second"), now=t + 61)
    store.fire_schedule("s", t + 30, new("refused"), now=t + 62)
    assert store.schedules() == {"s": {"last_tick": t + 60, "fired_at": t + 61, "task_id": "second"}}


def test_the_fired_task_is_stored_as_given(store, clocks):
    store.fire_schedule("s", clocks.wall, new("t", name="report", queue="q", priority=2), now=clocks.wall)
    rec = store.get("t")
    assert (rec.name, rec.queue, rec.priority, rec.status) == ("report", "q", 2, TaskStatus.PENDING)


def test_two_instances_fire_each_tick_once(backend, store, clocks):
    other = backend.open()
    fired = [s.fire_schedule("s", clocks.wall + tick, new(f"{n}-{tick}"), now=clocks.wall)
             for tick in range(20) for n, s in (("x", store), ("y", other))]
    assert sum(fired) == 20
    assert store.count(Query()) == 20


# -- disabling -------------------------------------------------------------------


def test_a_disabled_schedule_does_not_fire(store, clocks):
    t = clocks.wall
    assert store.fire_schedule("s", t, new("before"), now=t)
    assert store.disable_schedule("s") is True
    assert not store.fire_schedule("s", t + 60, new("while-disabled"), now=t + 60)
    assert [r.id for r in store.list(Query())] == ["before"]
    assert store.schedules()["s"]["last_tick"] == t  # the refused tick is not recorded


def test_a_schedule_that_never_fired_can_be_disabled(store, clocks):
    assert store.disable_schedule("new") is True
    assert not store.fire_schedule("new", clocks.wall, new("t"), now=clocks.wall)
    assert store.count(Query()) == 0
    assert store.schedules() == {}


def test_enable_lets_the_next_tick_fire(store, clocks):
    t = clocks.wall
    store.disable_schedule("s")
    assert store.enable_schedule("s") is True
    assert store.fire_schedule("s", t, new("after"), now=t)
    assert [r.id for r in store.list(Query())] == ["after"]


def test_disable_and_enable_say_whether_they_changed_anything(store):
    assert store.enable_schedule("s") is False
    assert store.disable_schedule("s") is True
    assert store.disable_schedule("s") is False
    assert store.disabled_schedules() == {"s"}
    assert store.enable_schedule("s") is True
    assert store.disabled_schedules() == set()


def test_disabling_is_seen_by_another_instance(backend, store, clocks):
    other = backend.open()
    store.disable_schedule("s")
    assert other.disabled_schedules() == {"s"}
    assert not other.fire_schedule("s", clocks.wall, new("t"), now=clocks.wall)


def test_a_disabled_schedule_pauses_no_queue_of_its_name(store, clocks):
    store.enqueue([new("q-task", queue="s")])
    store.disable_schedule("s")
    assert store.paused_queues() == set()
    assert [r.id for r in claim(store, clocks)] == ["q-task"]
    store.pause_queue("s")
    assert store.disabled_schedules() == {"s"}
    store.resume_queue("s")
    assert store.disabled_schedules() == {"s"}
