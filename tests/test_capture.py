"""Log records to captures and captures to messages (segmentio_logging._capture)."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import uuid
from decimal import Decimal
from typing import Any, Dict, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segmentio_logging import InvalidMessage, MessageTooLarge
from segmentio_logging._capture import RecordMapper
from segmentio_logging._captured import (
    GENERAL,
    GENERAL_ANONYMOUS_ID,
    GENERAL_BOUND,
    GENERAL_COPIES,
    GENERAL_CREATED,
    GENERAL_EXTRA,
    GENERAL_FIELDS,
    GENERAL_TEXT,
    GENERAL_USER_ID,
    KIND,
    TRACK_ANONYMOUS_ID,
    TRACK_CREATED,
    TRACK_EVENT,
    TRACK_NAMED_BY_EVENT,
    TRACK_NAMED_BY_TEXT,
    TRACK_PROPERTIES,
    TRACK_USER_ID,
    Captured,
)
from segmentio_logging._json import to_json_safe
from segmentio_logging._message import build_message, encode
from segmentio_logging._segment import RESERVED_FIELDS

from . import helpers
from .helpers import (
    CREATED,
    CREATED_ISO,
    LIBRARY,
    TOO_LARGE,
    any_values,
    make_record,
    mapped,
    property_settings,
)

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend


def kind_of(captured: Optional[Captured]) -> Any:
    """The KIND of a capture; None for no capture."""
    return None if captured is None else captured[KIND]


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


class TestPlainTrackCapture:
    """The common record (string ids and event, plain properties) is captured compactly
    and, with orjson, sent as JSON spliced on the worker without a dict."""

    def test_captured_as_plain_values(self, json_backend: str) -> None:
        """The capture keeps no reference to the record or to its properties dict."""
        properties = {"song": "A", "tags": ["x"], "n": 1.5}
        record = make_record(user_id="u1", properties=properties)
        captured = RecordMapper().capture(record)
        assert captured is not None and type(captured) is tuple
        assert captured[KIND] == TRACK_NAMED_BY_TEXT
        assert not any(value is properties for value in captured)
        if json_backend == "orjson":
            assert captured[TRACK_PROPERTIES] == json.dumps(properties, separators=(",", ":"))
            gc.collect()  # only strings and a float: the collector stops scanning it
            assert not gc.is_tracked(captured)
        else:
            assert captured[TRACK_PROPERTIES] == properties

    @pytest.mark.xfail(
        strict=True,
        reason="capture() counts attributes: one of LogRecord's own missing makes room for a field",
    )
    def test_a_record_without_one_of_logrecords_own_attributes_is_still_read(self) -> None:
        """A record that lacks one of the attributes LogRecord sets (pickled under an older
        Python, as 3.11's records have no ``taskName``, or one a filter deleted) still has
        its other fields read: ``traits`` without an event make an identify, not a track."""
        record = make_record("Signed up", user_id="u1", traits={"plan": "pro"})
        assert mapped(record)["type"] == "identify"
        del record.stack_info
        assert mapped(record)["type"] == "identify"

    def test_fields_a_record_factory_adds_are_read(self) -> None:
        """A field set by a custom record factory on every record (here ``context`` and
        ``traits``) is read as the same field given in ``extra``: the record is longer than
        LogRecord's own attributes plus the plain track's, so its names are looked at."""
        default = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = default(*args, **kwargs)
            record.context = {"app": {"name": "shop"}}
            return record

        logging.setLogRecordFactory(factory)
        try:
            record = make_record(user_id="u1", properties={"a": 1})
        finally:
            logging.setLogRecordFactory(default)
        assert mapped(record)["context"]["app"] == {"name": "shop"}
        del record.context
        record.traits = {"plan": "pro"}  # added after the record was made, as a filter may
        assert mapped(record)["type"] == "identify"

    def test_a_record_another_handler_formatted_first_is_the_same_track(self) -> None:
        """A Formatter that ran first adds ``message`` and ``asctime``: the record still
        becomes the plain track it was, and a field among them is still read."""
        record = make_record(user_id="u1", properties={"a": 1})
        before = mapped(record)
        logging.Formatter("%(asctime)s %(message)s").format(record)
        assert "message" in record.__dict__ and "asctime" in record.__dict__
        after = mapped(record)
        assert after.pop("messageId") != before.pop("messageId")  # each message its own
        assert after == before
        record.integrations = {"All": False}
        assert mapped(record)["integrations"] == {"All": False}

    def test_encode_gives_only_bytes(self) -> None:
        """No dict for the worker to keep; the bytes hold the message, keys in order."""
        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u1", properties={"a": [1, 2]}))
        assert captured is not None
        message, data = mapper.encode(captured)
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
        sent = json.loads(RecordMapper().encode(RecordMapper().capture(record))[1])  # type: ignore[arg-type]
        assert sent["properties"] == {"creds": {"password": "***"}, "order": [2, 1]}

    def test_unreadable_properties_are_reported_at_encode(self) -> None:
        """Properties whose items() raises are kept at capture, and refused on the worker with
        the reason a client call gives."""

        class Unreadable(dict):  # type: ignore[type-arg]
            def items(self) -> Any:
                raise RuntimeError("no items")

        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id="u1", properties=Unreadable(a=[1])))
        assert captured is not None
        with pytest.raises(InvalidMessage) as caught:
            mapper.encode(captured)
        assert caught.value.reason == "properties could not be read: RuntimeError: no items"

    def test_encode_raises_nothing_but_invalid_message(self) -> None:
        """Whatever a value raises as the message is built becomes an InvalidMessage, the error
        as its cause: the worker reports it and goes on."""

        class NoClass:
            @property  # type: ignore[misc]
            def __class__(self) -> Any:
                raise RuntimeError("no class")

        mapper = RecordMapper()
        captured = mapper.capture(make_record(user_id=NoClass()))
        assert captured is not None
        with pytest.raises(
            InvalidMessage, match=r"^could not build the message: RuntimeError"
        ) as caught:
            mapper.encode(captured)
        assert isinstance(caught.value.__cause__, RuntimeError)

    def test_nesting_is_cut_at_the_same_depth(self) -> None:
        """Deeper than 64 becomes "<too deep>" on every path, orjson's own limit aside."""
        nested: Any = "leaf"
        for _ in range(70):
            nested = {"k": nested}
        record = make_record(user_id="u1", properties={"deep": nested})
        data = RecordMapper().encode(RecordMapper().capture(record))[1]  # type: ignore[arg-type]
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
        assert captured[KIND] == (GENERAL if json_backend == "orjson" else TRACK_NAMED_BY_TEXT)
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
            mapper.encode(captured)
        assert TOO_LARGE.match(str(info.value))
        described = mapper.describe(captured)
        assert described["properties"] == {"blob": "x" * 40_000}
        assert described["user_id"] == "u1" and described["text"] == "Played a Song"

    def test_a_record_with_other_fields_is_not_a_plain_track(self) -> None:
        """Any other reserved field, a bound identity or capture_extra: the general capture."""
        assert kind_of(RecordMapper().capture(make_record(user_id="u", traits={}))) == GENERAL
        bound = {"user_id": "u"}
        assert kind_of(RecordMapper().capture(make_record(event="E"), bound)) == GENERAL
        mapper = RecordMapper(capture_extra=True)
        assert kind_of(mapper.capture(make_record(user_id="u"))) == GENERAL

    def test_fields_are_where_their_names_say(self) -> None:
        """KIND, TRACK_* and GENERAL_* name the places of a capture's fields."""
        record = make_record(user_id="u1", anonymous_id="a1", event="E", properties={"p": 1})
        track = RecordMapper().capture(record)
        assert track is not None and track[KIND] == TRACK_NAMED_BY_EVENT
        assert (track[TRACK_USER_ID], track[TRACK_ANONYMOUS_ID]) == ("u1", "a1")
        assert (track[TRACK_EVENT], track[TRACK_CREATED]) == ("E", CREATED)
        properties = track[TRACK_PROPERTIES]
        assert (json.loads(properties) if isinstance(properties, str) else properties) == {"p": 1}
        bound = {"user_id": "u2", "context": {"ip": "10.0.0.1"}}
        record = make_record("Bought %d", 2, anonymous_id="a2", traits={"plan": "pro"}, seats=3)
        general = RecordMapper(capture_extra=True).capture(record, bound)
        assert general is not None and general[KIND] == GENERAL
        assert general[GENERAL_FIELDS] is record.__dict__
        assert (general[GENERAL_USER_ID], general[GENERAL_ANONYMOUS_ID]) == ("u2", "a2")
        assert general[GENERAL_COPIES] == {"traits": {"plan": "pro"}}
        assert (general[GENERAL_TEXT], general[GENERAL_EXTRA]) == ("Bought 2", {"seats": 3})
        assert (general[GENERAL_BOUND], general[GENERAL_CREATED]) == (bound, CREATED)


class TestProperties:
    @property_settings
    @given(
        extra=st.dictionaries(
            st.sampled_from(["plan", "amount", "tags", "when", "obj", "nested"]),
            any_values,
            max_size=4,
        ),
        properties=st.one_of(
            st.none(), st.dictionaries(st.text(max_size=5), any_values, max_size=3)
        ),
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
