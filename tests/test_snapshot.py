"""The snapshot taken at emit (segmentio_logging._snapshot), as records are captured."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Dict, List

import pytest

from segmentio_logging import InvalidMessage
from segmentio_logging._capture import RecordMapper
from segmentio_logging._json import MAX_DEPTH
from segmentio_logging._message import build_message, encode
from segmentio_logging._snapshot import MUTABLE_FIELDS, snapshot, snapshot_value

from . import helpers
from .helpers import (
    make_record,
    mapped,
    nested_lists,
)

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend


class TestSnapshot:
    def test_mutable_fields(self) -> None:
        """The fields snapshotted at emit are the four that usually hold containers."""
        assert MUTABLE_FIELDS == ("properties", "traits", "context", "integrations")

    def test_containers_are_copied_and_the_rest_kept(self) -> None:
        """Dicts, lists, sets and tuples are copied; scalars and other objects are kept as is."""
        flat = {"a": 1, "b": "x"}
        nested: Dict[str, Any] = {"list": [1], "set": {2}, "pair": ([3], 4)}
        copy = snapshot(nested)
        assert snapshot(flat) == flat and snapshot(flat) is not flat
        assert copy == nested and copy["list"] is not nested["list"]
        assert copy["set"] is not nested["set"] and copy["pair"][0] is not nested["pair"][0]
        thing = object()
        assert snapshot(thing) is thing and snapshot("text") == "text"

    def test_mappings_become_dicts_and_a_bare_dataclass_is_kept(self) -> None:
        """A mapping is copied into a dict; a dataclass on its own is left for validation."""
        import collections

        @dataclasses.dataclass
        class Plan:
            name: str

        plan = Plan("pro")
        copy = snapshot(collections.UserDict({"k": [1]}))
        assert type(copy) is dict and copy == {"k": [1]}
        assert snapshot(plan) is plan
        assert snapshot({"plan": plan}) == {"plan": {"name": "pro"}}

    def test_shared_and_cyclic_containers_stay_so(self) -> None:
        """A container met twice is copied once; a cycle in the original is a cycle in the copy."""
        shared = [1]
        loop: Dict[str, Any] = {"shared": shared, "again": shared}
        loop["self"] = loop
        copy = snapshot(loop)
        assert copy["shared"] is copy["again"] and copy["shared"] is not shared
        assert copy["self"] is copy

    def test_nesting_is_cut_at_max_depth(self) -> None:
        """Nesting deeper than MAX_DEPTH becomes "<too deep>", as the JSON conversion cuts it."""
        copy = snapshot(nested_lists(MAX_DEPTH + 10))
        depth = 0
        while isinstance(copy, list):
            copy = copy[0]
            depth += 1
        assert (depth, copy) == (MAX_DEPTH, "<too deep>")


class _NoItems(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


class _NoIter(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")

    def __repr__(self) -> str:
        return "<no iteration>"


class _NoIterMapping(Mapping):  # type: ignore[type-arg]
    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return "unreadable mapping"


class TestUnreadable:
    def test_a_field_that_cannot_be_read_raises(self) -> None:
        """A field whose items() or iteration raises: snapshot raises what it raised."""
        for field in (_NoItems(a=1), _NoIter([1]), _NoIterMapping()):
            with pytest.raises(RuntimeError, match=r"^no (items|iteration)$"):
                snapshot(field)

    def test_a_value_inside_that_cannot_be_read_becomes_its_str(self) -> None:
        """Inside a field, what cannot be read becomes its str(), as the encoder writes it;
        the same object met twice becomes the same text."""
        unreadable = _NoIter([1])
        copy = snapshot(
            {"d": _NoItems(a=1), "l": [unreadable, unreadable], "m": (_NoIterMapping(),)}
        )
        assert copy == {"d": "{'a': 1}", "l": ["<no iteration>"] * 2, "m": ("unreadable mapping",)}
        assert encode(build_message("track", user_id="u", event="E", properties=copy))

    def test_a_key_whose_hash_raises_inside_a_field(self) -> None:
        """A key that raises when hashed again makes its own dict unreadable, not the field."""

        class Flaky:
            hashed = 0

            def __hash__(self) -> int:
                Flaky.hashed += 1
                if Flaky.hashed > 1:
                    raise RuntimeError("no hash")
                return 1

            def __repr__(self) -> str:
                return "Flaky()"

        inner = {Flaky(): 1}
        assert snapshot({"inner": inner, "ok": [2]}) == {"inner": "{Flaky(): 1}", "ok": [2]}

    def test_snapshot_value_never_raises(self) -> None:
        """snapshot_value, for a value that goes inside a field, gives its str() instead."""
        assert snapshot_value(_NoIter([1])) == "<no iteration>"
        assert snapshot_value({"a": [1]}) == {"a": [1]}


class TestSnapshotAtCapture:
    """What a caller changes after logging is not what is sent."""

    def test_snapshot_copies_mappings_and_dataclasses(self) -> None:
        """A UserDict or a mutable dataclass changed after logging does not change what is sent."""
        import collections

        @dataclasses.dataclass
        class Cart:
            items: List[str]

        cart = Cart(items=["a"])
        plan = collections.UserDict({"plan": "free"})
        mapper = RecordMapper()
        captured = mapper.capture(
            make_record(user_id="u", event="E", properties={"cart": cart, "plan": plan})
        )
        cart.items.append("changed")
        plan["plan"] = "changed"
        message = json.loads(encode(mapper.build(captured)))
        assert message["properties"] == {"cart": {"items": ["a"]}, "plan": {"plan": "free"}}

    def test_snapshot_keeps_side_by_side_objects_apart(self) -> None:
        """Several mappings and dataclasses in one record are each copied as themselves."""
        import collections

        @dataclasses.dataclass
        class Item:
            sku: str

        properties = {
            "a": collections.UserDict({"x": 1}),
            "b": collections.UserDict({"y": 2}),
            "items": [Item("A"), Item("B"), Item("C")],
        }
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u", event="E", properties=properties))
        message = json.loads(encode(mapper.build(captured)))
        assert message["properties"] == {
            "a": {"x": 1},
            "b": {"y": 2},
            "items": [{"sku": "A"}, {"sku": "B"}, {"sku": "C"}],
        }

    def test_a_dataclass_as_properties_is_refused(self) -> None:
        """properties must be a dict (or a mapping): a dataclass there is refused, not converted."""

        @dataclasses.dataclass
        class Plan:
            name: str

        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u", event="E", properties=Plan("pro")))
        with pytest.raises(InvalidMessage, match="properties must be a dict"):
            mapper.build(captured)

    def test_snapshot_at_capture(self) -> None:
        """Mutating properties, a nested dict or list, or context after capture changes nothing."""
        nested = {"tags": ["a"], "inner": {"k": 1}}
        properties: Dict[str, Any] = {"plan": "pro", "nested": nested, "items": [{"sku": 1}]}
        context = {"page": {"path": "/"}}
        mapper = RecordMapper()
        captured = mapper.capture(
            make_record(user_id="u", event="E", properties=properties, context=context)
        )
        assert captured is not None
        properties["plan"] = "free"
        properties["new"] = True
        nested["tags"].append("b")
        nested["inner"]["k"] = 2
        properties["items"][0]["sku"] = 2
        context["page"]["path"] = "/changed"
        message = mapper.build(captured)
        assert message["properties"] == {
            "plan": "pro",
            "nested": {"tags": ["a"], "inner": {"k": 1}},
            "items": [{"sku": 1}],
        }
        assert message["context"]["page"] == {"path": "/"}

    def test_snapshot_of_captured_extra(self) -> None:
        """With capture_extra, mutating an extra list after capture changes nothing."""
        tags = ["a"]
        mapper = RecordMapper(capture_extra=True)
        captured = mapper.capture(make_record(user_id="u", event="E", tags=tags))
        assert captured is not None
        tags.append("b")
        assert mapper.build(captured)["properties"] == {"tags": ["a"]}

    def test_snapshot_of_containers_in_tuples_and_subclasses(self) -> None:
        """Dicts inside tuples, dict subclasses and sets are copied too."""
        from collections import OrderedDict, defaultdict

        inner = {"k": 1}
        counts: defaultdict[str, int] = defaultdict(int, {"a": 1})
        ordered = OrderedDict(x=1)
        labels = {"a"}
        properties = {"pair": (inner, 2), "counts": counts, "ordered": ordered, "labels": labels}
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u", event="E", properties=properties))
        assert captured is not None
        inner["k"] = 2
        counts["b"] += 1
        ordered["y"] = 2
        labels.add("b")
        message = json.loads(encode(mapper.build(captured)))
        assert message["properties"] == {
            "pair": [{"k": 1}, 2],
            "counts": {"a": 1},
            "ordered": {"x": 1},
            "labels": ["a"],
        }

    def test_snapshot_keeps_cycles_as_cycles(self) -> None:
        """A self-referential properties dict is captured without error and sent as '<cycle>'."""
        properties: Dict[str, Any] = {"a": 1}
        properties["self"] = properties
        loop: List[Any] = [1]
        loop.append(loop)
        properties["loop"] = loop
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u", event="E", properties=properties))
        assert captured is not None
        properties["a"] = 2
        message = json.loads(encode(mapper.build(captured)))
        assert message["properties"] == {"a": 1, "self": "<cycle>", "loop": [1, "<cycle>"]}

    def test_snapshot_keeps_shared_values(self) -> None:
        """A value referenced twice (not a cycle) is sent twice in full."""
        shared = {"k": [1, 2]}
        message = mapped(make_record(user_id="u", event="E", properties={"a": shared, "b": shared}))
        assert json.loads(encode(message))["properties"] == {"a": shared, "b": shared}

    def test_snapshot_of_deep_nesting(self) -> None:
        """Properties nested 10,000 deep are captured and encoded, cut at a '<too deep>' marker."""
        mapper = RecordMapper()
        captured = mapper.capture(
            make_record(user_id="u", event="E", properties={"deep": nested_lists(10_000)})
        )
        assert captured is not None
        data = encode(mapper.build(captured))
        assert b'"<too deep>"' in data
        json.loads(data)
