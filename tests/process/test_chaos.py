"""The short chaos run (the full one is scripts/chaos): load, random kills and
signals, then nothing lost and every duplicate explained by a kill."""

from __future__ import annotations

import pytest

from tests import chaos


@pytest.mark.timeout(150)
def test_short_chaos_run_loses_nothing(tmp_path):
    lines: list[str] = []
    report = chaos.run(duration=15, rate=30, interval=(0.4, 1.2), workdir=tmp_path, log=lines.append)
    print("\n".join(lines))  # the seed and the summary, shown if the test fails
    assert report.tasks > 300
    assert report.kills > 0 and sum(report.actions.values()) >= 8
    assert report.lost == []
    assert report.unexplained == []
