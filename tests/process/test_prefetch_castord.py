"""castord's --prefetch reaches its children: no claim takes more tasks than it says."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.process.test_castord import daemons  # noqa: F401 - fixture


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [1, 4])
def test_castord_prefetch_caps_how_many_tasks_a_child_claims_at_once(daemons, app_dir, prefetch):  # noqa: F811
    import testapp

    tasks = testapp.add.map([(i, 1) for i in range(200)])
    daemons().start("--workers", "1", "--threads", "0", "--prefetch", str(prefetch))
    assert [t.join(timeout=30) for t in tasks] == [i + 1 for i in range(200)]
    # Tasks claimed in one transaction share their claim time (started_at).
    per_claim = Counter(t.info().started_at for t in tasks)
    assert max(per_claim.values()) <= prefetch, per_claim.most_common(3)
