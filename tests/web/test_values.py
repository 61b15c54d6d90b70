"""Stored values as the dashboard shows them: JSON pretty-printed, pickles read without
running them (castor/webui/values.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

from castor.webui.values import TEXT_LIMIT, show


class Order:
    def __init__(self, number: int):
        self.number = number


class Exploit:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - what an attacker's pickle does: call something on load
        return (Path.touch, (Path(self.path),))


class Items(list):
    pass


class Registry(dict):
    pass


def test_json_is_pretty_printed_with_its_size():
    shown = show("json", '[1,{"a":"é"}]')
    assert shown is not None and shown.readable
    assert shown.text == '[\n  1,\n  {\n    "a": "é"\n  }\n]'
    assert shown.size == len('[1,{"a":"é"}]'.encode()) and shown.types is None


def test_no_value_and_unreadable_values():
    assert show("json", None) is None
    broken = show("json", "{not json")
    assert broken is not None and not broken.readable and broken.text.startswith("cannot read this JSON")
    damaged = show("pickle", b"\x80\x05not a pickle")
    assert damaged is not None and not damaged.readable and damaged.text.startswith("cannot read this pickle")


def test_a_pickle_is_described_without_running_any_of_its_code(tmp_path):
    proof = tmp_path / "ran"
    touch = f"{Path.touch.__module__}.{Path.touch.__qualname__}"  # what the Exploit would call
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps([Order(7), Exploit(str(proof)), {1, 2}, b"raw"], protocol=protocol)
        shown = show("pickle", data)
        assert shown is not None and shown.readable, protocol
        assert shown.types == f"list of 4: tests.web.test_values.Order, {touch}, set, bytes", protocol
        assert shown.size == len(data)
        assert "<tests.web.test_values.Order>" in shown.text and "{1, 2}" in shown.text
    assert not proof.exists()


def test_pickled_containers_of_unknown_classes_are_read_too():
    shown = show("pickle", pickle.dumps({"items": Items([1, 2]), "registry": Registry(a=1)}))
    assert shown is not None
    assert shown.types == "dict of 2: items: tests.web.test_values.Items, registry: tests.web.test_values.Registry"


def test_long_text_is_cut_and_says_how_long_it_was():
    shown = show("json", '"' + "x" * (TEXT_LIMIT * 2) + '"')
    assert shown is not None and len(shown.text) < TEXT_LIMIT + 100
    assert shown.text.endswith(f"({TEXT_LIMIT * 2 + 2:,} characters in all)")
