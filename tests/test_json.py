"""JSON conversion and encoding (segmentio_logging._json), through encode() as messages are sent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentio_logging import _json
from segmentio_logging._json import FAST_JSON, dumps, to_json_safe
from segmentio_logging._message import build_message, encode

from . import helpers
from .helpers import (
    CREATED,
    BadStr,
    Color,
    Hostile,
    Level,
    Point,
    any_values,
    nested_lists,
    property_settings,
)

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend

ORJSON = FAST_JSON  # the orjson encoder, or None without the ``fast`` extra
_AWARE = dt.datetime(2026, 1, 2, 3, 4, 5, 123_456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def roundtrip(value: Any) -> Any:
    """``value`` as a track property, through encode and back."""
    message = build_message("track", user_id="u1", event="E", properties={"v": value})
    return json.loads(encode(message))["properties"]["v"]


class Plain:
    def __str__(self) -> str:
        return "a plain object"


class Unorderable:
    """Hashable, but comparing two of them raises."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __hash__(self) -> int:
        return hash(self.label)

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")

    def __str__(self) -> str:
        return self.label


class TestJsonBackends:
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**63 - 1)
            | st.floats()
            | st.text(max_size=20)
            | st.datetimes()
            | st.decimals()
            | st.uuids()
            | st.binary(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        )
    )
    @settings(max_examples=200, deadline=None)
    def test_orjson_and_stdlib_give_the_same_json(self, value: Any) -> None:
        """Both encoders turn any message into the same JSON value."""
        if ORJSON is None:
            pytest.skip("orjson is not installed")
        message = {"type": "track", "properties": {"value": value}}
        fast = ORJSON(message)
        assert fast is not None
        assert json.loads(fast) == json.loads(dumps(message))


class TestToJsonSafe:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (_AWARE, "2026-01-02T01:04:05.123456+00:00"),
            (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
            (dt.date(2026, 1, 2), "2026-01-02"),
            (dt.time(3, 4, 5), "03:04:05"),
            (dt.timedelta(minutes=1, milliseconds=500), 60.5),
            (Decimal("12.50"), 12.5),
            (Decimal("NaN"), None),
            (Decimal("-Infinity"), None),
            (Decimal("1e400"), None),
            (_UUID, "12345678-1234-5678-1234-567812345678"),
            ({3, 1, 2}, [1, 2, 3]),
            (frozenset({"b", "a"}), ["a", "b"]),
            ({1, "a", 2.5}, [2.5, 1, "a"]),
            (frozenset({Unorderable("y"), Unorderable("x")}), ["x", "y"]),
            ((1, (2, "3")), [1, [2, "3"]]),
            (b"caf\xc3\xa9", "café"),
            (b"\xff\xfe\x00", "//4A"),
            (bytearray(b"abc"), "abc"),
            (memoryview(b"mv"), "mv"),
            (Color.RED, "red"),
            (Level.HIGH, 3),
            (Point(1, Point(2, {3})), {"x": 1, "y": {"x": 2, "y": [3]}}),
            (Plain(), "a plain object"),
            (BadStr(), "BadStr()"),
            (Hostile(), "<unprintable Hostile object>"),
            (math.nan, None),
            (math.inf, None),
            (-math.inf, None),
            (True, True),
            (None, None),
            (-0.0, -0.0),
            (2**70, 2**70),
            pytest.param(10**5000, None, id="huge-int"),
            ("\ud800", "\ud800"),
            ({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}),
        ],
    )
    def test_conversions(self, value: Any, expected: Any) -> None:
        """Each kind of value converts to its documented JSON form, the same through encode()."""
        converted = to_json_safe(value)
        assert converted == expected
        json.dumps(converted, allow_nan=False)
        assert roundtrip(value) == expected

    def test_non_string_keys(self) -> None:
        """Keys become strings the way json writes them; other keys by their converted form."""
        value = {
            1: "int",
            1.5: "float",
            None: "none",
            False: "bool",
            Level.HIGH: "intenum",
            (1, 2): "tuple",
            _UUID: "uuid",
            dt.date(2026, 1, 2): "date",
            b"k": "bytes",
            frozenset({2, 1}): "frozenset",
            math.nan: "nan",
            Hostile(): "hostile",
        }
        expected = {
            "1": "int",
            "1.5": "float",
            "null": "none",
            "false": "bool",
            "3": "intenum",
            "(1, 2)": "tuple",
            str(_UUID): "uuid",
            "2026-01-02": "date",
            "k": "bytes",
            "[1, 2]": "frozenset",
            "nan": "nan",
            "<unprintable Hostile object>": "hostile",
        }
        assert to_json_safe(value) == expected
        assert roundtrip(value) == expected

    def test_json_keys_match_the_fast_path(self) -> None:
        """Number and bool keys that json handles itself give the same text as the slow path."""
        simple = {1: "a", 2.5: "b", False: "c", None: "d", Level.HIGH: "e"}
        forced = {**simple, "nan": math.nan}  # NaN forces the conversion path
        assert json.loads(dumps(simple)) == {
            k: v for k, v in to_json_safe(forced).items() if k != "nan"
        }

    def test_self_reference(self) -> None:
        """Self-referential dicts and lists become '<cycle>' where they repeat."""
        d: Dict[str, Any] = {"a": 1}
        d["me"] = d
        lst: List[Any] = [1]
        lst.append(lst)
        d["list"] = lst
        assert to_json_safe(d) == {"a": 1, "me": "<cycle>", "list": [1, "<cycle>"]}
        assert roundtrip(d) == {"a": 1, "me": "<cycle>", "list": [1, "<cycle>"]}

    def test_dataclass_cycle(self) -> None:
        """A dataclass that contains itself is cut at the cycle, not recursed forever."""
        point = Point(1, None)
        point.y = point
        assert to_json_safe(point) == {"x": 1, "y": "<cycle>"}
        assert roundtrip(point) == {"x": 1, "y": "<cycle>"}

    def test_shared_values_are_not_cycles(self) -> None:
        """The same list twice side by side is written twice in full."""
        shared = [1, 2]
        assert to_json_safe({"a": shared, "b": [shared, shared]}) == {
            "a": [1, 2],
            "b": [[1, 2], [1, 2]],
        }

    def test_very_deep_nesting(self) -> None:
        """Nesting far beyond the recursion limit is cut with '<too deep>' after 64 levels."""
        value = nested_lists(20_000)
        converted = to_json_safe(value)
        depth = 0
        while isinstance(converted, list):
            converted = converted[0]
            depth += 1
        assert (depth, converted) == (64, "<too deep>")
        text = dumps(value)
        json.loads(text)
        assert '"<too deep>"' in text

    def test_mapping_whose_items_raise(self) -> None:
        """A Mapping whose items() raises is written as its str()."""
        from collections.abc import Mapping

        class Broken(Mapping):  # type: ignore[type-arg]
            def __getitem__(self, key: Any) -> Any:
                raise KeyError(key)

            def __iter__(self) -> Any:
                raise RuntimeError("no iteration")

            def __len__(self) -> int:
                return 1

            def __str__(self) -> str:
                return "broken mapping"

        assert to_json_safe({"m": Broken()}) == {"m": "broken mapping"}
        assert roundtrip(Broken()) == "broken mapping"

    def test_input_is_not_modified(self) -> None:
        """to_json_safe returns a copy; the input keeps its values and types."""
        value = {"s": {1, 2}, "t": (1,), "n": math.inf}
        to_json_safe(value)
        assert value["s"] == {1, 2} and value["t"] == (1,) and value["n"] == math.inf


def _pairs_once(pairs: List[Any]) -> Dict[str, Any]:
    """An object_pairs_hook that refuses a key written twice."""
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key written twice: {keys}"
    return dict(pairs)


class TextKey(str):
    """A str key unequal to the str of the same text beside it."""

    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = str.__hash__


class TestKeysWrittenOnce:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({1: "a", "1": "b"}, '{"1":"b"}'),
            ({"1": "b", 1: "a"}, '{"1":"b"}'),
            ({"x": 0, True: "a", "true": "b"}, '{"x":0,"true":"b"}'),
            ({None: "a", "null": "b", 2.5: "c", "2.5": "d"}, '{"null":"b","2.5":"d"}'),
            ({TextKey("k"): "a", "k": "b"}, '{"k":"b"}'),
            ({1: "int", b"1": "bytes", 2: "two"}, '{"1":"bytes","2":"two"}'),
            ([{1: "a", "1": "b"}, ({0: 1, "0": 2},)], '[{"1":"b"},[{"0":2}]]'),
        ],
        ids=["int", "str-first", "bool", "none-float", "str-subclass", "no-str-key", "nested"],
    )
    def test_keys_with_one_text_give_one_key(self, value: Any, expected: str) -> None:
        """Keys that are the same once written as text give one key, where the first stood:
        a str key wins over the others, else the last one wins."""
        assert dumps(value) == expected
        assert json.dumps(to_json_safe(value), separators=(",", ":")) == expected

    def test_keys_are_written_once_in_converted_values(self) -> None:
        """A mapping, a dataclass or an enum that converts to a dict with such keys, anywhere
        in a message, gives one key too."""
        from collections import UserDict

        @dataclasses.dataclass
        class Holder:
            inner: Any

        value = {"m": UserDict({1: "a", "1": "b"}), "d": Holder({2: "a", "2": "b"}), "ok": 1}
        message = build_message("track", user_id="u", event="E", properties=value)
        properties = json.loads(encode(message), object_pairs_hook=_pairs_once)["properties"]
        assert properties == {"m": {"1": "b"}, "d": {"inner": {"2": "b"}}, "ok": 1}

    def test_plain_json_is_the_json_of_what_json_writes_as_it_is(self) -> None:
        """plain_json gives the JSON of plain containers (values converted), and None for those
        that need to_json_safe: keys that are not strings, subclasses, NaN, cycles."""
        loop: List[Any] = []
        loop.append(loop)
        assert _json.plain_json({"a": [1, "x"], "d": dt.date(2026, 1, 2)}) == (
            '{"a":[1,"x"],"d":"2026-01-02"}'
        )
        for value in ({1: "a"}, {"a": TextKey("b"), TextKey("k"): 1}, {"n": math.nan}, loop):
            assert _json.plain_json(value) is None
        assert _json.plain_json({"a": Point(1, 2)}) == '{"a":{"x":1,"y":2}}'
        assert _json.plain_json("not a container") is None


class _NoClass:
    """An object whose __class__ raises: isinstance() of it raises too."""

    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise RuntimeError("no class")

    def __str__(self) -> str:
        return "no class"


class _Unspeakable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


class TestNeverRaises:
    def test_objects_whose_isinstance_raises(self) -> None:
        """to_json_safe and dumps write an object whose isinstance() raises as its str()."""
        value = {"a": [_NoClass(), math.nan], "b": _NoClass()}
        assert to_json_safe(value) == {"a": ["no class", None], "b": "no class"}
        assert json.loads(dumps(value)) == {"a": ["no class", None], "b": "no class"}

    def test_error_text_of_an_error_whose_text_raises(self) -> None:
        """error_text names the error and its text, a placeholder when str() of it raises."""

        assert _json.error_text(ValueError("bad")) == "ValueError: bad"
        assert _json.error_text(_Unspeakable()) == (
            "_Unspeakable: <unprintable _Unspeakable object>"
        )


class TestEncode:
    def test_utf8_json_compact(self) -> None:
        """encode returns compact UTF-8 JSON with non-ASCII text unescaped."""
        message = build_message("track", user_id="ü", event="Café ☕", message_id="m", created=0.0)
        data = encode(message)
        assert "Café ☕".encode() in data
        assert b", " not in data and b": " not in data
        assert json.loads(data.decode("utf-8")) == message

    def test_deterministic(self) -> None:
        """The same message encodes to the same bytes; equal sets encode alike in any order."""
        first = {"tags": {"b", "a", "c"}, "when": _AWARE, "n": Decimal("1.5"), "o": Plain()}
        second = {"tags": {"c", "a", "b"}, "when": _AWARE, "n": Decimal("1.5"), "o": Plain()}
        fields = {"user_id": "u", "event": "E", "message_id": "m", "created": CREATED}
        encoded = encode(build_message("track", properties=first, **fields))
        assert encoded == encode(build_message("track", properties=first, **fields))
        assert encoded == encode(build_message("track", properties=second, **fields))

    def test_lone_surrogates_are_escaped(self) -> None:
        """Lone surrogates in values and keys become JSON escapes; other text stays UTF-8."""
        message = build_message(
            "track", user_id="u", event="bad \ud800 é", properties={"\udc80key": "\udfff"}
        )
        data = encode(message)
        data.decode("utf-8")  # strictly valid UTF-8
        assert b"\\ud800" in data and "é".encode() in data
        loaded = json.loads(data)
        assert loaded["event"] == "bad \ud800 é"
        assert loaded["properties"] == {"\udc80key": "\udfff"}

    def test_surrogate_pair_written_separately_is_joined(self) -> None:
        """Two surrogates that form a pair come back as the one character they encode."""
        data = encode(build_message("track", user_id="u", event="\ud83d\ude00"))
        assert json.loads(data)["event"] == "\U0001f600"

    def test_escaped_backslash_before_surrogate(self) -> None:
        """A backslash right before a lone surrogate survives as a backslash."""
        data = encode(build_message("track", user_id="u", event="a\\\ud800"))
        assert json.loads(data)["event"] == "a\\\ud800"

    def test_nan_and_infinity_become_null(self) -> None:
        """NaN and infinities, anywhere in the message, are written as null."""
        properties = {"a": math.nan, "b": [math.inf, {"c": -math.inf}], "d": 1.5}
        data = encode(build_message("track", user_id="u", event="E", properties=properties))
        assert b"NaN" not in data and b"Infinity" not in data
        assert json.loads(data)["properties"] == {"a": None, "b": [None, {"c": None}], "d": 1.5}

    def test_hostile_values_everywhere(self) -> None:
        """Hostile objects as values, keys, ids and event names never make encode raise."""
        message = build_message(
            "track",
            user_id=Hostile(),
            event=Hostile(),
            properties={Hostile(): Hostile(), "set": {Hostile()}, "b": BadStr()},
            context={"obj": Hostile()},
        )
        loaded = json.loads(encode(message))
        unprintable = "<unprintable Hostile object>"
        assert loaded["userId"] == loaded["event"] == unprintable
        assert loaded["properties"] == {
            unprintable: unprintable,
            "set": [unprintable],
            "b": "BadStr()",
        }

    def test_huge_integer(self) -> None:
        """An integer too long for Python to write in decimal becomes null instead of raising."""
        loaded = json.loads(
            encode(
                build_message(
                    "track",
                    user_id="u",
                    event="E",
                    properties={
                        "big": 10**5000,
                        "ok": 2**64,
                    },
                )
            )
        )
        assert loaded["properties"] == {"big": None, "ok": 2**64}

    def test_dumps_never_raises(self) -> None:
        """dumps writes any value, including a bare cyclic list and a raising object."""
        loop: List[Any] = []
        loop.append(loop)
        assert json.loads(dumps(loop)) == ["<cycle>"]
        assert json.loads(dumps(Hostile())) == "<unprintable Hostile object>"


class TestProperties:
    @property_settings
    @given(value=any_values)
    def test_to_json_safe_is_strict_json(self, value: Any) -> None:
        """to_json_safe output passes json.dumps(allow_nan=False) and equals what dumps writes."""
        converted = to_json_safe(value)
        text = json.dumps(converted, allow_nan=False)
        assert json.loads(text) == converted
        assert json.loads(dumps(value)) == converted
        assert to_json_safe(converted) == converted  # already safe: unchanged


class TestFlatObjects:
    @given(
        st.dictionaries(
            st.text(),
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
            max_size=8,
        )
    )
    def test_a_flat_dict_is_written_as_the_encoder_writes_it(self, value: Dict[str, Any]) -> None:
        """A dict of str keys and scalars gets, byte for byte, the standard encoder's JSON
        (None where the encoder refuses it: NaN, infinities)."""
        try:
            expected = _json._encoder.encode(value)
        except ValueError:
            expected = None
        assert _json.plain_json(value) == expected

    @pytest.mark.parametrize(
        "value",
        [{1: "a"}, {"a": TextKey("b")}, {TextKey("k"): 1}, {"a": [1]}, {"a": True, "b": 2**64}],
    )
    def test_other_dicts_take_the_encoders_path(self, value: Dict[Any, Any]) -> None:
        """Keys that are not str, subclasses and containers are left to the encoder's path."""
        flat = _json._flat_object(value)
        assert flat is None or flat == _json._encoder.encode(value)


class TestDecodeJson:
    @pytest.mark.parametrize(
        "text",
        [
            b'{"type":"track","properties":{"n":1,"f":1.5,"ok":true,"none":null}}',
            b'{"text":"\\u00e9\\u2028"}',
            b'{"lone":"\\ud800"}',  # a lone surrogate, as the encoder escapes one
            b'{"big":123456789012345678901234567890}',  # past 64 bits
            b'{"small":-123456789012345678901234567890,"max":18446744073709551615}',
            b'{"below_i64":-9223372036854775809,"above":9223372036854775808}',
            b"[]",
        ],
    )
    def test_the_same_values_as_the_standard_library(self, text: bytes) -> None:
        """decode_json gives what json.loads gives, with either encoder and for what
        orjson refuses (lone surrogates, integers past 64 bits)."""
        assert _json.decode_json(text) == json.loads(text)

    @given(st.integers(min_value=-(2**70), max_value=2**70))
    def test_every_integer_reads_back_exactly(self, number: int) -> None:
        """An integer of any size reads back as the same integer, never a float."""
        data = _json.encode_json({"n": number})
        assert _json.decode_json(data) == {"n": number}
        assert type(_json.decode_json(data)["n"]) is int

    def test_it_reads_back_what_encode_json_wrote(self) -> None:
        """Encoding then decoding gives the message back."""
        message = {"type": "track", "event": "É", "properties": {"n": [1, 2.5, None]}}
        assert _json.decode_json(_json.encode_json(message)) == message

    def test_malformed_json_raises_value_error(self) -> None:
        """Bytes that are not JSON raise ValueError, as json.loads does."""
        with pytest.raises(ValueError):
            _json.decode_json(b'{"unterminated": ')
