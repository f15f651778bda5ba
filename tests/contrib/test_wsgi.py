"""The WSGI middleware: Flask and a plain WSGI app, served by werkzeug on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List

import pytest

import segmentio_logging
from segmentio_logging.contrib.wsgi import SegmentMiddleware
from segmentio_logging.testing import LocalCollector

from .helpers import get

flask = pytest.importorskip("flask")
serving = pytest.importorskip("werkzeug.serving")

COOKIE = "ajs_anonymous_id=%22anon-3%22"


def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread; yields its URL."""
    server = serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def flask_app(log: logging.Logger) -> Any:
    app = flask.Flask("shop")

    @app.before_request
    def sign_in() -> None:  # stands for flask-login and the like
        flask.g.user = flask.request.headers.get("X-User-Id")

    @app.get("/cart")
    def cart() -> str:
        log.info("Cart Viewed")
        return "ok"

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Iterator[str]:
            for n in range(3):
                log.info("Chunk Sent", extra={"properties": {"n": n}})
                yield f"{n}"

        return flask.Response(flask.stream_with_context(body()))

    app.wsgi_app = SegmentMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, user_id=lambda environ: flask.g.get("user"), trusted_proxies=1
    )
    return app


@pytest.fixture
def handler(make_handler: Any, logger: logging.Logger) -> Any:
    handler = make_handler()
    logger.addHandler(handler)
    return handler


class TestFlask:
    @pytest.fixture
    def url(self, logger: logging.Logger) -> Iterator[str]:
        yield from serve(flask_app(logger))

    def test_identity_and_context(self, url: str, handler: Any, collector: LocalCollector) -> None:
        """The hook finds the user inside Flask's request; cookie, ip and page come along."""
        get(
            f"{url}/cart?x=1",
            {"Cookie": COOKIE, "X-User-Id": "u1", "X-Forwarded-For": "198.51.100.4"},
        )
        get(f"{url}/cart", {"Cookie": COOKIE})
        get(f"{url}/cart", {"Cookie": "ajs_anonymous_id=%7Bbroken"})
        assert handler.flush(10)
        signed_in, anonymous = collector.messages
        assert (signed_in["userId"], signed_in["anonymousId"]) == ("u1", "anon-3")
        context = signed_in["context"]
        assert context["ip"] == "198.51.100.4"
        assert context["page"] == {
            "path": "/cart",
            "url": f"{url}/cart?x=1",
            "search": "?x=1",
        }
        assert context["userAgent"].startswith("Python-urllib/")
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-3"
        assert anonymous["context"]["ip"] == "127.0.0.1"  # no header: the peer
        assert handler.stats()["skipped"] == 1  # malformed cookie, no user: no id at all

    def test_a_streamed_body_logs_with_the_identity(
        self, url: str, handler: Any, collector: LocalCollector
    ) -> None:
        """Records logged while the body is iterated, after the app returned, carry it too."""
        assert get(f"{url}/stream", {"Cookie": COOKIE, "X-User-Id": "u2"}) == "012"
        assert handler.flush(10)
        chunks = collector.messages
        assert [m["properties"]["n"] for m in chunks] == [0, 1, 2]
        assert {(m["userId"], m["anonymousId"]) for m in chunks} == {("u2", "anon-3")}


def plain_app(log: logging.Logger) -> Callable[..., Iterable[bytes]]:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterable[bytes]:
        log.info("Page Viewed")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


class TestPlainWSGI:
    def test_remote_user_is_the_default(
        self, handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """Without a hook, REMOTE_USER (set by an authenticating layer) is the user id."""

        def authenticated(environ: Dict[str, Any], start_response: Any) -> Iterable[bytes]:
            user = environ.get("HTTP_X_USER_ID")
            if user:
                environ["REMOTE_USER"] = user
            return inner(environ, start_response)

        inner = plain_app(logger)
        for url in serve(SegmentMiddleware(authenticated)):
            get(f"{url}/home", {"X-User-Id": "u5", "X-Forwarded-For": "198.51.100.4"})
        assert handler.flush(10)
        [message] = collector.messages
        assert message["userId"] == "u5"
        assert message["context"]["ip"] == "127.0.0.1"  # trusted_proxies=0: the header ignored

    def test_nothing_stays_bound_in_the_servers_thread(
        self, handler: Any, logger: logging.Logger
    ) -> None:
        """After a request (and its body's close), the calling thread has no identity."""
        app = SegmentMiddleware(plain_app(logger))
        environ = {"PATH_INFO": "/", "HTTP_COOKIE": COOKIE, "REMOTE_USER": "u6"}
        statuses: List[str] = []
        body = app(environ, lambda status, headers: statuses.append(status))
        assert list(body) == [b"ok"] and statuses == ["200 OK"]
        assert segmentio_logging.current_identity() == {}

    def test_a_servers_file_wrapper_is_returned_as_it_is(self, logger: logging.Logger) -> None:
        """A body made by wsgi.file_wrapper reaches the server unwrapped: it may sendfile it."""
        from wsgiref.util import FileWrapper

        def send_file(environ: Dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [])
            return environ["wsgi.file_wrapper"](io.BytesIO(b"file"))

        environ = {"PATH_INFO": "/", "HTTP_COOKIE": COOKIE, "wsgi.file_wrapper": FileWrapper}
        body = SegmentMiddleware(send_file)(environ, lambda status, headers: None)
        assert isinstance(body, FileWrapper) and list(body) == [b"file"]

    def test_options_are_checked(self, logger: logging.Logger) -> None:
        """A wrong option fails at construction, naming it."""
        with pytest.raises(ValueError, match="trusted_proxies must be at least 0"):
            SegmentMiddleware(plain_app(logger), trusted_proxies=-1)
