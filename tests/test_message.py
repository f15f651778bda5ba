"""Conformance and property tests for the pure mapping module (segmentio_logging._message)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import gc
import json
import logging
import math
import re
import uuid
from decimal import Decimal
from typing import Any, Dict, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentio_logging import InvalidMessage, MessageTooLarge, __version__, _message
from segmentio_logging._message import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    RESERVED_FIELDS,
    RecordMapper,
    batch_body,
    build_message,
    dumps,
    encode,
    envelope_size,
    format_timestamp,
    normalize_timestamp,
    to_json_safe,
)

LIBRARY = {"name": "segmentio-logging", "version": __version__}
ORJSON = _message.FAST_JSON  # the orjson encoder, or None without the ``fast`` extra


@pytest.fixture(autouse=True, scope="module", params=["stdlib-json", "orjson"])
def json_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every test of this module with both encoders: the standard library and orjson."""
    saved = _message.FAST_JSON, _message.PLAIN_JSON
    if request.param == "stdlib-json":
        _message.FAST_JSON = _message.PLAIN_JSON = None
    elif saved[0] is None:
        pytest.skip("orjson is not installed")
    try:
        yield str(request.param)
    finally:
        _message.FAST_JSON, _message.PLAIN_JSON = saved


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


ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TOO_LARGE = re.compile(
    r"^message is \d{1,3}(,\d{3})* bytes, over Segment's 32 KB limit \(32,768 bytes\)$"
)
CREATED = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
CREATED_ISO = "2023-11-14T22:13:20.250Z"
_logger = logging.getLogger("tests.message.records")
UTC = dt.timezone.utc


def tz(hours: float) -> dt.timezone:
    return dt.timezone(dt.timedelta(hours=hours))


def make_record(msg: Any = "Played a Song", *args: Any, **extra: Any) -> logging.LogRecord:
    """A real LogRecord, as ``logger.info(msg, *args, extra=extra)`` makes it."""
    record = _logger.makeRecord(
        _logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra or None
    )
    record.created = CREATED
    return record


class GeneralOnlyMapper(RecordMapper):
    """A mapper that never takes the plain track path: what every record got before it."""

    def _capture_track(self, *args: Any) -> None:
        return None


def mapped(record: logging.LogRecord, **options: Any) -> Dict[str, Any]:
    """The message a default (or configured) mapper makes of ``record``.

    Also checks that what the worker sends (``prepare``, which may capture and splice a
    plain track without a dict) is the JSON the general path makes of the same record,
    key for key and in the same order.
    """
    mapper = RecordMapper(**options)
    captured = mapper.capture(record)
    assert captured is not None
    message = mapper.build(captured)
    general = GeneralOnlyMapper(**options).capture(record)
    assert general is not None
    try:
        expected = json.loads(encode(GeneralOnlyMapper(**options).build(general)))
    except MessageTooLarge:
        with pytest.raises(MessageTooLarge):
            mapper.prepare(captured)
        return message
    prepared, data = mapper.prepare(captured)
    assert prepared is None  # callbacks decode what was sent
    sent = json.loads(data)
    assert json.loads(encode(message)).keys() == sent.keys()
    del sent["messageId"], expected["messageId"]  # a new one for each message
    assert list(sent.items()) == list(expected.items())
    return message


def roundtrip(value: Any) -> Any:
    """``value`` as a track property, through encode and back."""
    message = build_message("track", user_id="u1", event="E", properties={"v": value})
    return json.loads(encode(message))["properties"]["v"]


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    y: Any


class Plain:
    def __str__(self) -> str:
        return "a plain object"


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "BadStr()"


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


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


def nested_lists(depth: int) -> List[Any]:
    value: List[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# --------------------------------------------------------------------------- build_message


class TestBuildMessage:
    @pytest.mark.parametrize(
        ("kind", "fields", "expected"),
        [
            (
                "track",
                {"event": "Played", "properties": {"song": "A"}},
                {"event": "Played", "properties": {"song": "A"}},
            ),
            ("identify", {"traits": {"plan": "pro"}}, {"traits": {"plan": "pro"}}),
            (
                "group",
                {"group_id": "g1", "traits": {"n": 1}},
                {"groupId": "g1", "traits": {"n": 1}},
            ),
            ("alias", {"previous_id": "old"}, {"previousId": "old"}),
            (
                "page",
                {"name": "Home", "category": "Docs", "properties": {"path": "/"}},
                {"name": "Home", "category": "Docs", "properties": {"path": "/"}},
            ),
            ("screen", {"name": "Settings"}, {"name": "Settings", "properties": {}}),
        ],
    )
    def test_shape_of_every_type(self, kind: str, fields: Dict[str, Any], expected: Any) -> None:
        """Each call type carries exactly its Segment fields, in camelCase, plus the common ones."""
        message = build_message(kind, user_id="u1", created=CREATED, message_id="m-1", **fields)
        assert message == {
            "type": kind,
            "userId": "u1",
            **expected,
            "context": {"library": LIBRARY},
            "timestamp": CREATED_ISO,
            "messageId": "m-1",
        }
        assert json.loads(encode(message)) == message

    def test_all_types_are_covered(self) -> None:
        """MESSAGE_TYPES lists the six Segment calls."""
        assert set(MESSAGE_TYPES) == {"track", "identify", "group", "alias", "page", "screen"}

    @pytest.mark.parametrize("kind", ["track", "identify", "group", "page", "screen"])
    def test_anonymous_id_alone_is_enough(self, kind: str) -> None:
        """An anonymous id without a user id makes a message with anonymousId and no userId."""
        message = build_message(kind, anonymous_id="anon", event="E", group_id="g")
        assert message["anonymousId"] == "anon"
        assert "userId" not in message

    def test_both_ids_are_kept(self) -> None:
        """With a user id and an anonymous id, the message has both."""
        message = build_message("track", user_id="u", anonymous_id="a", event="E")
        assert (message["userId"], message["anonymousId"]) == ("u", "a")

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (42, "42"),
            (0, "0"),
            (uuid.UUID(int=7), str(uuid.UUID(int=7))),
            (b"bytes-id", "bytes-id"),
            (Decimal("12.50"), "12.50"),
        ],
    )
    def test_ids_are_stringified(self, value: Any, expected: str) -> None:
        """User, anonymous, group and previous ids become strings (0 is an id)."""
        group = build_message("group", user_id=value, anonymous_id=value, group_id=value)
        alias = build_message("alias", user_id=value, previous_id=value)
        assert (group["userId"], group["anonymousId"], group["groupId"]) == (expected,) * 3
        assert alias["previousId"] == expected

    def test_event_and_name_are_stringified(self) -> None:
        """A non-string event, page name or category becomes its str()."""
        assert build_message("track", user_id="u", event=7)["event"] == "7"
        page = build_message("page", user_id="u", name=Color.RED, category=3)
        assert (page["name"], page["category"]) == ("Color.RED", "3")

    def test_context_is_merged_and_library_is_set(self) -> None:
        """The caller's context is kept; context.library always names this package and version."""
        context = {"ip": "10.0.0.1", "library": {"name": "spoof"}}
        message = build_message("track", user_id="u", event="E", context=context)
        assert message["context"] == {"ip": "10.0.0.1", "library": LIBRARY}
        assert context == {"ip": "10.0.0.1", "library": {"name": "spoof"}}

    def test_library_dict_is_not_shared(self) -> None:
        """Editing one message's context.library leaves the next message's alone."""
        first = build_message("track", user_id="u", event="E")
        first["context"]["library"]["name"] = "edited"
        assert build_message("track", user_id="u", event="E")["context"]["library"] == LIBRARY

    def test_integrations_are_passed_through(self) -> None:
        """integrations is copied to the message as given; absent, the key is absent."""
        message = build_message("track", user_id="u", event="E", integrations={"All": False})
        assert message["integrations"] == {"All": False}
        assert "integrations" not in build_message("track", user_id="u", event="E")

    def test_message_ids_are_unique_and_short(self) -> None:
        """Generated messageIds are unique and under 100 characters."""
        ids = [build_message("track", user_id="u", event="E")["messageId"] for _ in range(2_000)]
        assert len(set(ids)) == len(ids)
        assert all(isinstance(mid, str) and 0 < len(mid) < 100 for mid in ids)

    def test_message_id_is_kept(self) -> None:
        """A given message_id is used as the messageId, stringified."""
        assert build_message("track", user_id="u", event="E", message_id=123)["messageId"] == "123"
        long_id = "m" * 100
        assert build_message("identify", user_id="u", message_id=long_id)["messageId"] == long_id

    @pytest.mark.parametrize("message_id", ["", "m" * 101])
    def test_message_id_length_is_checked(self, message_id: str) -> None:
        """An empty or over-long message_id is refused, naming the limit."""
        with pytest.raises(InvalidMessage, match="message_id must be 1 to 100 characters"):
            build_message("track", user_id="u", event="E", message_id=message_id)

    def test_timestamp_from_created(self) -> None:
        """Without timestamp=, the message is stamped from ``created`` (the record's time)."""
        assert build_message("track", user_id="u", event="E", created=0.0)["timestamp"] == (
            "1970-01-01T00:00:00.000Z"
        )

    def test_timestamp_wins_over_created(self) -> None:
        """timestamp= is used instead of created, normalised to UTC."""
        message = build_message(
            "track", user_id="u", event="E", created=CREATED, timestamp="2020-05-06T07:08:09Z"
        )
        assert message["timestamp"] == "2020-05-06T07:08:09.000Z"

    def test_stamped_now_without_any_time(self) -> None:
        """With neither timestamp nor created, the message is stamped with the current UTC time."""
        before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        stamp = build_message("track", user_id="u", event="E")["timestamp"]
        after = dt.datetime.now(dt.timezone.utc)
        assert ISO_UTC.match(stamp)
        parsed = dt.datetime.fromisoformat(stamp[:-1] + "+00:00")
        assert before <= parsed <= after

    @pytest.mark.parametrize(
        ("kind", "fields", "reason"),
        [
            ("purchase", {"user_id": "u"}, r"segment_type must be one of track, identify"),
            ("TRACK", {"user_id": "u", "event": "E"}, r"segment_type must be one of"),
            ("track", {"event": "E"}, r"track needs a user_id or an anonymous_id"),
            ("identify", {"user_id": "", "anonymous_id": None}, r"identify needs a user_id"),
            ("alias", {"user_id": "u"}, r"alias needs both previous_id and user_id"),
            ("alias", {"previous_id": "p", "anonymous_id": "a"}, r"alias needs both previous_id"),
            ("group", {"user_id": "u"}, r"group needs a group_id"),
            ("track", {"user_id": "u"}, r"track needs an event name"),
            ("track", {"user_id": "u", "event": ""}, r"track needs an event name"),
            (
                "track",
                {"user_id": "u", "event": "E", "properties": [1]},
                r"properties must be a dict, got list",
            ),
            ("identify", {"user_id": "u", "traits": "x"}, r"traits must be a dict, got str"),
            (
                "track",
                {"user_id": "u", "event": "E", "context": 3},
                r"context must be a dict, got int",
            ),
            (
                "track",
                {"user_id": "u", "event": "E", "integrations": ()},
                r"integrations must be a dict",
            ),
            (
                "track",
                {"user_id": {"id": 1}, "event": "E"},
                r"user_id must be a string or a number",
            ),
            (
                "track",
                {"user_id": "u", "event": "E", "timestamp": "soon"},
                r"timestamp 'soon' is not ISO-8601",
            ),
        ],
    )
    def test_invalid_input_raises_with_reason(
        self, kind: str, fields: Dict[str, Any], reason: str
    ) -> None:
        """A call Segment would reject raises InvalidMessage (a ValueError) saying what is wrong."""
        with pytest.raises(InvalidMessage, match=reason) as caught:
            build_message(kind, **fields)
        assert isinstance(caught.value, ValueError)
        assert caught.value.reason == str(caught.value)

    def test_properties_mapping_is_accepted(self) -> None:
        """Any Mapping works as properties; it becomes a plain dict."""
        from types import MappingProxyType

        message = build_message(
            "track", user_id="u", event="E", properties=MappingProxyType({"a": 1})
        )
        assert message["properties"] == {"a": 1} and type(message["properties"]) is dict


# --------------------------------------------------------------------------- timestamps


class TestNormalizeTimestamp:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (dt.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC), "2026-01-02T03:04:05.678Z"),
            (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz(2)), "2026-01-02T01:04:05.000Z"),
            (dt.datetime(2026, 1, 2, 0, 30, tzinfo=tz(1)), "2026-01-01T23:30:00.000Z"),
            (dt.datetime(2026, 1, 2, 3, 4, 5, 999_999), "2026-01-02T03:04:05.999Z"),
            (dt.date(2026, 1, 2), "2026-01-02T00:00:00.000Z"),
            ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02T03:04:05z", "2026-01-02T03:04:05.000Z"),
            ("  2026-01-02T03:04:05.250Z  ", "2026-01-02T03:04:05.250Z"),
            ("2026-01-02T03:04:05.250+01:00", "2026-01-02T02:04:05.250Z"),
            ("2026-01-02T03:04:05.123456-05:30", "2026-01-02T08:34:05.123Z"),
            ("2026-01-02T03:04:05", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02 03:04:05", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02", "2026-01-02T00:00:00.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000, "2023-11-14T22:13:20.000Z"),
            (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
            (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
            (Decimal("1700000000.5"), "2023-11-14T22:13:20.500Z"),
            (-1.5, "1969-12-31T23:59:58.500Z"),
            (dt.datetime(5, 6, 7), "0005-06-07T00:00:00.000Z"),
        ],
    )
    def test_accepted_forms(self, value: Any, expected: str) -> None:
        """Datetimes (naive ones as UTC), dates, ISO strings and epoch seconds give ISO UTC 'Z'."""
        assert normalize_timestamp(value) == expected
        assert ISO_UTC.match(expected)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("yesterday", r"timestamp 'yesterday' is not ISO-8601"),
            ("", r"timestamp '' is not ISO-8601"),
            ("2026-13-01T00:00:00Z", r"is not ISO-8601"),
            ("x" * 500, r"timestamp 'x{60}\.\.\.' is not ISO-8601"),
            (float("nan"), r"timestamp 'nan' is not a valid number of epoch seconds"),
            (float("inf"), r"is not a valid number of epoch seconds"),
            (1_700_000_000_000, r"is not a valid number of epoch seconds"),  # milliseconds
            (-1e12, r"is not a valid number of epoch seconds"),
            (10**400, r"is not a valid number of epoch seconds"),
            (Decimal("sNaN"), r"is not a valid number of epoch seconds"),
            (True, r"timestamp must be a datetime, an ISO-8601 string or epoch seconds, got bool"),
            ([2026], r"got list"),
            (dt.time(3, 4), r"got time"),
            (
                dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                r"outside the years ISO-8601 can write in UTC",
            ),
        ],
    )
    def test_unusable_values_raise(self, value: Any, reason: str) -> None:
        """An unparseable, out-of-range or mistyped timestamp raises InvalidMessage saying so."""
        with pytest.raises(InvalidMessage, match=reason):
            normalize_timestamp(value)


class TestFormatTimestamp:
    @pytest.mark.parametrize(
        ("epoch", "expected"),
        [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (CREATED, CREATED_ISO),
            (1_700_000_000.001, "2023-11-14T22:13:20.001Z"),
            (1_700_000_000.999, "2023-11-14T22:13:20.999Z"),
            (0.9999999, "1970-01-01T00:00:01.000Z"),
            (-0.001, "1969-12-31T23:59:59.999Z"),
            (-62_135_596_800.0, "0001-01-01T00:00:00.000Z"),
            (253_402_300_799.0, "9999-12-31T23:59:59.000Z"),
        ],
    )
    def test_iso_utc_with_milliseconds(self, epoch: float, expected: str) -> None:
        """Epoch seconds become ISO-8601 UTC with milliseconds and 'Z', years padded to 4 digits."""
        assert format_timestamp(epoch) == expected

    def test_agrees_with_datetime(self) -> None:
        """The cached formatter gives what datetime gives, across second boundaries."""
        for step in range(0, 3_000, 7):
            epoch = 1_767_225_599.0 + step / 1_000  # around 2026-01-01T00:00:00Z
            expected = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
            text = format_timestamp(epoch)
            assert text[:19] == expected.strftime("%Y-%m-%dT%H:%M:%S")
            assert int(text[20:23]) == expected.microsecond // 1000

    @pytest.mark.parametrize("epoch", [math.nan, math.inf, -1e20, 1e20])
    def test_out_of_range_raises(self, epoch: float) -> None:
        """A value no ISO-8601 year can hold raises InvalidMessage rather than OverflowError."""
        with pytest.raises(InvalidMessage, match="not a valid number of epoch seconds"):
            format_timestamp(epoch)


# --------------------------------------------------------------------------- RecordMapper


class TestRecordMapper:
    @pytest.mark.parametrize("key", sorted(RESERVED_FIELDS | {"session_id"}))
    def test_reserved_keys_are_allowed_in_extra(self, key: str) -> None:
        """No reserved key is a LogRecord attribute: logging accepts each in extra=."""
        record = make_record(**{key: "value"})
        assert record.__dict__[key] == "value"

    def test_track_with_event(self) -> None:
        """user_id, event and properties make a track message stamped with record.created."""
        record = make_record(user_id="u1", event="Played", properties={"song": "A"})
        message = mapped(record)
        assert message == {
            "type": "track",
            "userId": "u1",
            "event": "Played",
            "properties": {"song": "A"},
            "context": {"library": LIBRARY},
            "timestamp": CREATED_ISO,
            "messageId": message["messageId"],
        }

    def test_track_event_from_formatted_message(self) -> None:
        """Without event, a track's event is the record's message with its %-args applied."""
        assert mapped(make_record("Played %s by %r", "Song", "Band", user_id="u"))["event"] == (
            "Played Song by 'Band'"
        )

    def test_message_without_args_is_taken_verbatim(self) -> None:
        """A message with a literal % and no args is the event name as written."""
        assert mapped(make_record("100% done", user_id="u"))["event"] == "100% done"

    def test_event_none_falls_back_to_message(self) -> None:
        """extra={'event': None} counts as no event: the formatted message is the name."""
        assert mapped(make_record("Signed %s", "up", user_id="u", event=None))["event"] == (
            "Signed up"
        )

    def test_non_string_msg(self) -> None:
        """A record whose msg is not a string uses its str() as the event."""
        assert mapped(make_record(ValueError("boom"), user_id="u"))["event"] == "boom"

    def test_broken_format_does_not_raise(self) -> None:
        """A message whose %-args do not fit falls back to the unformatted message."""
        assert mapped(make_record("Value %d", "not a number", user_id="u"))["event"] == "Value %d"

    def test_message_formatted_at_capture(self) -> None:
        """The event text is fixed at capture: changing an arg afterwards changes nothing."""
        items = ["a"]
        mapper = RecordMapper()
        captured = mapper.capture(make_record("Bought %s", items, user_id="u"))
        assert captured is not None
        items.append("b")
        assert mapper.build(captured)["event"] == "Bought ['a']"

    def test_identify_from_traits(self) -> None:
        """traits without event infer identify."""
        message = mapped(make_record("login", user_id="u", traits={"plan": "pro"}))
        assert (message["type"], message["traits"]) == ("identify", {"plan": "pro"})
        assert "event" not in message and "properties" not in message

    def test_traits_with_event_stay_track(self) -> None:
        """traits together with event infer track, named by the event."""
        message = mapped(make_record("x", user_id="u", traits={"plan": "pro"}, event="Upgraded"))
        assert (message["type"], message["event"]) == ("track", "Upgraded")
        assert "traits" not in message

    def test_group_from_group_id(self) -> None:
        """group_id infers group, with its traits."""
        message = mapped(make_record("joined", user_id="u", group_id=99, traits={"n": 1}))
        assert (message["type"], message["groupId"], message["traits"]) == ("group", "99", {"n": 1})

    def test_alias_from_previous_id(self) -> None:
        """previous_id infers alias and wins over group_id and traits."""
        message = mapped(make_record("x", user_id="u", previous_id="old", group_id="g", traits={}))
        assert (message["type"], message["previousId"], message["userId"]) == ("alias", "old", "u")

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_page_and_screen_take_name_from_message(self, kind: str) -> None:
        """segment_type page/screen takes its name from the formatted message, plus category."""
        record = make_record(
            "Viewed %s",
            "Pricing",
            user_id="u",
            segment_type=kind,
            category="Docs",
            properties={"path": "/pricing"},
        )
        message = mapped(record)
        assert (message["type"], message["name"], message["category"]) == (
            kind,
            "Viewed Pricing",
            "Docs",
        )
        assert message["properties"] == {"path": "/pricing"}

    def test_explicit_type_wins_and_is_normalised(self) -> None:
        """segment_type overrides inference, case and surrounding spaces ignored."""
        record = make_record(
            "x", user_id="u", segment_type=" Identify ", event="E", traits={"a": 1}
        )
        message = mapped(record)
        assert (message["type"], message["traits"]) == ("identify", {"a": 1})

    def test_explicit_track_uses_message_when_no_event(self) -> None:
        """segment_type='track' with group_id present still makes a track named by the message."""
        message = mapped(make_record("Clicked", user_id="u", segment_type="track", group_id="g"))
        assert (message["type"], message["event"]) == ("track", "Clicked")

    @pytest.mark.parametrize("kind", ["purchase", 5, ""])
    def test_bad_segment_type_raises(self, kind: Any) -> None:
        """An unknown segment_type raises InvalidMessage at build, naming the allowed types."""
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u", segment_type=kind))
        assert captured is not None
        with pytest.raises(InvalidMessage, match="segment_type must be one of track, identify"):
            mapper.build(captured)

    @pytest.mark.parametrize(
        ("extra", "reason"),
        [
            ({"user_id": "u", "properties": ["a"]}, "properties must be a dict, got list"),
            (
                {"user_id": "u", "traits": "gold", "segment_type": "identify"},
                "traits must be a dict",
            ),
            (
                {"user_id": "u", "timestamp": "last tuesday"},
                "timestamp 'last tuesday' is not ISO-8601",
            ),
            ({"user_id": "u", "segment_type": "group"}, "group needs a group_id"),
            (
                {"anonymous_id": "a", "segment_type": "alias", "previous_id": "p"},
                "alias needs both",
            ),
            ({"user_id": "u", "message_id": "x" * 101}, "message_id must be 1 to 100 characters"),
        ],
    )
    def test_invalid_records_raise_at_build(self, extra: Dict[str, Any], reason: str) -> None:
        """A record with ids but unusable fields is captured, then refused at build."""
        mapper = RecordMapper()
        captured = mapper.capture(make_record(**extra))
        assert captured is not None
        with pytest.raises(InvalidMessage, match=reason):
            mapper.build(captured)

    def test_every_reserved_key_reaches_the_message(self) -> None:
        """context, integrations, timestamp and message_id from extra land in the message."""
        record = make_record(
            user_id="u",
            anonymous_id="a",
            event="E",
            properties={"p": 1},
            context={"ip": "1.2.3.4"},
            integrations={"All": False},
            timestamp=dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            message_id="mid-1",
        )
        message = mapped(record)
        assert message == {
            "type": "track",
            "userId": "u",
            "anonymousId": "a",
            "event": "E",
            "properties": {"p": 1},
            "context": {"ip": "1.2.3.4", "library": LIBRARY},
            "integrations": {"All": False},
            "timestamp": "2020-01-02T03:04:05.000Z",
            "messageId": "mid-1",
        }

    @pytest.mark.parametrize(
        ("extra", "expected"),
        [
            ({"anonymous_id": "a1"}, "a1"),
            ({"session_id": "s1"}, "s1"),
            ({"anonymous_id": "a1", "session_id": "s1"}, "a1"),
            ({"anonymous_id": None, "session_id": "s1"}, "s1"),
            ({"anonymous_id": "", "session_id": "s1"}, "s1"),
            ({"session_id": 0}, "0"),
        ],
    )
    def test_anonymous_id_and_session_id(self, extra: Dict[str, Any], expected: str) -> None:
        """session_id is the seed's name for anonymous_id; anonymous_id wins when both are set."""
        message = mapped(make_record(**extra))
        assert message["anonymousId"] == expected and "userId" not in message

    def test_ids_are_stringified(self) -> None:
        """Numeric and UUID ids become strings."""
        uid = uuid.UUID(int=1)
        message = mapped(make_record(user_id=1234, anonymous_id=uid))
        assert (message["userId"], message["anonymousId"]) == ("1234", str(uid))

    @pytest.mark.parametrize(
        "extra",
        [
            {},
            {"user_id": None},
            {"user_id": ""},
            {"session_id": ""},
            {"anonymous_id": None},
            {"event": "E", "properties": {"a": 1}},
            {"userId": "camel-case is not the key"},
        ],
    )
    def test_records_without_ids_are_skipped(self, extra: Dict[str, Any]) -> None:
        """capture returns None for a record with no user id and no anonymous id."""
        assert RecordMapper().capture(make_record(**extra)) is None

    def test_zero_is_an_id(self) -> None:
        """user_id=0 is captured: only None and '' count as missing."""
        assert mapped(make_record(user_id=0))["userId"] == "0"

    def test_field_names_remap(self) -> None:
        """field_names reads Segment fields from other extra keys; the default names are ignored."""
        options = {"field_names": {"user_id": "uid", "event": "action", "properties": "props"}}
        record = make_record("ignored", uid="u7", action="Paid", props={"amount": 3}, event="Other")
        message = mapped(record, **options)
        assert (message["userId"], message["event"], message["properties"]) == (
            "u7",
            "Paid",
            {"amount": 3},
        )
        assert RecordMapper(**options).capture(make_record(user_id="u")) is None

    def test_session_id_not_read_when_anonymous_id_is_remapped(self) -> None:
        """With anonymous_id remapped, session_id is no longer an alias for it."""
        mapper = RecordMapper(field_names={"anonymous_id": "visitor"})
        assert mapper.capture(make_record(session_id="s")) is None
        captured = mapper.capture(make_record(visitor="v"))
        assert captured is not None
        assert mapper.build(captured)["anonymousId"] == "v"

    def test_field_names_cannot_use_record_attributes(self) -> None:
        """Mapping a field to a LogRecord attribute raises ValueError naming it."""
        with pytest.raises(ValueError, match="msg is a LogRecord attribute"):
            RecordMapper(field_names={"event": "msg"})

    def test_capture_extra_makes_properties(self) -> None:
        """capture_extra turns other extra keys into properties; explicit properties win."""
        record = make_record(
            user_id="u", event="E", plan="pro", seats=3, properties={"seats": 5}, _private=1
        )
        message = mapped(record, capture_extra=True)
        assert message["properties"] == {"plan": "pro", "seats": 5}

    def test_capture_extra_makes_traits_for_identify(self) -> None:
        """For identify and group, other extra keys become traits."""
        record = make_record(user_id="u", traits={"a": 1}, plan="pro")
        assert mapped(record, capture_extra=True)["traits"] == {"plan": "pro", "a": 1}
        group = mapped(make_record(user_id="u", group_id="g", size=9), capture_extra=True)
        assert group["traits"] == {"size": 9}

    def test_capture_extra_excludes_reserved_and_standard(self) -> None:
        """Reserved keys, session_id and LogRecord attributes never become properties."""
        record = make_record(
            "m", user_id="u", session_id="s", category="c", message_id="m1", extra_key=1
        )
        message = mapped(record, capture_extra=True)
        assert message["properties"] == {"extra_key": 1}

    def test_capture_extra_off_ignores_other_keys(self) -> None:
        """Without capture_extra, non-reserved extra keys are not sent."""
        assert mapped(make_record(user_id="u", plan="pro"))["properties"] == {}

    def test_capture_extra_not_for_alias(self) -> None:
        """An alias message carries no properties, even with capture_extra."""
        message = mapped(make_record(user_id="u", previous_id="p", plan="x"), capture_extra=True)
        assert "properties" not in message and "traits" not in message

    @pytest.mark.parametrize(
        "extra",
        [
            {"user_id": "u"},
            {"anonymous_id": "a", "properties": {"k": [1, 2]}},
            {"user_id": "u", "session_id": "s", "event": "Named"},
            {"user_id": 7, "properties": {"k": 1}},
            {"user_id": "u", "properties": None},
        ],
    )
    def test_plain_track_path_matches_the_general_path(self, extra: Dict[str, Any]) -> None:
        """build()'s shortcut for plain tracks gives the message build_message gives."""
        record = make_record("Played %s", "a song", **extra)
        message = RecordMapper().build(RecordMapper().capture(record))  # type: ignore[arg-type]
        general = build_message(
            "track",
            user_id=extra.get("user_id"),
            anonymous_id=extra.get("anonymous_id", extra.get("session_id")),
            event=extra.get("event", "Played a song"),
            properties=extra.get("properties"),
            created=CREATED,
        )
        assert message.pop("messageId") and general.pop("messageId")
        assert list(message.items()) == list(general.items())

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


# --------------------------------------------------------------------------- JSON


_AWARE = dt.datetime(2026, 1, 2, 3, 4, 5, 123_456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class TestPlainTrackCapture:
    """The common record (string ids and event, plain properties) is captured compactly
    and, with orjson, sent as JSON spliced on the worker without a dict."""

    def test_captured_as_plain_values(self, json_backend: str) -> None:
        """The capture keeps no reference to the record or to its properties dict."""
        properties = {"song": "A", "tags": ["x"], "n": 1.5}
        record = make_record(user_id="u1", properties=properties)
        captured = RecordMapper().capture(record)
        assert captured is not None and len(captured) == 6
        assert not any(value is properties for value in captured)
        if json_backend == "orjson":
            assert captured[3] == json.dumps(properties, separators=(",", ":"))
            gc.collect()  # only strings, a float and a bool: the collector stops scanning it
            assert not gc.is_tracked(captured)
        else:
            assert captured[3] == properties

    def test_prepare_gives_only_bytes(self) -> None:
        """No dict for the worker to keep; the bytes hold the message, keys in order."""
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u1", properties={"a": [1, 2]}))
        assert captured is not None
        message, data = mapper.prepare(captured)
        assert message is None
        sent = json.loads(data)
        assert sent["properties"] == {"a": [1, 2]} and sent["timestamp"] == CREATED_ISO
        assert list(sent) == [
            "type",
            "userId",
            "event",
            "properties",
            "context",
            "timestamp",
            "messageId",
        ]

    def test_dict_and_list_subclasses_are_read_as_a_copy_reads_them(self) -> None:
        """A nested mapping's own items() and a list's own __iter__ decide what is sent."""

        class Redacted(dict):  # type: ignore[type-arg]
            def items(self) -> Any:
                return [(key, "***") for key in self]

        class Reversed(list):  # type: ignore[type-arg]
            def __iter__(self) -> Any:
                return reversed([*list.__iter__(self)])

        record = make_record(
            user_id="u1",
            properties={"creds": Redacted(password="hunter2"), "order": Reversed([1, 2])},
        )
        assert mapped(record)["properties"]["creds"] == {"password": "***"}
        sent = json.loads(RecordMapper().prepare(RecordMapper().capture(record))[1])  # type: ignore[arg-type]
        assert sent["properties"] == {"creds": {"password": "***"}, "order": [2, 1]}

    def test_nesting_is_cut_at_the_same_depth(self) -> None:
        """Deeper than 64 becomes "<too deep>" on every path, orjson's own limit aside."""
        nested: Any = "leaf"
        for _ in range(70):
            nested = {"k": nested}
        record = make_record(user_id="u1", properties={"deep": nested})
        data = RecordMapper().prepare(RecordMapper().capture(record))[1]  # type: ignore[arg-type]
        assert b"<too deep>" in data
        mapped(record)

    def test_described_by_the_fields_the_record_gave(self) -> None:
        """on_failure sees "event" when the record named one, else the message as "text"."""
        mapper = RecordMapper()
        named = mapper.capture(make_record(user_id="u1", event="E", properties={"p": 1}))
        from_text = mapper.capture(make_record("Bought %d", 2, anonymous_id="a1"))
        assert named is not None and from_text is not None
        assert mapper.describe(named) == {
            "user_id": "u1",
            "anonymous_id": None,
            "created": CREATED,
            "event": "E",
            "properties": {"p": 1},
        }
        assert mapper.describe(from_text) == {
            "user_id": None,
            "anonymous_id": "a1",
            "created": CREATED,
            "text": "Bought 2",
        }

    @pytest.mark.parametrize(
        "properties",
        [
            {"when": dt.datetime(2024, 1, 2, 3, 4, 5)},
            {"tags": {"a"}},
            {"price": Decimal("1.5")},
            {1: "numeric key"},
            {"big": 2**70},
            {"raw": b"\x00"},
            {"nested": {"deeper": [dt.date(2024, 1, 2)]}},
        ],
    )
    def test_other_types_take_the_general_path(
        self, properties: Dict[Any, Any], json_backend: str
    ) -> None:
        """Values beyond JSON's own types are converted exactly as before (see mapped());
        with orjson they leave the spliced path (the standard library path copies them)."""
        record = make_record(user_id="u1", properties=properties)
        captured = RecordMapper().capture(record)
        assert captured is not None
        assert len(captured) == (8 if json_backend == "orjson" else 6)
        assert mapped(record)["properties"]

    def test_a_cycle_takes_the_general_path(self) -> None:
        """A self-referential dict is cut as the general path cuts it, never a crash."""
        properties: Dict[str, Any] = {"a": 1}
        properties["self"] = properties
        message = mapped(make_record(user_id="u1", properties=properties))
        assert json.loads(encode(message))["properties"]["a"] == 1

    @pytest.mark.parametrize(
        "extra",
        [
            {"user_id": "bad \ud800 id"},
            {"user_id": "u1", "event": "bad \udfff event"},
            {"anonymous_id": "a\udc80"},
        ],
    )
    def test_lone_surrogates_in_ids_and_event(self, extra: Dict[str, Any]) -> None:
        """Strings orjson refuses are sent by the standard library, escaped (see mapped())."""
        message = mapped(make_record(properties={"p": 1}, **extra))
        assert message["properties"] == {"p": 1}

    def test_oversized_plain_track_raises_with_its_size(self) -> None:
        """The 32 KB limit holds on the spliced path, with the same reason."""
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u1", properties={"blob": "x" * 40_000}))
        assert captured is not None
        with pytest.raises(MessageTooLarge) as info:
            mapper.prepare(captured)
        assert TOO_LARGE.match(str(info.value))
        described = mapper.describe(captured)
        assert described["properties"] == {"blob": "x" * 40_000}
        assert described["user_id"] == "u1" and described["text"] == "Played a Song"

    def test_a_record_with_other_fields_is_not_a_plain_track(self) -> None:
        """Any other reserved field, a bound identity or capture_extra: the general capture."""
        assert len(RecordMapper().capture(make_record(user_id="u", traits={})) or ()) == 8
        bound = {"user_id": "u"}
        assert len(RecordMapper().capture(make_record(event="E"), bound) or ()) == 8
        mapper = RecordMapper(capture_extra=True)
        assert len(mapper.capture(make_record(user_id="u")) or ()) == 8


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

    def test_oversize_message_raises_with_size(self) -> None:
        """A message over 32 KB raises MessageTooLarge whose reason names its size."""
        message = build_message("track", user_id="u", event="E", properties={"blob": "x" * 41_000})
        size = len(dumps(message).encode("utf-8"))
        with pytest.raises(MessageTooLarge) as caught:
            encode(message)
        error = caught.value
        assert TOO_LARGE.match(error.reason), error.reason
        assert error.reason.startswith(f"message is {size:,} bytes")
        assert error.size == size and isinstance(error, InvalidMessage)

    def test_limit_counts_bytes_not_characters(self) -> None:
        """The 32 KB limit is on UTF-8 bytes: 20,000 two-byte characters are over it."""
        message = build_message("track", user_id="u", event="E", properties={"t": "é" * 20_000})
        with pytest.raises(MessageTooLarge, match=r"message is 40,\d{3} bytes"):
            encode(message)

    def test_limit_is_inclusive(self) -> None:
        """A message of exactly 32,768 bytes is accepted; one byte more is refused."""
        fields = {"user_id": "u", "event": "E", "message_id": "m", "created": 0.0}
        base = len(encode(build_message("track", properties={"p": ""}, **fields)))
        exact = build_message("track", properties={"p": "x" * (MAX_MESSAGE_BYTES - base)}, **fields)
        assert len(encode(exact)) == MAX_MESSAGE_BYTES
        over = build_message(
            "track", properties={"p": "x" * (MAX_MESSAGE_BYTES - base + 1)}, **fields
        )
        with pytest.raises(MessageTooLarge, match="message is 32,769 bytes"):
            encode(over)

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


# --------------------------------------------------------------------------- batches


class TestBatchBody:
    @pytest.mark.parametrize("write_key", ["key", 'k"ey\\ü\u2028', None, ""])
    @pytest.mark.parametrize("count", [0, 1, 7])
    def test_body_is_valid_json(self, write_key: Optional[str], count: int) -> None:
        """The body is {"batch": [...], "sentAt": ..., "writeKey": ...}, writeKey only when set."""
        messages = [build_message("track", user_id=f"u{i}", event="É") for i in range(count)]
        parts = [encode(message) for message in messages]
        sent_at = format_timestamp(CREATED)
        body = json.loads(batch_body(parts, write_key, sent_at))
        expected: Dict[str, Any] = {"batch": [json.loads(p) for p in parts], "sentAt": sent_at}
        if write_key:
            expected["writeKey"] = write_key
        assert body == expected
        assert list(body) == list(expected)

    @pytest.mark.parametrize("write_key", ["key", "w" * 200, 'ü"\\', None])
    @pytest.mark.parametrize("count", [1, 2, 50])
    def test_envelope_size_bounds_the_overhead(self, write_key: Optional[str], count: int) -> None:
        """Body size never exceeds the messages plus one comma each plus envelope_size."""
        parts = [
            encode(build_message("track", user_id="u", event="E" * (i + 1))) for i in range(count)
        ]
        for epoch in (0.0, CREATED, 253_402_300_799.999):
            body = batch_body(parts, write_key, format_timestamp(epoch))
            assert len(body) <= sum(len(p) + 1 for p in parts) + envelope_size(write_key)

    def test_full_batch_stays_under_the_request_limit(self) -> None:
        """Parts filling MAX_BATCH_BYTES - envelope_size (commas counted) make a body <= 500 KB."""
        key = "a-write-key"
        message = build_message("track", user_id="u", event="E", properties={"p": "x" * 30_000})
        part = encode(message)
        room = MAX_BATCH_BYTES - envelope_size(key)
        parts = [part] * (room // (len(part) + 1))
        body = batch_body(parts, key, format_timestamp(CREATED))
        assert len(body) <= MAX_BATCH_BYTES
        assert len(json.loads(body)["batch"]) == len(parts)


# --------------------------------------------------------------------------- properties


class _Thing:
    """An arbitrary object with a stable str()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __str__(self) -> str:
        return f"thing-{self.n}"


_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)),
)
_hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.uuids(),
    st.dates(),
    st.tuples(st.integers(), st.text(max_size=3)),
)
_odd = st.one_of(
    _hashables,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.datetimes(timezones=_offsets),
    st.times(),
    st.timedeltas(),
    st.sets(st.one_of(st.integers(), st.text(max_size=4), st.floats()), max_size=4),
    st.frozensets(st.integers(), max_size=4),
    st.sampled_from([Color.RED, Level.HIGH, Point(1, 2)]),
    st.builds(Hostile),  # built, not sampled: Hypothesis shows sampled values with repr()
    st.builds(BadStr),
    st.integers(0, 5).map(_Thing),
    st.sampled_from(["\ud800", "a\udfffb", "\x00\u2028", "é" * 3]),
)
_values = st.recursive(
    _odd,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(_hashables, children, max_size=3),
    ),
    max_leaves=25,
)
_big = st.integers(0, 40_000).map(lambda n: "x" * n)
_property_sets = st.dictionaries(
    st.one_of(st.text(max_size=8), _hashables), st.one_of(_values, _big), max_size=6
)

_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestProperties:
    @_settings
    @given(
        kind=st.sampled_from(MESSAGE_TYPES),
        properties=_property_sets,
        context=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _values, max_size=3)),
        user_id=st.one_of(st.text(min_size=1, max_size=10), st.integers(), st.uuids()),
    )
    def test_build_and_encode_never_fail_but_for_size(
        self, kind: str, properties: Dict[Any, Any], context: Any, user_id: Any
    ) -> None:
        """Any JSON-like or odd values make valid JSON under 32 KB, or raise MessageTooLarge."""
        message = build_message(
            kind,
            user_id=user_id,
            event="E",
            name="N",
            group_id="g",
            previous_id="p",
            properties=properties,
            traits=properties,
            context=context,
        )
        try:
            data = encode(message)
        except MessageTooLarge as error:
            assert TOO_LARGE.match(error.reason) and error.size > MAX_MESSAGE_BYTES
            return
        assert len(data) <= MAX_MESSAGE_BYTES
        loaded = json.loads(data.decode("utf-8"))
        assert loaded["type"] == kind and loaded["context"]["library"] == LIBRARY
        if kind in ("track", "page", "screen"):
            assert loaded["properties"] == to_json_safe(properties)
        elif kind in ("identify", "group"):
            assert loaded["traits"] == to_json_safe(properties)
        assert data == encode(message)  # deterministic

    @_settings
    @given(value=_values)
    def test_to_json_safe_is_strict_json(self, value: Any) -> None:
        """to_json_safe output passes json.dumps(allow_nan=False) and equals what dumps writes."""
        converted = to_json_safe(value)
        text = json.dumps(converted, allow_nan=False)
        assert json.loads(text) == converted
        assert json.loads(dumps(value)) == converted
        assert to_json_safe(converted) == converted  # already safe: unchanged

    @_settings
    @given(
        extra=st.dictionaries(
            st.sampled_from(["plan", "amount", "tags", "when", "obj", "nested"]),
            _values,
            max_size=4,
        ),
        properties=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _values, max_size=3)),
        msg=st.text(max_size=20),
    )
    def test_records_with_any_extra(
        self, extra: Dict[str, Any], properties: Optional[Dict[str, Any]], msg: str
    ) -> None:
        """Records with arbitrary extra values map and encode, or fail only with a clear reason."""
        record = make_record(msg, user_id="u", properties=properties, **extra)
        mapper = RecordMapper(capture_extra=True)
        captured = mapper.capture(record)
        assert captured is not None
        try:
            message = mapper.build(captured)
            data = encode(message)
        except InvalidMessage as error:  # only an empty message leaves track without an event
            assert msg == "" or isinstance(error, MessageTooLarge), error.reason
            return
        loaded = json.loads(data)
        assert loaded["event"] == msg
        assert loaded["properties"] == to_json_safe({**extra, **(properties or {})})
