"""Segment messages, their ids and size limits, batch bodies (segmentio_logging._message)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segmentio_logging import InvalidMessage, MessageTooLarge
from segmentio_logging._json import dumps, to_json_safe
from segmentio_logging._message import build_message, encode
from segmentio_logging._segment import MAX_MESSAGE_BYTES, MESSAGE_TYPES

from . import helpers
from .helpers import (
    CREATED,
    CREATED_ISO,
    ISO_UTC,
    LIBRARY,
    TOO_LARGE,
    Color,
    any_values,
    property_sets,
    property_settings,
)

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend


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

    def test_a_mapping_that_cannot_be_read_is_invalid(self) -> None:
        """A mapping whose iteration raises, as properties: InvalidMessage naming the field,
        the error as its cause."""
        from collections.abc import Mapping

        class Unreadable(Mapping):  # type: ignore[type-arg]
            def __getitem__(self, key: Any) -> Any:
                raise KeyError(key)

            def __iter__(self) -> Any:
                raise RuntimeError("no iteration")

            def __len__(self) -> int:
                return 1

        with pytest.raises(InvalidMessage) as caught:
            build_message("track", user_id="u", event="E", properties=Unreadable())
        assert caught.value.reason == "properties could not be read: RuntimeError: no iteration"
        assert isinstance(caught.value.__cause__, RuntimeError)

    def test_a_dict_subclass_is_read_through_its_items(self) -> None:
        """A dict subclass becomes what its own items() gives; an items() that raises makes the
        message invalid."""

        class Renamed(dict):  # type: ignore[type-arg]
            def items(self) -> Any:
                return [("renamed", 1)]

        class Unreadable(dict):  # type: ignore[type-arg]
            def items(self) -> Any:
                raise RuntimeError("no items")

        message = build_message("identify", user_id="u", traits=Renamed(a=1))
        assert message["traits"] == {"renamed": 1}
        with pytest.raises(InvalidMessage, match=r"^traits could not be read: RuntimeError"):
            build_message("identify", user_id="u", traits=Unreadable(a=1))

    def test_strings_are_read_as_the_text_they_hold(self) -> None:
        """Ids, event names and message ids that are str subclasses are read as their text,
        not through their own methods, which may raise."""

        class Sly(str):
            def __str__(self) -> str:
                raise RuntimeError("no str")

            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no eq")

            def __len__(self) -> int:
                raise RuntimeError("no len")

            __hash__ = str.__hash__

        message = build_message(
            "track", user_id=Sly("u1"), event=Sly("E"), message_id=Sly("m-1"), properties={}
        )
        assert (message["userId"], message["event"], message["messageId"]) == ("u1", "E", "m-1")
        assert all(type(message[key]) is str for key in ("userId", "event", "messageId"))
        with pytest.raises(InvalidMessage, match="track needs an event name"):
            build_message("track", user_id="u1", event=Sly(""))

    def test_the_type_is_read_as_the_text_it_holds(self) -> None:
        """segment_type is compared as its text; an object that is not a string is refused,
        whatever its __eq__ says."""

        class Sly(str):
            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no eq")

            __hash__ = str.__hash__

        class Track:
            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no eq")

            __hash__ = object.__hash__

        assert build_message(Sly("track"), user_id="u", event="E")["type"] == "track"
        with pytest.raises(InvalidMessage, match="segment_type must be one of"):
            build_message(Track(), user_id="u", event="E")  # type: ignore[arg-type]

    def test_properties_mapping_is_accepted(self) -> None:
        """Any Mapping works as properties; it becomes a plain dict."""
        from types import MappingProxyType

        message = build_message(
            "track", user_id="u", event="E", properties=MappingProxyType({"a": 1})
        )
        assert message["properties"] == {"a": 1} and type(message["properties"]) is dict


class TestEncodeLimit:
    """encode() holds messages to Segment's 32 KB limit."""

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


class TestProperties:
    @property_settings
    @given(
        kind=st.sampled_from(MESSAGE_TYPES),
        properties=property_sets,
        context=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), any_values, max_size=3)),
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
