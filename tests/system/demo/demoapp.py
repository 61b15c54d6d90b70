"""The app tests/system/test_systemd.py runs as castord@demo (it is /srv/demo/demoapp.py
in the container): a BeaverDB in the unit's state directory, as the README's app."""

import os
import time

from beaver import BeaverDB

import castor

STATE = "/var/lib/demo"  # StateDirectory=%i: the one place the unit may write
db = BeaverDB(f"{STATE}/app.db")
manager = castor.Manager(db)

# While this file exists, castord's children wait here, in the import of APP, so the
# master is up but cannot say READY. The master (its parent is systemd, PID 1) goes on.
HOLD = f"{STATE}/hold-children"
if os.getppid() != 1:
    _deadline = time.monotonic() + 60
    while os.path.exists(HOLD) and time.monotonic() < _deadline:
        time.sleep(0.02)


@manager.task(mode="process", name="quick")
def quick(n):
    return n


@manager.task(mode="process", name="held")
def held(release):
    """Runs until the file `release` exists (the test says when), 120 s at most."""
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@manager.task(mode="process", name="boom")
def boom(message):
    raise ValueError(message)
