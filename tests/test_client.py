"""The classic client interface: Client, its calls, validation and separate pipelines."""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import segmentio_logging
from segmentio_logging import Client, InvalidMessage, MessageTooLarge
from segmentio_logging.testing import LocalCollector

from .helpers import Recorder

CALLS = ("identify", "track", "group", "alias", "page", "screen")


@pytest.fixture
def make_client(collector: LocalCollector) -> Iterator[Any]:
    """Build Clients pointed at the collector; all are shut down after the test."""
    made: List[Client] = []

    def make(write_key: str = "test-key", **options: Any) -> Client:
        options.setdefault("host", collector.url)
        options.setdefault("flush_interval", 0.05)
        client = Client(write_key, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2)


def assert_common_shape(message: Dict[str, Any]) -> None:
    assert isinstance(message["messageId"], str) and 0 < len(message["messageId"]) <= 100
    assert message["timestamp"].endswith("Z")
    assert message["context"]["library"]["name"] == "segmentio-logging"
    assert message["context"]["library"]["version"] == segmentio_logging.__version__


class TestCalls:
    def test_identify_with_keywords(self, make_client: Any, collector: LocalCollector) -> None:
        """identify(user_id=, traits=, context=, integrations=) maps to Segment's fields."""
        client = make_client()
        client.identify(
            user_id="u1",
            traits={"plan": "Pro"},
            context={"ip": "1.2.3.4"},
            integrations={"All": False},
        )
        assert client.flush(5)
        [message] = collector.messages
        assert_common_shape(message)
        assert message["type"] == "identify"
        assert message["userId"] == "u1"
        assert "anonymousId" not in message
        assert message["traits"] == {"plan": "Pro"}
        assert message["context"]["ip"] == "1.2.3.4"
        assert message["integrations"] == {"All": False}

    def test_track_with_keywords(self, make_client: Any, collector: LocalCollector) -> None:
        """track(anonymous_id=, event=, properties=, message_id=) maps to Segment's fields."""
        client = make_client()
        returned = client.track(
            anonymous_id="a1", event="Signed Up", properties={"n": 1}, message_id="m-1"
        )
        assert client.flush(5)
        [message] = collector.messages
        assert_common_shape(message)
        assert returned == message["messageId"] == "m-1"
        assert message["type"] == "track"
        assert message["anonymousId"] == "a1"
        assert message["event"] == "Signed Up"
        assert message["properties"] == {"n": 1}

    def test_group_with_keywords(self, make_client: Any, collector: LocalCollector) -> None:
        """group(user_id=, group_id=, traits=) maps to Segment's fields."""
        client = make_client()
        client.group(user_id="u1", group_id=42, traits={"name": "Initech"})
        assert client.flush(5)
        [message] = collector.messages
        assert_common_shape(message)
        assert message["type"] == "group"
        assert message["groupId"] == "42"
        assert message["traits"] == {"name": "Initech"}

    def test_alias_with_keywords(self, make_client: Any, collector: LocalCollector) -> None:
        """alias(previous_id=, user_id=) maps to Segment's previousId and userId."""
        client = make_client()
        client.alias(previous_id="anon-1", user_id="u1")
        assert client.flush(5)
        [message] = collector.messages
        assert_common_shape(message)
        assert message["type"] == "alias"
        assert (message["previousId"], message["userId"]) == ("anon-1", "u1")

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_page_and_screen_with_keywords(
        self, kind: str, make_client: Any, collector: LocalCollector
    ) -> None:
        """page/screen(user_id=, category=, name=, properties=) map to Segment's fields."""
        client = make_client()
        getattr(client, kind)(user_id="u1", category="Docs", name="Install", properties={"p": 1})
        assert client.flush(5)
        [message] = collector.messages
        assert_common_shape(message)
        assert message["type"] == kind
        assert (message["category"], message["name"]) == ("Docs", "Install")
        assert message["properties"] == {"p": 1}

    @pytest.mark.parametrize(
        ("kind", "args"),
        [
            ("identify", ("sid", None, {"a": 1})),
            ("track", ("sid", None, "Ev", {"a": 1})),
            ("group", ("sid", None, "g1", {"a": 1})),
            ("page", ("sid", None, "Cat", "Name", {"a": 1})),
            ("screen", ("sid", None, "Cat", "Name", {"a": 1})),
        ],
    )
    def test_the_seed_session_id_is_the_anonymous_id(
        self, kind: str, args: Tuple[Any, ...], make_client: Any, collector: LocalCollector
    ) -> None:
        """A positional session_id (the seed's name) becomes anonymousId."""
        client = make_client()
        getattr(client, kind)(*args)
        assert client.flush(5)
        [message] = collector.messages
        assert message["anonymousId"] == "sid"
        assert "userId" not in message

    def test_properties_are_copied_at_call_time(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """Mutating a properties dict after track does not change what is sent."""
        client = make_client()
        properties = {"items": [1, 2]}
        client.track(user_id="u", event="E", properties=properties)
        properties["items"].append(3)
        properties["late"] = True
        assert client.flush(5)
        assert collector.messages[0]["properties"] == {"items": [1, 2]}

    @pytest.mark.parametrize(
        ("timestamp", "expected"),
        [
            (dt.datetime(2014, 3, 1, 12, 30, tzinfo=dt.timezone.utc), "2014-03-01T12:30:00.000Z"),
            ("2014-03-01T13:30:00+01:00", "2014-03-01T12:30:00.000Z"),
            (1393677000, "2014-03-01T12:30:00.000Z"),
        ],
    )
    def test_a_historical_timestamp_is_kept(
        self, timestamp: Any, expected: str, make_client: Any, collector: LocalCollector
    ) -> None:
        """timestamp= (datetime, ISO string or epoch seconds) is sent as given, in UTC."""
        client = make_client()
        client.track(user_id="u", event="Imported", timestamp=timestamp)
        assert client.flush(5)
        assert collector.messages[0]["timestamp"] == expected


class TestValidation:
    @pytest.mark.parametrize(
        ("kind", "kwargs", "fragment"),
        [
            ("identify", {"traits": {"a": 1}}, "user_id or an anonymous_id"),
            ("track", {"user_id": "u"}, "event name"),
            ("group", {"user_id": "u"}, "group_id"),
            ("alias", {"user_id": "u"}, "previous_id"),
            ("identify", {"user_id": "u", "traits": ["not", "a", "dict"]}, "traits must be a dict"),
            ("track", {"user_id": {"id": 1}, "event": "E"}, "user_id must be"),
            ("track", {"user_id": "u", "event": "E", "timestamp": "yesterday"}, "ISO-8601"),
            ("track", {"user_id": "u", "event": "E", "message_id": "x" * 101}, "message_id"),
            ("track", {"session_id": "s1", "anonymous_id": "a1", "event": "E"}, "session_id"),
        ],
    )
    def test_an_invalid_call_raises_value_error(
        self, kind: str, kwargs: Dict[str, Any], fragment: str, make_client: Any
    ) -> None:
        """A call Segment would reject raises ValueError on the caller's thread, saying why;
        it is queued nowhere, counted as dropped and reported to on_failure, as a log
        record would be."""
        failures = Recorder()
        client = make_client(on_failure=failures)
        with pytest.raises(ValueError, match=fragment) as raised:
            getattr(client, kind)(**kwargs)
        stats = client.stats()
        assert (stats["enqueued"], stats["dropped"], stats["pending"]) == (1, 1, 0)
        [(data, error)] = failures.calls
        assert error is raised.value
        assert data == [{"type": kind, **kwargs}]

    def test_a_value_that_raises_as_it_is_read_is_an_invalid_message(
        self, make_client: Any
    ) -> None:
        """An id whose __eq__ raises, traits whose items() raises an error whose str() raises
        too: InvalidMessage, never what they raised, counted and reported."""

        class Unspeakable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no text")

        class NoEq:
            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no eq")

            __ne__ = __eq__  # type: ignore[assignment]
            __hash__ = object.__hash__

        class NoItems(dict):  # type: ignore[type-arg]
            def items(self) -> Any:
                raise Unspeakable()

        failures = Recorder()
        client = make_client(on_failure=failures)
        with pytest.raises(InvalidMessage, match=r"^could not build the message: RuntimeError"):
            client.track(session_id=NoEq(), anonymous_id="a1", event="E")
        with pytest.raises(InvalidMessage) as raised:
            client.identify(user_id="u1", traits=NoItems(a=1))
        assert raised.value.reason == "traits could not be read: Unspeakable: Unspeakable()"
        assert isinstance(raised.value.__cause__, Unspeakable)
        assert client.stats()["dropped"] == 2
        assert [type(error) for _, error in failures.calls] == [InvalidMessage] * 2

    def test_session_id_and_the_same_anonymous_id_are_accepted(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """Both spellings with one value are not a conflict."""
        client = make_client()
        client.track(session_id="s1", anonymous_id="s1", event="E")
        assert client.flush(5)
        assert collector.messages[0]["anonymousId"] == "s1"

    def test_an_oversize_message_is_reported_not_raised(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """A message over 32 KB goes to on_failure with its size and is counted as dropped."""
        failures = Recorder()
        client = make_client(on_failure=failures)
        returned = client.track(user_id="u", event="Huge", properties={"blob": "x" * 40_000})
        client.track(user_id="u", event="Small")
        assert returned is None
        assert client.flush(5)
        [(data, error)] = failures.calls
        assert isinstance(error, MessageTooLarge)
        assert error.size > 32 * 1024
        assert "32 KB" in error.reason
        assert data[0]["event"] == "Huge"
        assert [m["event"] for m in collector.messages] == ["Small"]
        stats = client.stats()
        assert (stats["dropped"], stats["delivered"]) == (1, 1)


class TestClients:
    def test_clients_are_separate_pipelines(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """Two clients send with their own write keys; closing one leaves the other open."""
        first = make_client("key-one")
        second = make_client("key-two")
        first.track(user_id="u", event="One")
        second.track(user_id="u", event="Two")
        assert first.flush(5) and second.flush(5)
        by_key = {r.write_key: [m["event"] for m in r.messages] for r in collector.requests}
        assert by_key == {"key-one": ["One"], "key-two": ["Two"]}
        first.shutdown(timeout=2)
        assert second.track(user_id="u", event="Still open") is not None
        assert first.track(user_id="u", event="After close") is None
        assert second.flush(5)
        assert collector.messages[-1]["event"] == "Still open"
        assert first.stats()["dropped"] == 1
        assert second.stats()["delivered"] == 2

    def test_a_call_after_shutdown_reaches_on_failure_as_its_message(
        self, make_client: Any
    ) -> None:
        """on_failure gets the message dict of a call made after shutdown."""
        failures: List[Any] = []
        client = make_client(on_failure=lambda data, error: failures.append((data, error)))
        client.shutdown(timeout=2)
        assert client.track(user_id="u", event="Late") is None
        [(data, error)] = failures
        assert type(error).__name__ == "ClosedError"
        assert [m["event"] for m in data] == ["Late"]

    def test_shutdown_is_idempotent(self, make_client: Any, collector: LocalCollector) -> None:
        """shutdown delivers what is queued and may be called twice."""
        client = make_client(flush_interval=30)
        client.track(user_id="u", event="E")
        assert client.shutdown(timeout=5) is True
        assert client.shutdown(timeout=5) is True
        assert [m["event"] for m in collector.messages] == ["E"]
