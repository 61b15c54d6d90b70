"""castor's own options in a postgresql:// URL (castor/store/pg_url.py): taken out
before libpq reads the URL, the rest left exactly as written."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from castor.errors import ConfigurationError
from castor.store.pg_url import parse_store_url

BASE = "postgresql://app@/tasks?host=/run/postgresql&port=5432"
DIRECT = "postgresql://app@db.internal:5432/tasks?sslmode=require&connect_timeout=5"


def test_a_url_without_castor_options_is_handed_to_libpq_as_it_is():
    target = parse_store_url(BASE)
    assert (target.conninfo, target.listen, target.prepare) == (BASE, BASE, True)


def test_castor_listen_names_where_listen_goes_and_leaves_the_url():
    target = parse_store_url(f"{BASE}&castor_listen={quote(DIRECT, safe='')}&application_name=web")
    assert target.conninfo == f"{BASE}&application_name=web"
    assert target.listen == DIRECT


def test_castor_listen_off_means_no_listen_and_castor_prepare_off_no_prepared_statements():
    target = parse_store_url("postgresql://app@pgbouncer:6432/tasks?castor_listen=OFF&castor_prepare=off")
    assert (target.conninfo, target.listen, target.prepare) == ("postgresql://app@pgbouncer:6432/tasks", None, False)


@pytest.mark.parametrize("url, message", [
    (f"{BASE}&castor_pool=transaction", "an option castor does not know: castor_pool; castor's URL options are "
                                        "castor_listen and castor_prepare"),
    (f"{BASE}&castor_prepare=off&castor_prepare=on", "gives castor_prepare twice"),
    (f"{BASE}&castor_prepare=sometimes", "castor_prepare must be on or off, not 'sometimes'"),
    (f"{BASE}&castor_listen=db.internal", "castor_listen must be a postgresql:// URL (percent-encoded inside the "
                                          "store URL) or 'off', not 'db.internal'"),
    (f"{BASE}&castor_listen={quote(BASE + '&castor_prepare=off', safe='')}",
     "the castor_listen URL cannot carry castor_ options of its own"),
])
def test_a_bad_castor_option_is_refused_with_the_fix(url, message):
    with pytest.raises(ConfigurationError) as err:
        parse_store_url(url)
    assert message in str(err.value)
