"""The drop-in for segment-analytics-python: module settings, calls, Client, on_error."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import logging.handlers
import os
import re
import warnings
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import segmentio_logging
import segmentio_logging.analytics as analytics
from segmentio_logging import (
    ClosedError,
    DeliveryError,
    InvalidMessage,
    MessageTooLarge,
    QueueFull,
    _analytics_settings,
)
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import (
    ProxyServer,
    Recorder,
    clean_network_environment,
    closed_url,
    section_code,
)

CALLS = ("identify", "track", "group", "alias", "page", "screen")
# The official module's settings and their values before anything is set: None is unset.
SETTINGS: Dict[str, Any] = {
    "write_key": None,
    "host": None,
    "on_error": None,
    "debug": False,
    "log_handler": None,
    "send": None,
    "sync_mode": None,
    "max_queue_size": None,
    "gzip": None,
    "timeout": None,
    "max_retries": None,
    "upload_size": None,
    "upload_interval": None,
    "proxies": None,
    "oauth_client_id": None,
    "oauth_client_key": None,
    "oauth_key_id": None,
    "oauth_auth_server": None,
    "oauth_scope": None,
}
# As imported, before any test set one.
IMPORTED = {name: getattr(analytics, name) for name in SETTINGS}
OLD_TIMESTAMP = "2014-09-03T00:00:00.000Z"


@pytest.fixture(autouse=True)
def _fresh_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with every setting unset, no default client, no SEGMENT_* variable
    and no warning given yet; the default client a test built is shut down after it."""
    for name in list(os.environ):
        if name.startswith("SEGMENT_"):
            monkeypatch.delenv(name)
    for name, value in SETTINGS.items():
        monkeypatch.setattr(analytics, name, value)
    monkeypatch.setattr(_analytics_settings, "_warned", set())
    monkeypatch.setattr(analytics, "default_client", None)
    yield
    client = analytics.default_client
    if client is not None:
        client.shutdown(timeout=2)


@pytest.fixture
def segment_env(collector: LocalCollector, monkeypatch: pytest.MonkeyPatch) -> LocalCollector:
    """The collector as SEGMENT_HOST, and a short batching wait, as a deployment would set."""
    monkeypatch.setenv("SEGMENT_HOST", collector.url)
    monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "0.05")
    return collector


@pytest.fixture
def make_client(collector: LocalCollector) -> Iterator[Any]:
    """Build analytics.Clients pointed at the collector; all are shut down after the test."""
    made: List[analytics.Client] = []

    def make(write_key: str = "test-key", **options: Any) -> analytics.Client:
        options.setdefault("host", collector.url)
        options.setdefault("upload_interval", 0.05)
        client = analytics.Client(write_key, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2)


def assert_ours(message: Dict[str, Any]) -> None:
    """The fields every message gets here: an id, a UTC timestamp, this library."""
    assert isinstance(message["messageId"], str) and 0 < len(message["messageId"]) <= 100
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["timestamp"])
    assert message["context"]["library"] == {
        "name": "segmentio-logging",
        "version": segmentio_logging.__version__,
    }


def parse(timestamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


class TestOfficialReadme:
    """The examples of the official README and of the documentation it links to, run as
    printed apart from the import line (the host comes from SEGMENT_HOST)."""

    def test_getting_started(self, segment_env: LocalCollector) -> None:
        """Setting write_key is all the set-up; the first call builds the client from it."""
        analytics.write_key = "YOUR_WRITE_KEY"

        success, message = analytics.track("f4ca124298", "Signed Up", {"plan": "Enterprise"})
        analytics.flush()

        assert success is True
        [sent] = segment_env.messages
        assert sent == message
        assert sent["type"] == "track"
        assert sent["userId"] == "f4ca124298"
        assert sent["event"] == "Signed Up"
        assert sent["properties"] == {"plan": "Enterprise"}
        assert_ours(sent)
        assert segment_env.requests[0].write_key == "YOUR_WRITE_KEY"

    def test_the_readme_track_example_fails_as_it_does_there(
        self, segment_env: LocalCollector
    ) -> None:
        """The README's analytics.track('Order Completed', {...}) passes the properties as
        the event name: refused with AssertionError, as the official client refuses it."""
        analytics.write_key = "YOUR_WRITE_KEY"
        with pytest.raises(AssertionError, match="event must be a string"):
            analytics.track("Order Completed", {"price": 99.84})  # type: ignore[arg-type]
        assert analytics.flush(timeout=5) is True
        assert segment_env.requests == []

    def test_identify_track_page_screen_group(self, segment_env: LocalCollector) -> None:
        """The documented example of each call, field by field."""
        analytics.write_key = "YOUR_WRITE_KEY"

        analytics.identify("019mr8mf4r", {
            "email": "john@example.com",
            "name": "John Smith",
            "friends": 30,
        })  # fmt: skip
        analytics.track("f4ca124298", "Article Bookmarked", {
            "title": "Snow Fall",
            "subtitle": "The Avalance at Tunnel Creek",
            "author": "John Branch",
        })  # fmt: skip
        analytics.page("user_id", "Docs", "Python", {"url": "http://segment.com"})
        analytics.screen("user_id", "Settings", "Brightness", {"from": "Home Screen"})
        analytics.group("user_id", "group_id", {"name": "Initech", "domain": "Accounting Software"})
        analytics.flush()

        identify, track, page, screen, group = segment_env.messages
        assert identify["type"] == "identify" and identify["userId"] == "019mr8mf4r"
        assert identify["traits"] == {
            "email": "john@example.com",
            "name": "John Smith",
            "friends": 30,
        }
        assert track["type"] == "track" and track["event"] == "Article Bookmarked"
        assert track["properties"]["author"] == "John Branch"
        for view, category, name, properties in (
            (page, "Docs", "Python", {"url": "http://segment.com"}),
            (screen, "Settings", "Brightness", {"from": "Home Screen"}),
        ):
            assert view["userId"] == "user_id"
            assert (view["category"], view["name"]) == (category, name)
            assert view["properties"] == properties
        assert (page["type"], screen["type"]) == ("page", "screen")
        assert group["type"] == "group" and group["groupId"] == "group_id"
        assert group["traits"] == {"name": "Initech", "domain": "Accounting Software"}
        for message in segment_env.messages:
            assert_ours(message)

    def test_the_alias_walkthrough(self, segment_env: LocalCollector) -> None:
        """Anonymous event, alias, identify, identified event ({plan: 'Free'} as a dict)."""
        analytics.write_key = "YOUR_WRITE_KEY"

        analytics.track("92734232-2342423423-973945", "Anonymous Event")
        analytics.alias("92734232-2342423423-973945", "1234")
        analytics.identify("1234", {"plan": "Free"})
        analytics.track("1234", "Identified Action")
        analytics.flush()

        anonymous, alias, identify, identified = segment_env.messages
        assert anonymous["userId"] == "92734232-2342423423-973945"
        assert alias["type"] == "alias"
        assert (alias["previousId"], alias["userId"]) == ("92734232-2342423423-973945", "1234")
        assert identify["traits"] == {"plan": "Free"}
        assert (identified["userId"], identified["event"]) == ("1234", "Identified Action")

    def test_historical_import(self, segment_env: LocalCollector) -> None:
        """An aware timestamp (dateutil's tzutc) is the message's time, in UTC."""
        tz = pytest.importorskip("dateutil.tz")
        analytics.write_key = "YOUR_WRITE_KEY"

        timestamp = dt.datetime(2538, 10, 17, 0, 0, 0, 0, tzinfo=tz.tzutc())
        analytics.track("019mr8mf4r", "Bought a game", {
            "game": "Duke Nukem forever"
        }, timestamp=timestamp)  # fmt: skip
        analytics.flush()

        [sent] = segment_env.messages
        assert sent["timestamp"] == "2538-10-17T00:00:00.000Z"
        assert sent["properties"] == {"game": "Duke Nukem forever"}

    def test_server_logs_example(self, segment_env: LocalCollector) -> None:
        """Timestamps parsed from a log with an offset arrive as UTC."""
        parser = pytest.importorskip("dateutil.parser")
        analytics.write_key = "YOUR_WRITE_KEY"

        log = ["2012-10-17T18:58:57.911Z 019mr8mf4r /purchased/tshirt"]
        for entry in log:
            timestamp_str, user_id, url = entry.split(" ")  # noqa: RUF059 - as documented
            timestamp = parser.parse(timestamp_str)  # resulting datetime.datetime object is aware
            # have a timezone? check yo'self
            assert (
                timestamp.tzinfo is not None and timestamp.tzinfo.utcoffset(timestamp) is not None
            )
            analytics.track(user_id, "Shirt Bought", {
                "color": "Blue",
                "revenue": 17.90
            }, timestamp=timestamp)  # fmt: skip
        analytics.flush()

        [sent] = segment_env.messages
        assert sent["timestamp"] == "2012-10-17T18:58:57.911Z"
        assert sent["properties"] == {"color": "Blue", "revenue": 17.90}

    def test_selecting_destinations_and_context(self, segment_env: LocalCollector) -> None:
        """integrations= and context= (ip, userAgent) by keyword, as documented."""
        analytics.write_key = "YOUR_WRITE_KEY"

        analytics.track("9742", "Song Played", integrations={
            "all": False,
            "Kissmetrics": True,
            "Google Analytics": False
        })  # fmt: skip
        analytics.track("9742", "Song Played", context={
            "ip": 1234,
            "userAgent": "Mozilla/5.0 (Linux; U; Android 4.1.1; en-gb; Build/KLP)"
        })  # fmt: skip
        analytics.flush()

        destinations, context = segment_env.messages
        assert destinations["integrations"] == {
            "all": False,
            "Kissmetrics": True,
            "Google Analytics": False,
        }
        assert context["context"]["ip"] == 1234
        assert context["context"]["userAgent"].startswith("Mozilla/5.0")
        assert context["context"]["library"]["name"] == "segmentio-logging"

    def test_development_settings(
        self, segment_env: LocalCollector, caplog: pytest.LogCaptureFixture
    ) -> None:
        """debug logs each queued call on the 'segment' logger; on_error(error, items)
        hears of a refused batch."""
        errors: List[Any] = []

        def on_error(error: Exception, items: List[Dict[str, Any]]) -> None:
            errors.append((error, items))

        analytics.write_key = "YOUR_WRITE_KEY"
        analytics.debug = True
        analytics.on_error = on_error
        segment_env.script(Reply(400, '{"code":"invalid_request","message":"bad"}'))

        with caplog.at_level(logging.DEBUG, logger="segment"):
            analytics.track("u1", "Signed Up")
            analytics.flush()

        assert [r.name for r in caplog.records] == ["segment"]
        assert "queued track" in caplog.records[0].getMessage()
        [(error, items)] = errors
        assert isinstance(error, analytics.APIError) and isinstance(error, DeliveryError)
        assert (error.status, error.code, error.message) == (400, "invalid_request", "bad")
        assert [item["event"] for item in items] == ["Signed Up"]

    def test_send_false_in_tests(self, segment_env: LocalCollector) -> None:
        """With send = False calls succeed and nothing leaves (no write key needed here)."""
        analytics.send = False

        success, message = analytics.identify("u1", {"plan": "Free"})
        assert analytics.flush(timeout=5) is True

        assert success is True and message["traits"] == {"plan": "Free"}
        assert segment_env.requests == []

    def test_client_options_and_gzip(self, segment_env: LocalCollector) -> None:
        """Client('YOUR_WRITE_KEY', gzip=True) and the documented option set."""

        def on_error(error: Exception, items: List[Dict[str, Any]]) -> None:
            raise AssertionError(error)

        clients = [
            analytics.Client("YOUR_WRITE_KEY", gzip=True),
            analytics.Client("YOUR_WRITE_KEY", debug=True, on_error=on_error, send=True,
                             max_queue_size=100000, upload_interval=5, upload_size=500,
                             gzip=True),
        ]  # fmt: skip
        try:
            for number, client in enumerate(clients):
                client.track("u1", "Signed Up", {"n": number})
                assert client.flush(timeout=5) is True
        finally:
            for client in clients:
                client.shutdown(timeout=2)

        assert [m["properties"]["n"] for m in segment_env.messages] == [0, 1]
        assert [r.headers.get("content-encoding") for r in segment_env.requests] == ["gzip"] * 2

    def test_sync_mode(self, segment_env: LocalCollector) -> None:
        """sync_mode = True: the call returns once the receiver has the message."""
        analytics.write_key = "YOUR_WRITE_KEY"
        analytics.sync_mode = True

        success, message = analytics.track("u1", "Signed Up")

        assert success is True
        assert segment_env.messages == [message]


class TestDocumentation:
    def test_the_switch_example_runs(self, segment_env: LocalCollector) -> None:
        """The first python block of "Coming from segment-analytics-python" runs as printed."""
        page, code = section_code("Coming from segment-analytics-python")
        exec(compile(code, str(page), "exec"), {"__name__": "readme_analytics"})
        analytics.flush()

        kinds = [m["type"] for m in segment_env.messages]
        assert kinds == ["identify", "track"]
        assert all(r.write_key == "YOUR_WRITE_KEY" for r in segment_env.requests)


# The official client's positional order, every argument given: (call, args, expected fields).
FULL_CALLS = [
    (
        "identify",
        ("userId", {"trait": "value"}, {"ip": "192.168.0.1"}, dt.datetime(2014, 9, 3),
         "anonymousId", {"Amplitude": True}, "messageId"),
        {"traits": {"trait": "value"}, "anonymousId": "anonymousId", "userId": "userId"},
    ),
    (
        "track",
        ("userId", "python test event", {"property": "value"}, {"ip": "192.168.0.1"},
         dt.datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId"),
        {"event": "python test event", "properties": {"property": "value"},
         "anonymousId": "anonymousId", "userId": "userId"},
    ),
    (
        "group",
        ("userId", "groupId", {"trait": "value"}, {"ip": "192.168.0.1"},
         dt.datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId"),
        {"groupId": "groupId", "traits": {"trait": "value"}, "anonymousId": "anonymousId"},
    ),
    (
        "alias",
        ("previousId", "userId", {"ip": "192.168.0.1"}, dt.datetime(2014, 9, 3),
         {"Amplitude": True}, "messageId"),
        {"previousId": "previousId", "userId": "userId"},
    ),
    (
        "page",
        ("userId", "category", "name", {"property": "value"}, {"ip": "192.168.0.1"},
         dt.datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId"),
        {"category": "category", "name": "name", "properties": {"property": "value"}},
    ),
    (
        "screen",
        ("userId", "category", "name", {"property": "value"}, {"ip": "192.168.0.1"},
         dt.datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId"),
        {"category": "category", "name": "name", "properties": {"property": "value"}},
    ),
]  # fmt: skip


class TestCalls:
    @pytest.mark.parametrize(("kind", "args", "expected"), FULL_CALLS, ids=CALLS)
    def test_every_argument_in_the_official_order(
        self, make_client: Any, collector: LocalCollector, kind: str, args: Any, expected: Any
    ) -> None:
        """Positional arguments land in the official fields; (True, message) is what is sent."""
        client = make_client()
        success, message = getattr(client, kind)(*args)
        assert client.flush(timeout=5) is True

        assert success is True
        [sent] = collector.messages
        assert sent == message
        assert sent["type"] == kind
        for field, value in expected.items():
            assert sent[field] == value, field
        assert sent["context"]["ip"] == "192.168.0.1"
        assert sent["integrations"] == {"Amplitude": True}
        assert sent["timestamp"] == OLD_TIMESTAMP  # naive and long past: UTC
        assert sent["messageId"] == "messageId"

    @pytest.mark.parametrize(("kind", "args", "expected"), FULL_CALLS, ids=CALLS)
    def test_keywords_give_the_same_message(
        self, make_client: Any, kind: str, args: Any, expected: Any
    ) -> None:
        """Each argument by its official keyword builds the same message as by position."""
        client = make_client(send=False)
        names = list(inspect.signature(getattr(analytics.Client, kind)).parameters)[1:]
        _, by_position = getattr(client, kind)(*args)
        _, by_keyword = getattr(client, kind)(**dict(zip(names, args)))
        assert by_keyword == by_position

    @pytest.mark.parametrize("kind", CALLS)
    def test_module_calls_have_the_client_signatures(self, kind: str) -> None:
        """analytics.track and the rest take the Client method's arguments, self aside."""
        method = inspect.signature(getattr(analytics.Client, kind))
        assert inspect.signature(getattr(analytics, kind)) == method.replace(
            parameters=list(method.parameters.values())[1:]
        )

    def test_ids_are_stringified(self, make_client: Any, collector: LocalCollector) -> None:
        """Numeric user and anonymous ids become strings, as in the official client."""
        client = make_client()
        _, by_user = client.track(user_id=157963456373623802, event="python test event")
        _, by_anonymous = client.track(anonymous_id=157963456373623803, event="e")
        assert by_user["userId"] == "157963456373623802" and "anonymousId" not in by_user
        assert by_anonymous["anonymousId"] == "157963456373623803"

    def test_a_naive_now_is_local_time(self, make_client: Any) -> None:
        """A naive datetime.now() is read as local time, as the official client guesses."""
        client = make_client(send=False)
        _, message = client.track("u1", "e", timestamp=dt.datetime.now())
        now = dt.datetime.now(dt.timezone.utc)
        assert abs(parse(message["timestamp"]) - now) < dt.timedelta(seconds=5)

    def test_an_aware_timestamp_is_converted_to_utc(self, make_client: Any) -> None:
        """An offset other than UTC is converted, the instant kept."""
        client = make_client(send=False)
        plus_two = dt.timezone(dt.timedelta(hours=2))
        _, message = client.track("u1", "e", timestamp=dt.datetime(2014, 9, 3, 2, tzinfo=plus_two))
        assert message["timestamp"] == OLD_TIMESTAMP

    def test_the_caller_may_change_its_dicts_afterwards(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """What is sent is what was passed at the call, and the caller's context is not edited."""
        client = make_client()
        properties, context = {"plan": "pro"}, {"ip": "1.2.3.4"}
        client.track("u1", "Signed Up", properties, context)
        properties["plan"] = "changed"
        assert client.flush(timeout=5) is True
        assert collector.messages[0]["properties"] == {"plan": "pro"}
        assert context == {"ip": "1.2.3.4"}


# Calls the official client refuses with AssertionError (checked against it when installed).
Case = Tuple[str, Tuple[Any, ...], Dict[str, Any]]
REFUSED: List[Case] = [
    ("track", ("u1",), {}),
    ("track", (None, "e"), {}),
    ("track", (0, "e"), {}),
    ("track", (["u1"], "e"), {}),
    ("track", ("u1", 5), {}),
    ("track", ("u1", "e", "not a dict"), {}),
    ("track", ("u1", "e"), {"context": "not a dict"}),
    ("track", ("u1", "e"), {"integrations": ["x"]}),
    ("track", ("u1", "e"), {"timestamp": "2020-01-01T00:00:00Z"}),
    ("track", ("u1", "e"), {"timestamp": dt.date(2020, 1, 1)}),
    ("identify", (), {}),
    ("identify", ("u1", "not a dict"), {}),
    ("group", ("u1",), {}),
    ("group", ("u1", "g1", "not a dict"), {}),
    ("alias", ("previous",), {}),
    ("alias", (None, "u1"), {}),
    ("page", ("u1", 5), {}),
    ("screen", ("u1", None, 5), {}),
]
# Calls it accepts: falsy dicts and names are no value, anonymous ids and numbers are ids.
ACCEPTED: List[Case] = [
    ("track", ("u1", "e", []), {}),
    ("track", (None, "e"), {"anonymous_id": "a1"}),
    ("track", (12, "e"), {"message_id": 5}),
    ("identify", (None,), {"anonymous_id": 5}),
    ("page", ("u1", "", ""), {}),
    ("screen", ("u1",), {}),
]


def official_client() -> Any:
    official = pytest.importorskip("segment.analytics")
    return official.Client("k", send=False)


class TestValidation:
    @pytest.mark.parametrize(("kind", "args", "kwargs"), REFUSED)
    def test_refused_as_the_official_client_refuses(
        self, make_client: Any, kind: str, args: Any, kwargs: Any
    ) -> None:
        """AssertionError, as there; also an InvalidMessage, a ValueError, as here."""
        with pytest.raises(AssertionError) as caught:
            getattr(make_client(send=False), kind)(*args, **kwargs)
        assert isinstance(caught.value, analytics.ArgumentError)
        assert isinstance(caught.value, InvalidMessage) and isinstance(caught.value, ValueError)

    @pytest.mark.parametrize(("kind", "args", "kwargs"), ACCEPTED)
    def test_accepted_as_the_official_client_accepts(
        self, make_client: Any, kind: str, args: Any, kwargs: Any
    ) -> None:
        """Falsy dicts, names and categories count as absent."""
        success, _ = getattr(make_client(send=False), kind)(*args, **kwargs)
        assert success is True

    @pytest.mark.parametrize(
        ("kind", "args", "kwargs", "refused"),
        [(*case, True) for case in REFUSED] + [(*case, False) for case in ACCEPTED],
    )
    def test_the_official_client_agrees(
        self, kind: str, args: Any, kwargs: Any, refused: bool
    ) -> None:
        """segment-analytics-python (when installed) refuses and accepts the same calls."""
        call = getattr(official_client(), kind)
        if refused:
            with pytest.raises(AssertionError):
                call(*args, **kwargs)
        else:
            assert call(*args, **kwargs)[0] is True

    def test_an_empty_event_name_is_refused_here(self, make_client: Any) -> None:
        """Segment needs an event name: unlike the official client, "" raises."""
        with pytest.raises(AssertionError, match="event name"):
            make_client(send=False).track("u1", "")

    def test_a_write_key_that_is_not_a_string(self) -> None:
        """Client(123) raises AssertionError, as the official client does."""
        with pytest.raises(AssertionError, match="write_key must be a string"):
            analytics.Client(123)  # type: ignore[arg-type]

    def test_without_a_write_key(self) -> None:
        """No write_key and no SEGMENT_WRITE_KEY: AssertionError saying what to set."""
        with pytest.raises(AssertionError, match=r"analytics\.write_key"):
            analytics.Client()
        with pytest.raises(AssertionError, match="SEGMENT_WRITE_KEY"):
            analytics.track("u1", "e")

    def test_an_invalid_option_names_the_official_keyword(self) -> None:
        """upload_size=0 is refused as upload_size, not as this package's batch_size."""
        with pytest.raises(ValueError, match=r"^upload_size must be between 1"):
            analytics.Client("k", upload_size=0)
        with pytest.raises(TypeError, match="on_error must be a callable"):
            analytics.Client("k", on_error="not callable")  # type: ignore[arg-type]

    def test_this_packages_names_for_official_settings_are_refused(self) -> None:
        """batch_size= is spelled upload_size= here: one name per setting."""
        with pytest.raises(TypeError, match="batch_size is spelled upload_size"):
            analytics.Client("k", batch_size=10)


class TestModuleSettings:
    def test_the_settings_are_unset_at_import(self) -> None:
        """Every setting exists as a module attribute, None (unset) but for debug=False."""
        assert IMPORTED == SETTINGS

    def test_the_official_module_reads_no_other_setting(self) -> None:
        """The settings the official module builds its client from are all here."""
        official = pytest.importorskip("segment.analytics")
        source = inspect.getsource(official._proxy)
        read = set(re.findall(r"(\w+)=\1\b", source))
        assert read <= set(SETTINGS), read - set(SETTINGS)

    def test_the_default_client_is_built_at_the_first_call(self, collector: LocalCollector) -> None:
        """Settings in force at the first call configure it; later changes do not."""
        analytics.write_key = "first-key"
        analytics.host = collector.url
        analytics.gzip = False
        analytics.upload_size = 7
        assert analytics.default_client is None
        analytics.flush()  # any call builds it, as in the official module
        client = analytics.default_client
        assert client is not None
        assert (client.write_key, client.host, client.gzip) == ("first-key", collector.url, False)

        analytics.write_key = "second-key"
        analytics.track("u1", "e")
        analytics.flush()
        assert analytics.default_client is client
        assert collector.requests[0].write_key == "first-key"
        assert "content-encoding" not in collector.requests[0].headers

    def test_unset_settings_fall_back_to_the_environment(
        self, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SEGMENT_WRITE_KEY and SEGMENT_HOST fill unset settings; a set one wins."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        monkeypatch.setenv("SEGMENT_GZIP", "false")
        analytics.gzip = True
        analytics.track("u1", "e")
        analytics.flush()
        [request] = collector.requests
        assert request.write_key == "env-key"
        assert request.headers["content-encoding"] == "gzip"

    def test_upload_size_and_interval_are_module_settings(
        self, segment_env: LocalCollector
    ) -> None:
        """analytics.upload_size sets the batch size of the default client."""
        analytics.write_key = "k"
        analytics.upload_size = 10
        analytics.upload_interval = 30  # only full batches leave before flush
        for n in range(25):
            analytics.track("u1", "e", {"n": n})
        analytics.flush()
        sizes = [len(r.messages) for r in segment_env.requests]
        assert sum(sizes) == 25 and max(sizes) == 10  # the first one woke the worker: full

    def test_a_default_client_assigned_by_hand_is_used(self, make_client: Any) -> None:
        """analytics.default_client = Client(...) replaces the one built from settings."""
        client = make_client(send=False)
        analytics.default_client = client
        success, _ = analytics.track("u1", "e")
        assert success is True and analytics.default_client is client

    @pytest.mark.parametrize("stop", ["join", "shutdown"])
    def test_join_and_shutdown_deliver_then_start_afresh(
        self, segment_env: LocalCollector, stop: str
    ) -> None:
        """What is queued is delivered; the next call builds a new default client."""
        analytics.write_key = "k"
        analytics.upload_interval = 30
        analytics.track("u1", "before")
        first = analytics.default_client
        assert getattr(analytics, stop)() is True
        assert [m["event"] for m in segment_env.messages] == ["before"]
        assert analytics.default_client is None

        analytics.track("u1", "after")
        assert analytics.default_client is not first
        analytics.flush()
        assert [m["event"] for m in segment_env.messages] == ["before", "after"]


class TestClient:
    def test_official_keywords_map_onto_the_options(self, make_client: Any) -> None:
        """upload_size, upload_interval, max_total_backoff_duration and the same-named ones."""
        client = make_client(
            max_queue_size=1234,
            max_retries=3,
            timeout=2.5,
            gzip=False,
            upload_size=42,
            upload_interval=1.5,
            max_total_backoff_duration=30,
        )
        options = client._client.options
        assert (options.max_queue_size, options.max_retries, options.timeout) == (1234, 3, 2.5)
        assert (options.batch_size, options.flush_interval) == (42, 1.5)
        assert (options.gzip, options.retry_budget) == (False, 30.0)
        assert (client.gzip, client.timeout, client.send, client.sync_mode) == (
            False,
            2.5,
            True,
            False,
        )
        assert client.log is logging.getLogger("segment")

    def test_positional_keywords_in_the_official_order(self, collector: LocalCollector) -> None:
        """Client(write_key, host, debug, max_queue_size, send, ...) by position."""
        client = analytics.Client("k", collector.url, False, 77, False)
        assert (client.write_key, client.host, client.send) == ("k", collector.url, False)
        assert client._client.options.max_queue_size == 77
        client.shutdown(timeout=2)

    def test_this_packages_other_options_are_accepted(self, make_client: Any) -> None:
        """shutdown_timeout and the like pass through; an unknown keyword is a TypeError."""
        client = make_client(shutdown_timeout=1.5)
        assert client._client.options.shutdown_timeout == 1.5
        with pytest.raises(TypeError, match="unknown option"):
            make_client(no_such_option=1)

    def test_on_error_gets_the_error_and_the_batch(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """A 400 reaches on_error(error, batch) once: an APIError with the status and body."""
        errors = Recorder()
        collector.script(Reply(400, '{"error":"bad batch"}'))
        client = make_client(on_error=errors, upload_interval=30)  # one batch, sent by flush
        _, first = client.track("u1", "First")
        _, second = client.identify("u1", {"plan": "pro"})
        assert client.flush(timeout=5) is True

        [(error, batch)] = errors.calls
        assert batch == [first, second]
        assert isinstance(error, analytics.APIError)
        assert (error.status, error.code) == (400, "unknown")
        assert error.message == '{"error":"bad batch"}' == error.body
        assert error.count == 2 and error.response is None

    def test_a_network_error_reaches_on_error(self, make_client: Any) -> None:
        """Nothing listening: on_error gets a DeliveryError without a status."""
        errors = Recorder()
        client = make_client(host=closed_url(), on_error=errors, max_retries=0)
        _, message = client.track("u1", "e")
        assert client.flush(timeout=10) is True
        [(error, batch)] = errors.calls
        assert type(error) is DeliveryError and error.status is None
        assert batch == [message]

    def test_send_false(self, make_client: Any, collector: LocalCollector) -> None:
        """send=False: (True, message), nothing leaves, no write key needed."""
        client = make_client(send=False)
        success, message = client.track("u1", "e")
        assert client.flush(timeout=5) is True
        assert success is True and message["event"] == "e"
        assert collector.requests == []
        keyless = analytics.Client(send=False)
        assert keyless.write_key is None
        keyless.shutdown(timeout=2)

    def test_sync_mode_delivers_before_returning(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """sync_mode=True: on the receiver when the call returns, no flush needed."""
        client = make_client(sync_mode=True)
        success, message = client.page("u1", "Docs", "Python")
        assert success is True
        assert collector.messages == [message]

    def test_sync_mode_reports_a_failure_without_raising(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """A refused batch in sync_mode reaches on_error before the call returns."""
        errors = Recorder()
        collector.script(Reply(400))
        client = make_client(sync_mode=True, on_error=errors)
        success, message = client.track("u1", "e")
        assert success is True
        [(error, batch)] = errors.calls
        assert error.status == 400 and batch == [message]

    def test_a_full_queue_gives_false_and_the_message(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """Past max_queue_size: (False, message), never raising, never blocking."""
        errors = Recorder()
        client = make_client(max_queue_size=1, upload_interval=30, on_error=errors)
        assert client.track("user-1", "First Event")[0] is True
        success, message = client.track("user-2", "Overflow Event")

        assert success is False
        assert message["event"] == "Overflow Event" and message["userId"] == "user-2"
        assert client.shutdown(timeout=5) is True
        assert [m["event"] for m in collector.messages] == ["First Event"]
        assert errors.event.wait(5)
        [(error, batch)] = errors.calls
        assert isinstance(error, QueueFull) and batch == []

    def test_an_oversize_message_gives_false(self, make_client: Any) -> None:
        """Over 32 KB: (False, message) and on_error, where the official client raises."""
        errors = Recorder()
        client = make_client(on_error=errors)
        success, message = client.track("u1", "e", {"blob": "x" * 40_000})
        assert success is False
        [(error, batch)] = errors.calls
        assert isinstance(error, MessageTooLarge) and batch == [message]

    def test_after_shutdown_a_call_gives_false(self, make_client: Any) -> None:
        """A call on a stopped client: (False, message), reported to on_error."""
        errors = Recorder()
        client = make_client(on_error=errors)
        client.shutdown(timeout=2)
        success, message = client.track("u1", "late")
        assert success is False
        [(error, batch)] = errors.calls
        assert isinstance(error, ClosedError) and batch == [message]

    def test_debug_and_log_handler(self, make_client: Any) -> None:
        """log_handler joins the 'segment' logger; debug=True sets it to DEBUG."""
        handler = logging.handlers.BufferingHandler(100)
        client = make_client(send=False, debug=True, log_handler=handler)
        client.alias("p1", "u1")
        assert logging.getLogger("segment").level == logging.DEBUG
        [record] = handler.buffer
        assert record.getMessage().startswith("queued alias: {")

    def test_a_failing_on_error_does_not_stop_delivery(
        self, make_client: Any, collector: LocalCollector
    ) -> None:
        """on_error that raises is reported on stderr; later batches still go."""

        def on_error(error: Exception, batch: List[Any]) -> None:
            raise RuntimeError("boom")

        collector.script(Reply(400))
        client = make_client(on_error=on_error)
        client.track("u1", "refused")
        assert client.flush(timeout=5) is True
        client.track("u1", "accepted")
        assert client.flush(timeout=5) is True
        assert [m["event"] for m in collector.messages] == ["accepted"]


class TestUnsupportedSettings:
    @pytest.mark.parametrize(
        ("options", "says"),
        [
            ({"oauth_client_id": "id", "oauth_client_key": "pem", "oauth_key_id": "k"}, "OAuth"),
            ({"max_rate_limit_duration": 600}, "max_rate_limit_duration is ignored"),
        ],
    )
    def test_warned_once(self, make_client: Any, options: Dict[str, Any], says: str) -> None:
        """A setting that is not honoured warns once per process; the client still works."""
        with pytest.warns(analytics.UnsupportedSettingWarning, match=says):
            client = make_client(**options)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_client(**options)
        assert client.track("u1", "e")[0] is True
        assert client.flush(timeout=5) is True

    def test_the_module_setting_warns_too(self, segment_env: LocalCollector) -> None:
        """analytics.oauth_client_id is read (and warned about) when the default client is built."""
        analytics.write_key = "k"
        analytics.oauth_client_id = "id"
        with pytest.warns(analytics.UnsupportedSettingWarning, match="OAuth"):
            analytics.track("u1", "e")
        assert analytics.flush(timeout=5) is True
        assert len(segment_env.messages) == 1

    @pytest.mark.parametrize("thread", [1, 8])
    def test_thread_sets_max_in_flight(self, make_client: Any, thread: int) -> None:
        """thread=N, the official client's consumer threads, is max_in_flight=N, no warning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = make_client(thread=thread)
        assert client._client.options.max_in_flight == thread

    def test_upload_size_over_segments_limit_is_capped(self, make_client: Any) -> None:
        """upload_size past 2,500 messages per request: capped, with a warning."""
        with pytest.warns(analytics.UnsupportedSettingWarning, match="capped at 2,500"):
            client = make_client(upload_size=5_000)
        assert client._client.options.batch_size == 2_500


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """A real HTTP proxy on 127.0.0.1 (proxy.py)."""
    server = ProxyServer(tmp_path_factory.mktemp("proxy"))
    yield server
    server.stop()


@pytest.mark.usefixtures(clean_network_environment.__name__)
class TestProxies:
    def test_the_proxies_keyword_routes_through_the_proxy(
        self, make_client: Any, collector: LocalCollector, proxy: ProxyServer
    ) -> None:
        """proxies={"http": URL}, as requests takes it, sends through that proxy."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = make_client(proxies={"http": proxy.url})
        assert client.track("u1", "e")[0] is True
        assert client.flush(timeout=10) is True
        assert "proxy.py" in collector.requests[0].headers["via"]

    def test_the_module_setting_routes_the_default_client(
        self, segment_env: LocalCollector, proxy: ProxyServer
    ) -> None:
        """analytics.proxies is read when the default client is built."""
        analytics.write_key = "k"
        analytics.proxies = {"all": proxy.url}
        analytics.track("u1", "e")
        assert analytics.flush(timeout=10) is True
        assert "proxy.py" in segment_env.requests[0].headers["via"]

    @pytest.mark.parametrize(
        ("proxies", "expected"),
        [
            ({"all": "a", "http": "b", "all://127.0.0.1": "c", "http://127.0.0.1": "d"}, "d"),
            ({"all": "a", "http": "b", "all://127.0.0.1": "c"}, "b"),
            ({"all": "a", "all://127.0.0.1": "c"}, "c"),
            ({"all": "a", "https": "e"}, "a"),
            ({"https": "e"}, None),
            ({"http": None}, ""),
            ({}, None),
        ],
    )
    def test_the_entry_is_chosen_as_requests_does(
        self, proxies: Dict[str, Any], expected: Any
    ) -> None:
        """scheme://host, scheme, all://host, all; none matching: the environment; None: none."""
        assert _analytics_settings.proxy_option(proxies, "http://127.0.0.1:9") == expected

    def test_no_entry_for_the_scheme_leaves_the_environment_in_charge(
        self,
        make_client: Any,
        collector: LocalCollector,
        proxy: ProxyServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """proxies for https only: an http host still takes HTTP_PROXY, as with requests."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client = make_client(proxies={"https": closed_url()})
        client.track("u1", "e")
        assert client.flush(timeout=10) is True
        assert "proxy.py" in collector.requests[0].headers["via"]

    def test_an_entry_of_none_means_no_proxy(
        self, make_client: Any, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """proxies={"http": None}: direct, whatever HTTP_PROXY says."""
        monkeypatch.setenv("HTTP_PROXY", closed_url())
        client = make_client(proxies={"http": None})
        client.track("u1", "e")
        assert client.flush(timeout=10) is True
        assert len(collector.messages) == 1
