"""What the web middlewares share: cookies, forwarded addresses, page context, the lazy user id."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable, List, Optional

import pytest

import segmentio_logging
from segmentio_logging.contrib._web import (
    MAX_CONTEXT_TEXT,
    MAX_USER_ID_LENGTH,
    LazyIdentity,
    RequestFacts,
    anonymous_id_of,
    bind_request,
    capped,
    client_ip,
    context_of,
    cookie_value,
    unbind_request,
    web_options,
)
from segmentio_logging.testing import LocalCollector


class TestCookies:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("ajs_anonymous_id=%22abc%22", "%22abc%22"),
            ('a=1; ajs_anonymous_id="abc"; b=2', '"abc"'),
            ("xajs_anonymous_id=1; ajs_anonymous_id=2", "2"),
            ("ajs_anonymous_id", None),
            ("other=1", None),
            ("", None),
            (None, None),
            ("broken=\x00; ajs_anonymous_id=ok", "ok"),
        ],
    )
    def test_cookie_value(self, header: Optional[str], expected: Optional[str]) -> None:
        """The named cookie is found among others, whatever else the header holds."""
        assert cookie_value(header, "ajs_anonymous_id") == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("%22abc-123%22", "abc-123"),  # analytics.js, percent-encoded
            ('"abc-123"', "abc-123"),  # JSON-quoted
            ("abc-123", "abc-123"),  # bare
            ("%2522abc%2522", None),  # encoded twice: quotes left inside
            ('"abc', None),  # an unbalanced quote
            ('"abc"x', None),  # JSON with trailing text
            ("%22%22", None),  # an empty id
            ("123", "123"),  # bare digits are an id
            ("%7B%7D", None),  # bare, and not an id
            ('"\\u0000"', None),  # a control character
            ('"' + "x" * 300 + '"', None),  # longer than any id analytics.js writes
            ("null", "null"),
            ('"null"', "null"),
            ("", None),
            (None, None),
        ],
    )
    def test_anonymous_id_of(self, value: Optional[str], expected: Optional[str]) -> None:
        """The cookie's id is unquoted; a malformed value gives None, never an error."""
        assert anonymous_id_of(value) == expected

    @pytest.mark.parametrize("value", ["%5B%221%22%5D", "[1]", "%7B%22a%22%3A1%7D", "a b"])
    def test_json_that_is_not_a_string_is_ignored(self, value: str) -> None:
        """A JSON list or object, or text with spaces, is not an id."""
        assert anonymous_id_of(value) is None


class TestForwardedFor:
    @pytest.mark.parametrize(
        ("forwarded", "trusted", "expected"),
        [
            ("203.0.113.7", 0, "10.0.0.1"),  # not trusted: the peer
            ("203.0.113.7", 1, "203.0.113.7"),
            ("198.51.100.1, 203.0.113.7", 1, "203.0.113.7"),  # the client wrote the first
            ("198.51.100.1, 203.0.113.7", 2, "198.51.100.1"),
            ("203.0.113.7", 2, "10.0.0.1"),  # fewer entries than proxies: ignored
            ("not-an-address", 1, "10.0.0.1"),
            ("203.0.113.7:5555", 1, "203.0.113.7"),
            ("[2001:db8::1]:443", 1, "2001:db8::1"),
            ("2001:db8::1", 1, "2001:db8::1"),
            (" , ", 1, "10.0.0.1"),
            (None, 1, "10.0.0.1"),
        ],
    )
    def test_client_ip(self, forwarded: Optional[str], trusted: int, expected: str) -> None:
        """The address the trusted proxies forwarded, counted from the right, else the peer."""
        assert client_ip("10.0.0.1", forwarded, trusted) == expected


class TestContext:
    def test_from_environ(self) -> None:
        """A WSGI environ gives ip, userAgent and page with url, path, search, referrer."""
        environ = {
            "wsgi.url_scheme": "https",
            "HTTP_HOST": "shop.example",
            "SCRIPT_NAME": "/app",
            "PATH_INFO": "/caf\xc3\xa9 menu",  # UTF-8 bytes as latin-1 characters (PEP 3333)
            "QUERY_STRING": "q=1&r=2",
            "REMOTE_ADDR": "10.0.0.1",
            "HTTP_USER_AGENT": "Mozilla/5.0",
            "HTTP_REFERER": "https://search.example/",
        }
        assert context_of(RequestFacts.from_environ(environ), 0) == {
            "ip": "10.0.0.1",
            "userAgent": "Mozilla/5.0",
            "page": {
                "path": "/app/caf%C3%A9%20menu",
                "url": "https://shop.example/app/caf%C3%A9%20menu?q=1&r=2",
                "search": "?q=1&r=2",
                "referrer": "https://search.example/",
            },
        }

    def test_from_scope(self) -> None:
        """An ASGI scope gives the same, its headers joined as HTTP joins them."""
        scope = {
            "type": "http",
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "path": "/café",
            "raw_path": b"/caf%C3%A9",
            "query_string": b"",
            "client": ("10.0.0.2", 5123),
            "headers": [
                (b"cookie", b"a=1"),
                (b"Cookie", b"ajs_anonymous_id=%22x%22"),
                (b"x-forwarded-for", b"198.51.100.1"),
                (b"x-forwarded-for", b"203.0.113.7"),
            ],
        }
        facts = RequestFacts.from_scope(scope)
        assert facts.cookie == "a=1; ajs_anonymous_id=%22x%22"
        assert context_of(facts, 1) == {
            "ip": "203.0.113.7",
            "page": {"path": "/caf%C3%A9", "url": "http://127.0.0.1:8000/caf%C3%A9"},
        }

    def test_a_request_without_host_or_peer(self) -> None:
        """Without a host the url is the path; without a peer there is no ip."""
        facts = RequestFacts.from_environ({"PATH_INFO": ""})
        assert context_of(facts, 0) == {"page": {"path": "/", "url": "/"}}
        named = RequestFacts.from_scope({"path": "/", "client": ("testclient", 50000)})
        assert "ip" not in context_of(named, 0)  # a peer that is not an address


class TestCaps:
    def test_long_texts_are_cut_on_a_character_boundary(self) -> None:
        """url, search, path, referrer and userAgent keep at most MAX_CONTEXT_TEXT bytes."""
        facts = RequestFacts(
            scheme="https",
            host="shop.example",
            path="/" + "p" * 5000,
            query="q=" + "a" * 17_000,
            peer="10.0.0.1",
            user_agent="é" * 3000,  # two bytes each: the cut falls inside none
            referrer="https://a.example/?" + "r" * 5000,
        )
        context = context_of(facts, 0)
        texts = [*context["page"].values(), context["userAgent"]]
        assert len(texts) == 5
        for text in texts:
            assert len(text.encode("utf-8")) <= MAX_CONTEXT_TEXT
            assert len(text.encode("utf-8")) >= MAX_CONTEXT_TEXT - 1
        assert context["userAgent"] == "é" * (MAX_CONTEXT_TEXT // 2)
        assert context["page"]["url"].startswith("https://shop.example/ppp")
        assert context["page"]["search"].startswith("?q=aaa")

    def test_short_texts_are_kept(self) -> None:
        """Texts within the limit are untouched, whatever their characters."""
        assert capped("日本" * 10) == "日本" * 10
        assert capped("x" * MAX_CONTEXT_TEXT) == "x" * MAX_CONTEXT_TEXT
        assert capped("€" * 1000, 10) == "€" * 3

    def test_an_event_of_a_long_query_is_delivered(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """A 17,000-character query string no longer pushes the request's events past 32 KB."""
        handler = make_handler()
        logger.addHandler(handler)
        facts = RequestFacts(
            scheme="http", host="h", path="/search", query="q=" + "a" * 17_000, peer=None
        )
        binding = bind_request(lambda: facts, web_options("test"), None)
        try:
            logger.info("Searched", extra={"user_id": "u1"})
        finally:
            unbind_request(binding)
        assert handler.flush(10)
        [message] = collector.messages
        assert message["context"]["page"]["path"] == "/search"


class TestOptions:
    def test_checked(self) -> None:
        """Wrong options are clear errors naming the middleware."""
        with pytest.raises(TypeError, match="Where user_id must be a callable"):
            web_options("Where", user_id=3)
        with pytest.raises(ValueError, match="Where user_id: cannot import"):
            web_options("Where", user_id="no_such_module.fn")
        with pytest.raises(ValueError, match="trusted_proxies must be at least 0"):
            web_options("Where", trusted_proxies=-1)
        with pytest.raises(TypeError, match="trusted_proxies must be an integer"):
            web_options("Where", trusted_proxies=True)
        with pytest.raises(TypeError, match="anonymous_id_cookie must be a cookie name"):
            web_options("Where", anonymous_id_cookie=" ")

    def test_dotted_path_and_text(self) -> None:
        """A dotted path names the hook; trusted_proxies may be given as text."""
        options = web_options("Where", user_id="os.getpid", trusted_proxies="2")
        assert options.user_id is __import__("os").getpid
        assert options.trusted_proxies == 2


FACTS = RequestFacts(
    scheme="https",
    host="shop.example",
    path="/cart",
    query="",
    peer="10.0.0.1",
    cookie="ajs_anonymous_id=%22anon-1%22",
)


class CountingHook:
    """A user id lookup that counts its calls and the threads it ran on."""

    def __init__(self, value: Any = "u1", error: Optional[Exception] = None) -> None:
        self.value = value
        self.error = error
        self.threads: List[int] = []

    def __call__(self) -> Any:
        self.threads.append(threading.get_ident())
        if self.error is not None:
            raise self.error
        return self.value


class Unprintable:
    """A user object whose text cannot be had."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


class TestBinding:
    def run(self, hook: Optional[Callable[[], Any]], body: Callable[[], None]) -> None:
        binding = bind_request(lambda: FACTS, web_options("test"), hook)
        try:
            body()
        finally:
            unbind_request(binding)

    def test_records_carry_the_request(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """Records logged inside carry the cookie's anonymous id, the user id and the context."""
        handler = make_handler()
        logger.addHandler(handler)
        hook = CountingHook()
        self.run(hook, lambda: [logger.info("Viewed Cart") for _ in range(3)])
        assert segmentio_logging.current_identity() == {}
        assert handler.flush(10)
        messages = collector.messages
        assert [m["userId"] for m in messages] == ["u1"] * 3
        assert [m["anonymousId"] for m in messages] == ["anon-1"] * 3
        context = messages[0]["context"]
        assert context["ip"] == "10.0.0.1"
        assert context["page"] == {"path": "/cart", "url": "https://shop.example/cart"}
        assert hook.threads == [threading.get_ident()]  # once, on the logging thread

    def test_a_request_that_logs_nothing_never_looks_up_the_user(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Without a record that needs it, the lookup never runs."""
        logger.addHandler(make_handler())
        hook = CountingHook()
        self.run(hook, lambda: logger.debug("nothing for Segment", extra={"user_id": "u2"}))
        assert hook.threads == []

    def test_no_user_keeps_the_anonymous_id(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """A lookup that finds nobody leaves the anonymous id alone; an outer user id stays."""
        handler = make_handler()
        logger.addHandler(handler)
        self.run(CountingHook(None), lambda: logger.info("Anonymous"))
        with segmentio_logging.identified(user_id="outer"):
            self.run(CountingHook(""), lambda: logger.info("Outer"))
        assert handler.flush(10)
        anonymous, outer = collector.messages
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-1"
        assert outer["userId"] == "outer"

    def test_a_failing_lookup_is_reported_not_raised(
        self,
        make_handler: Any,
        collector: LocalCollector,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
        warnings_shown: None,
    ) -> None:
        """A lookup that raises costs the user id (with a warning), never the request."""
        handler = make_handler()
        logger.addHandler(handler)
        self.run(CountingHook(error=RuntimeError("db down")), lambda: logger.info("Viewed"))
        assert handler.flush(10)
        [message] = collector.messages
        assert "userId" not in message and message["anonymousId"] == "anon-1"
        assert "RuntimeError: db down" in capsys.readouterr().err

    @pytest.mark.parametrize(
        "value",
        [{"id": 1}, ["u1"], "u" * 40_000, True, b"u1", Unprintable()],
        ids=["dict", "list", "huge", "bool", "bytes", "unprintable"],
    )
    def test_an_odd_user_id_is_dropped_not_the_event(
        self,
        make_handler: Any,
        collector: LocalCollector,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
        warnings_shown: None,
        value: Any,
    ) -> None:
        """A lookup returning what is no id: a warning, no userId, the anonymous id kept."""
        handler = make_handler()
        logger.addHandler(handler)
        self.run(CountingHook(value), lambda: logger.info("Viewed"))
        assert handler.flush(10)
        [message] = collector.messages
        assert "userId" not in message and message["anonymousId"] == "anon-1"
        assert "its records carry no user id" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (7, "7"),
            (uuid.UUID(int=1), str(uuid.UUID(int=1))),
            ("u" * MAX_USER_ID_LENGTH, "u" * 1024),
        ],
    )
    def test_ints_uuids_and_texts_are_user_ids(
        self,
        make_handler: Any,
        collector: LocalCollector,
        logger: logging.Logger,
        value: Any,
        expected: str,
    ) -> None:
        """An int, a UUID and a text within the limit are the request's user id."""
        handler = make_handler()
        logger.addHandler(handler)
        self.run(CountingHook(value), lambda: logger.info("Viewed"))
        assert handler.flush(10)
        [message] = collector.messages
        assert message["userId"] == expected

    def test_a_request_that_cannot_be_read_runs_unbound(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Reading the request raises: nothing is bound, a warning says why, no error."""

        class Broken(dict):  # type: ignore[type-arg]
            def get(self, key: Any, default: Any = None) -> Any:
                raise RuntimeError("no environ")

        def unreadable() -> RequestFacts:
            return RequestFacts.from_environ(Broken())

        binding = bind_request(unreadable, web_options("test"), CountingHook())
        assert binding is None and segmentio_logging.current_identity() == {}
        unbind_request(binding)
        assert "could not read the request (RuntimeError: no environ)" in capsys.readouterr().err

    def test_lazy_identity_length_does_not_look_up(self) -> None:
        """Testing the identity's truth (the worker does) runs no lookup; reading does, once."""
        hook = CountingHook("u9")
        identity = LazyIdentity({"context": {"ip": "1.2.3.4"}}, hook)
        assert bool(identity) and identity.get("context") == {"ip": "1.2.3.4"}
        assert hook.threads == []
        assert dict(identity) == {"context": {"ip": "1.2.3.4"}, "user_id": "u9"}
        assert identity["user_id"] == "u9" and len(identity) == 2
        assert len(hook.threads) == 1
        assert "u9" in repr(identity)

    def test_nested_bind_inside_keeps_the_request(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """A bind() inside the request adds to its identity (the lookup runs for it)."""
        handler = make_handler()
        logger.addHandler(handler)

        def body() -> None:
            with segmentio_logging.identified(context={"locale": "fr"}):
                logger.info("Nested")

        self.run(CountingHook("u3"), body)
        assert handler.flush(10)
        [message] = collector.messages
        assert message["userId"] == "u3" and message["anonymousId"] == "anon-1"
        assert message["context"]["locale"] == "fr" and message["context"]["ip"] == "10.0.0.1"
