"""Hypothesis strategies and helpers shared by the property tests.

What castor's serializers promise (castor/serialization.py, docs/tasks.md):

* json (the default): None, bool, int (any size), float (NaN and ±inf included),
  str, list and str-keyed dict, nested freely. Documented normalisations: a tuple
  comes back as a list. Not documented, but what Python's json does and castor
  passes through: a dict key that is an int, float, bool or None comes back as a
  str ("1", "1.5", "true", "null"), and two keys that become the same string
  collapse into one (the later value wins). `json_normal` spells out exactly this.
* pickle: any picklable object, type-preserving (tuples, sets, bytes, datetimes…).
* Anything else is refused with castor.SerializationError (a TypeError) naming
  the argument, before anything is written.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

# CI runs are reproducible: derandomize=True makes hypothesis pick its examples
# from a fixed seed derived from each test, so every run explores the same cases
# and a failure is the same failure on every machine; database=None keeps it from
# writing a .hypothesis/ directory into the checkout. deadline=None: a test on a
# real SQLite file on a busy 2-core runner has no meaningful per-example deadline.
# To explore new examples locally: CASTOR_PROPERTY_EXPLORE=1 (random seed, 10x
# the examples, failures remembered in .hypothesis/).
settings.register_profile("castor-ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("castor-explore", derandomize=False, deadline=None, print_blob=True)


def property_settings(max_examples: int, **kwargs: Any) -> settings:
    """Settings for one property test: the active castor profile, sized for CI."""
    explore = bool(os.environ.get("CASTOR_PROPERTY_EXPLORE"))
    parent = settings.get_profile("castor-explore" if explore else "castor-ci")
    return settings(parent, max_examples=max_examples * (10 if explore else 1), **kwargs)


# -- values -------------------------------------------------------------------

# Text as SQLite can store it: any code point but lone surrogates (UTF-8 cannot
# encode those; see `surrogate_text` for what castor does with them).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
surrogate_text = st.builds(
    lambda before, s, after: before + s + after,
    text, st.characters(categories=("Cs",)), text,
)

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | text
)
# Keys json accepts: str, and int/float/bool/None (turned into strings).
json_keys = text | st.integers() | st.floats() | st.booleans() | st.none()


def json_values(*, strict_keys: bool = False, tuples: bool = True) -> st.SearchStrategy[Any]:
    """Nested values the json serializer accepts. strict_keys: only str dict keys
    (the values that round-trip exactly, tuples aside)."""
    keys = text if strict_keys else json_keys

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        out = st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        if tuples:
            out = out | st.lists(children, max_size=4).map(tuple)
        return out

    return st.recursive(json_scalars, extend, max_leaves=12)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, float):
        if math.isnan(key):
            return "NaN"
        if math.isinf(key):
            return "Infinity" if key > 0 else "-Infinity"
        return repr(key)
    return str(int(key))


def json_normal(value: Any) -> Any:
    """What the json serializer gives back for `value`: tuples as lists, dict keys
    as strings (a later key that maps to the same string replaces the earlier)."""
    if isinstance(value, (list, tuple)):
        return [json_normal(v) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[_json_key(key)] = json_normal(item)
        return out
    return value


hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=3).map(tuple) | st.frozensets(children, max_size=3),
    max_leaves=6,
)

pickle_scalars = (
    json_scalars | st.binary(max_size=8) | st.complex_numbers(allow_nan=False)
    | st.decimals(allow_nan=False) | st.fractions() | st.dates()
    | st.datetimes() | st.datetimes(timezones=st.just(UTC)) | st.timedeltas()
    | st.builds(bytearray, st.binary(max_size=8)) | surrogate_text
)


def pickle_values() -> st.SearchStrategy[Any]:
    """Nested values of many builtin and stdlib types (pickle keeps every type)."""
    return st.recursive(
        pickle_scalars,
        lambda children: (
            st.lists(children, max_size=3) | st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(hashables, children, max_size=3)
            | st.sets(hashables, max_size=3) | st.frozensets(hashables, max_size=3)
        ),
        max_leaves=10,
    )


class Opaque:
    """A plain object, which json cannot encode."""


# Values json refuses (castor must raise SerializationError, never store a substitute).
json_refused = st.one_of(
    st.sets(st.integers(), max_size=2), st.frozensets(st.integers(), max_size=2), st.binary(max_size=4),
    st.builds(bytearray, st.binary(max_size=4)), st.complex_numbers(allow_nan=False),
    st.decimals(allow_nan=False), st.fractions(), st.dates(), st.datetimes(), st.timedeltas(),
    st.builds(Opaque), st.just(Decimal("1.5")), st.just(Fraction(1, 3)), st.just(date(2020, 1, 1)),
    st.just(datetime(2020, 1, 1, tzinfo=UTC)), st.just(timedelta(seconds=1)), surrogate_text,
)


# -- comparing ------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b and all(same(x, next(y for y in b if y == x)) for x in a)
    return bool(a == b)
