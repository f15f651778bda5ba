"""The ASGI middleware: FastAPI through Starlette's test client and through a real uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import segmentio_logging
from segmentio_logging import SegmentHandler
from segmentio_logging.contrib.asgi import SegmentMiddleware
from segmentio_logging.testing import LocalCollector

from ..helpers import free_port
from .helpers import ServerProcess, by_event, child_env, get

fastapi = pytest.importorskip("fastapi")
testclient = pytest.importorskip("starlette.testclient")
APPS = Path(__file__).resolve().parent / "apps"
COOKIE = {"Cookie": "ajs_anonymous_id=%22anon-7%22"}


def make_app(log: logging.Logger, *inner: Any, **options: Any) -> Any:
    """An app whose endpoints log; ``inner`` is a middleware (and its options) inside ours."""
    app = fastapi.FastAPI()
    if inner:
        app.add_middleware(inner[0], **inner[1])
    app.add_middleware(SegmentMiddleware, **options)  # the last added runs first

    @app.get("/cart")
    async def cart() -> Dict[str, str]:
        log.info("Cart Viewed")
        return {}

    @app.get("/quiet")
    def quiet() -> Dict[str, str]:  # a sync endpoint: run in a thread of Starlette's pool
        log.info("Quiet Viewed")
        return {}

    return app


def header_user(scope: Dict[str, Any]) -> Any:
    return dict(scope["headers"]).get(b"x-user-id", b"").decode() or None


class TestThroughTheTestClient:
    def test_request_identity_and_context(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """Cookie, user hook, forwarded address and page reach the events, sync and async."""
        handler = make_handler()
        logger.addHandler(handler)
        app = make_app(logger, user_id=header_user, trusted_proxies=1)
        with testclient.TestClient(app) as client:
            headers = {**COOKIE, "X-User-Id": "u1", "X-Forwarded-For": "203.0.113.9"}
            client.get("/cart?from=mail", headers={**headers, "Referer": "https://a.example/"})
            client.get("/quiet", headers=COOKIE)
            client.get("/quiet", headers={"Cookie": "ajs_anonymous_id=%22broken"})
        assert handler.flush(10)
        cart, quiet = collector.messages
        assert (cart["userId"], cart["anonymousId"]) == ("u1", "anon-7")
        assert cart["context"]["ip"] == "203.0.113.9"
        assert cart["context"]["page"] == {
            "path": "/cart",
            "url": "http://testserver/cart?from=mail",
            "search": "?from=mail",
            "referrer": "https://a.example/",
        }
        assert cart["context"]["userAgent"] == "testclient"
        assert "userId" not in quiet and quiet["anonymousId"] == "anon-7"
        assert "ip" not in quiet["context"]  # the test client's peer is "testclient"
        # A malformed cookie and no user: no id at all, so the record is skipped.
        assert handler.stats()["skipped"] == 1

    def test_the_default_user_is_starlettes_authenticated_user(
        self, make_handler: Any, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """Inside AuthenticationMiddleware, scope["user"] (set after the middleware ran) is used."""
        from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
        from starlette.middleware.authentication import AuthenticationMiddleware

        class HeaderBackend(AuthenticationBackend):
            async def authenticate(self, conn: Any) -> Any:
                name = conn.headers.get("x-user-id")
                return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

        handler = make_handler()
        logger.addHandler(handler)
        app = make_app(logger, AuthenticationMiddleware, {"backend": HeaderBackend()})
        with testclient.TestClient(app) as client:
            client.get("/cart", headers={"X-User-Id": "ada"})
            client.get("/cart", headers=COOKIE)
        assert handler.flush(10)
        ada, anonymous = collector.messages
        assert ada["userId"] == "ada" and "anonymousId" not in ada
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-7"

    def test_the_lifespan_shutdown_delivers_and_can_come_twice(
        self, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """Each test client's shutdown delivers what is held; the pipelines stay open."""
        handler = SegmentHandler("key", host=collector.url, flush_interval=60, batch_size=1000)
        logger.addHandler(handler)
        try:
            app = make_app(logger)
            for round_ in range(2):
                with testclient.TestClient(app) as client:
                    client.get("/cart", headers=COOKIE)
                    assert len(collector.messages) == round_  # held: a 60 s interval
                assert len(collector.messages) == round_ + 1  # delivered by the shutdown
            assert handler.stats()["dropped"] == 0
        finally:
            handler.close()

    def test_on_shutdown_close_closes(
        self, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """on_shutdown="close" delivers and closes: a later record is dropped, counted."""
        handler = SegmentHandler("key", host=collector.url, flush_interval=60)
        logger.addHandler(handler)
        app = make_app(logger, on_shutdown="close")
        with testclient.TestClient(app) as client:
            client.get("/cart", headers=COOKIE)
        assert len(collector.messages) == 1
        logger.info("After", extra={"user_id": "u1"})
        assert handler.stats()["dropped"] == 1

    def test_on_shutdown_is_checked(self) -> None:
        """An unknown on_shutdown is a clear error."""
        with pytest.raises(ValueError, match="on_shutdown must be one of flush, close, none"):
            SegmentMiddleware(make_app(logging.getLogger("x")), on_shutdown="later")

    def test_identity_is_unbound_after_the_request(self, logger: logging.Logger) -> None:
        """Nothing stays bound in the caller's context after a request."""
        app = make_app(logger)
        with testclient.TestClient(app) as client:
            client.get("/cart", headers=COOKIE)
        assert segmentio_logging.current_identity() == {}


class TestDefaultUser:
    @pytest.mark.parametrize(
        ("user", "expected"),
        [
            (None, None),
            (type("Anonymous", (), {"is_authenticated": False, "identity": "x"})(), None),
            (type("WithIdentity", (), {"is_authenticated": True, "identity": "u1"})(), "u1"),
        ],
    )
    def test_scope_user(self, user: Any, expected: Any) -> None:
        """An authenticated scope["user"] gives its identity; others give nothing."""
        from segmentio_logging.contrib.asgi import default_user_id

        assert default_user_id({} if user is None else {"user": user}) == expected

    def test_a_user_without_identity_gives_its_username(self) -> None:
        """Older Starlette's SimpleUser has no identity: its username stands in."""
        from segmentio_logging.contrib.asgi import default_user_id

        class OldSimpleUser:
            is_authenticated = True
            username = "ada"

            @property
            def identity(self) -> str:
                raise NotImplementedError

        assert default_user_id({"user": OldSimpleUser()}) == "ada"


class Lifespan:
    """Drives one lifespan through an ASGI app, as a server does."""

    def __init__(self) -> None:
        self.sent: List[str] = []
        self.inbox: Optional[asyncio.Queue[Dict[str, Any]]] = None  # made in the loop (3.9)

    async def receive(self) -> Dict[str, Any]:
        assert self.inbox is not None
        return await self.inbox.get()

    async def send(self, message: Dict[str, Any]) -> None:
        self.sent.append(message["type"])

    async def run(self, app: Any, on_startup: Any = None) -> None:
        self.inbox = asyncio.Queue()
        await self.inbox.put({"type": "lifespan.startup"})
        task = asyncio.ensure_future(app({"type": "lifespan"}, self.receive, self.send))
        while not self.sent and not task.done():
            await asyncio.sleep(0)
        if on_startup is not None:
            on_startup()
        await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 20)


class TestLifespanProtocol:
    @pytest.mark.parametrize("refusal", ["raises", "returns"])
    def test_an_app_without_lifespan_support_gets_it_spoken_for(
        self, collector: LocalCollector, logger: logging.Logger, refusal: str
    ) -> None:
        """An app that refuses the lifespan scope (raising, as Django's does, or returning at
        once) still gets its events delivered."""

        async def http_only(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                if refusal == "raises":
                    raise ValueError("only http")
                return

        handler = SegmentHandler("key", host=collector.url, flush_interval=60)
        logger.addHandler(handler)
        try:
            lifespan = Lifespan()
            log_one = lambda: logger.info("Held", extra={"user_id": "u1"})  # noqa: E731
            asyncio.run(lifespan.run(SegmentMiddleware(http_only), log_one))
            assert lifespan.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
            assert [m["event"] for m in collector.messages] == ["Held"]
        finally:
            handler.close()

    def test_an_app_that_fails_after_reading_is_not_masked(self) -> None:
        """An app whose startup raised after it read a message raises to the server."""

        async def failing(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            raise RuntimeError("startup failed")

        with pytest.raises(RuntimeError, match="startup failed"):
            asyncio.run(Lifespan().run(SegmentMiddleware(failing)))

    def test_the_shutdown_answer_waits_for_the_delivery(
        self, collector: LocalCollector, logger: logging.Logger
    ) -> None:
        """The app's shutdown.complete reaches the server only once the events arrived."""
        seen_at_answer: List[int] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    logger.info("In Shutdown", extra={"user_id": "u1"})
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        handler = SegmentHandler("key", host=collector.url, flush_interval=60)
        logger.addHandler(handler)
        lifespan = Lifespan()
        real_send = lifespan.send

        async def send(message: Dict[str, Any]) -> None:
            seen_at_answer.append(len(collector.messages))
            await real_send(message)

        lifespan.send = send  # type: ignore[method-assign]
        try:
            asyncio.run(lifespan.run(SegmentMiddleware(app)))
        finally:
            handler.close()
        assert seen_at_answer == [0, 1]


class TestUvicorn:
    REQUESTS = 200
    STEPS = ("Cart Viewed", "Checkout Started", "Order Completed")

    def test_sigterm_after_load_delivers_every_event(
        self, collector: LocalCollector, tmp_path: Path
    ) -> None:
        """Under uvicorn, SIGTERM after 200 requests: all 600 events logged are delivered."""
        pytest.importorskip("uvicorn")
        port = free_port()
        env = child_env(collector, APPS, SEGMENT_FLUSH_INTERVAL="60", SEGMENT_BATCH_SIZE="2500")
        args = ["-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)]
        with ServerProcess(args, tmp_path, env) as server:
            server.wait_for(r"Uvicorn running on")  # after the lifespan startup
            url = f"http://127.0.0.1:{port}"
            self.load(url)
            # Nothing left before the shutdown: a 60 s interval, batches of 2,500.
            assert collector.requests == []
            status = server.stop(signal.SIGTERM)
        assert status in (0, -signal.SIGTERM), server.text
        messages = collector.messages
        assert len(messages) == self.REQUESTS * len(self.STEPS), server.text[-3000:]
        assert len({m["messageId"] for m in messages}) == len(messages)
        for step in self.STEPS:
            events = by_event(messages, step)
            assert sorted(m["properties"]["n"] for m in events) == list(range(self.REQUESTS))
        counts = Counter((m["userId"], m["anonymousId"]) for m in messages)
        assert counts == {(f"u{n}", f"a{n % 4}"): len(self.STEPS) for n in range(self.REQUESTS)}
        for message in messages:
            n = message["properties"]["n"]
            assert message["context"]["ip"] == f"203.0.113.{n % 250}"
            assert message["context"]["page"]["path"] == f"/orders/{n}"

    def load(self, url: str) -> None:
        """The requests, from four threads; each names its user, cookie and forwarded address."""
        failures: List[BaseException] = []

        def client(numbers: range) -> None:
            try:
                for n in numbers:
                    headers = {
                        "X-User-Id": f"u{n}",
                        "Cookie": f"ajs_anonymous_id=%22a{n % 4}%22",
                        "X-Forwarded-For": f"203.0.113.{n % 250}",
                    }
                    assert get(f"{url}/orders/{n}", headers) == f'{{"n":{n}}}'
            except BaseException as exc:
                failures.append(exc)

        threads = [
            threading.Thread(target=client, args=(range(i, self.REQUESTS, 4),)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
