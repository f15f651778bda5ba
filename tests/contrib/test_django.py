"""The Django middleware: through Django's test clients (sync and async), and under uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import segmentio_logging
from segmentio_logging.testing import LocalCollector

from ..helpers import free_port
from .helpers import ServerProcess, by_event, child_env, get

django = pytest.importorskip("django")
APPS = Path(__file__).resolve().parent / "apps"
COOKIE = "%22anon-5%22"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Django configured in this process for this module's tests, then unconfigured."""
    from django.conf import settings
    from django.core.management import call_command
    from django.utils.functional import empty

    if settings.configured:
        pytest.skip("Django settings were configured by another test of this process")
    sys.path.insert(0, str(APPS))
    import django_shop

    database = tmp_path_factory.mktemp("django") / "db.sqlite3"
    config = django_shop.settings(str(database))
    del config["LOGGING"]  # the tests add their own handler to "shop"
    settings.configure(**config)
    django.setup()
    call_command("migrate", verbosity=0)
    try:
        yield
    finally:
        settings._wrapped = empty  # the next test of the process may configure Django again
        sys.path.remove(str(APPS))


@pytest.fixture
def shop(project: None, make_handler: Any) -> Any:
    """The SegmentHandler on the "shop" logger the views log to."""
    handler = make_handler()
    log = logging.getLogger("shop")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return handler


@pytest.fixture
def user(project: None) -> Any:
    from django.contrib.auth.models import User

    made = User.objects.create_user(username=f"ada-{User.objects.count()}", password="x")
    yield made
    made.delete()


class TestTestClient:
    def test_signed_in_user_cookie_and_context(
        self, shop: Any, collector: LocalCollector, user: Any
    ) -> None:
        """A signed-in user's pk, the cookie's id, ip, userAgent and page reach the event."""
        from django.test import Client

        client = Client(HTTP_USER_AGENT="Mozilla/5.0", HTTP_REFERER="https://a.example/")
        client.force_login(user)
        client.cookies["ajs_anonymous_id"] = COOKIE
        assert client.get("/cart", {"q": "1"}).status_code == 200
        client.logout()  # which forgets every cookie
        client.cookies["ajs_anonymous_id"] = COOKIE
        assert client.get("/cart").status_code == 200
        client.cookies["ajs_anonymous_id"] = '"unbalanced'
        assert client.get("/cart").status_code == 200
        assert shop.flush(10)
        signed_in, anonymous = collector.messages
        assert (signed_in["userId"], signed_in["anonymousId"]) == (str(user.pk), "anon-5")
        assert signed_in["context"]["ip"] == "127.0.0.1"
        assert signed_in["context"]["userAgent"] == "Mozilla/5.0"
        assert signed_in["context"]["page"] == {
            "path": "/cart",
            "url": "http://testserver/cart?q=1",
            "search": "?q=1",
            "referrer": "https://a.example/",
        }
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-5"
        assert shop.stats()["skipped"] == 1  # no user, a malformed cookie: no id

    def test_a_request_that_logs_nothing_does_not_load_the_user(
        self, shop: Any, collector: LocalCollector, user: Any
    ) -> None:
        """No session read, no user query for a view that logs nothing; both for one that does."""
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        client = Client()
        client.force_login(user)
        with CaptureQueriesContext(connection) as quiet:
            assert client.get("/quiet").status_code == 200
        with CaptureQueriesContext(connection) as logging_view:
            assert client.get("/cart").status_code == 200
        assert len(quiet.captured_queries) == 0
        tables = " ".join(q["sql"] for q in logging_view.captured_queries)
        assert "django_session" in tables and "auth_user" in tables
        assert shop.flush(10)
        assert [m["userId"] for m in collector.messages] == [str(user.pk)]

    def test_async_view(self, shop: Any, collector: LocalCollector, user: Any) -> None:
        """Under the async client the middleware runs as a coroutine and awaits the user."""
        from django.test import AsyncClient, Client

        from segmentio_logging.contrib.django import SegmentMiddleware

        signed = Client()
        signed.force_login(user)

        async def requests() -> None:
            client = AsyncClient(headers={"X-Forwarded-For": "203.0.113.5"})
            client.cookies = signed.cookies
            client.cookies["ajs_anonymous_id"] = COOKIE
            assert (await client.get("/async-cart")).status_code == 200

        asyncio.run(requests())
        assert asyncio.iscoroutinefunction(SegmentMiddleware(_async_view))
        assert shop.flush(10)
        [message] = collector.messages
        assert (message["userId"], message["anonymousId"]) == (str(user.pk), "anon-5")
        assert message["context"]["ip"] == "127.0.0.1"  # trusted_proxies 0: the header ignored

    def test_an_async_user_lookup_that_raises_costs_only_the_user_id(
        self,
        shop: Any,
        collector: LocalCollector,
        capfd: pytest.CaptureFixture[str],
        warnings_shown: None,
    ) -> None:
        """A session store that is down: the async view still answers, its event has no userId."""
        from django.test import AsyncClient, override_settings

        async def request() -> Any:
            client = AsyncClient(raise_request_exception=False)
            client.cookies["sessionid"] = "abcdefghijklmnopqrstuvwxyz012345"
            client.cookies["ajs_anonymous_id"] = COOKIE
            return await client.get("/async-health")

        with override_settings(SESSION_ENGINE="down_sessions"):
            response = asyncio.run(request())
        assert response.status_code == 200
        assert shop.flush(10)
        [message] = collector.messages
        assert "userId" not in message and message["anonymousId"] == "anon-5"
        assert "the session store is down" in capfd.readouterr().err

    def test_a_streamed_body_logs_with_the_request(
        self, shop: Any, collector: LocalCollector
    ) -> None:
        """Records logged while a StreamingHttpResponse streams (sync, async) carry the request."""
        from django.test import AsyncClient, Client

        client = Client()
        client.cookies["ajs_anonymous_id"] = COOKIE
        assert b"".join(client.get("/export").streaming_content) == b"a\n"

        async def stream() -> bytes:
            client = AsyncClient()
            client.cookies["ajs_anonymous_id"] = COOKIE
            response = await client.get("/async-export")
            return b"".join([chunk async for chunk in response.streaming_content])

        assert asyncio.run(stream()) == b"a\n"
        assert shop.flush(10)
        assert sorted((m["event"], m["anonymousId"]) for m in collector.messages) == [
            ("Async Export Streamed", "anon-5"),
            ("Export Streamed", "anon-5"),
        ]
        assert segmentio_logging.current_identity() == {}

    def test_settings_give_the_hook_and_the_proxies(
        self, shop: Any, collector: LocalCollector
    ) -> None:
        """SEGMENT_MIDDLEWARE names the user id hook by dotted path and trusts one proxy."""
        from django.test import AsyncClient, Client, override_settings

        setting = {"user_id": "django_shop.header_user", "trusted_proxies": "1"}
        with override_settings(SEGMENT_MIDDLEWARE=setting):
            headers = {"X-User-Id": "u7", "X-Forwarded-For": "10.1.1.1, 203.0.113.5"}
            assert Client().get("/cart", headers=headers).status_code == 200
            assert asyncio.run(AsyncClient().get("/async-cart", headers=headers)).status_code == 200
        assert shop.flush(10)
        sync, async_ = collector.messages
        for message in (sync, async_):
            assert message["userId"] == "u7"
            assert message["context"]["ip"] == "203.0.113.5"

    @pytest.mark.parametrize(
        ("setting", "error"),
        [
            ({"user": "x"}, "SEGMENT_MIDDLEWARE has unknown keys 'user'"),
            ("user_id", "SEGMENT_MIDDLEWARE must be a dict"),
            ({"trusted_proxies": -1}, "trusted_proxies must be at least 0"),
            ({"user_id": "no_such.module"}, "cannot import"),
        ],
    )
    def test_bad_settings_fail_at_start_up(self, project: None, setting: Any, error: str) -> None:
        """A wrong SEGMENT_MIDDLEWARE is ImproperlyConfigured when the middleware is built."""
        from django.core.exceptions import ImproperlyConfigured
        from django.test import override_settings

        from segmentio_logging.contrib.django import SegmentMiddleware

        with override_settings(SEGMENT_MIDDLEWARE=setting):
            with pytest.raises(ImproperlyConfigured, match=error):
                SegmentMiddleware(lambda request: None)


async def _async_view(request: Any) -> Any:
    return None


class TestUvicorn:
    def test_served_by_uvicorn(self, collector: LocalCollector, tmp_path: Path) -> None:
        """Django's ASGI handler under a real uvicorn: sync and async views carry the request."""
        pytest.importorskip("uvicorn")
        database = tmp_path / "db.sqlite3"
        port = free_port()
        env = child_env(
            collector,
            APPS,
            DJANGO_SHOP_SERVER="1",
            DJANGO_SHOP_DATABASE=str(database),
            SEGMENT_FLUSH_INTERVAL="0.05",
        )
        args = ["-m", "uvicorn", "django_shop:application", "--host", "127.0.0.1"]
        with ServerProcess(
            [*args, "--port", str(port), "--lifespan", "off"], tmp_path, env
        ) as server:
            server.wait_for(r"Uvicorn running on")
            url = f"http://127.0.0.1:{port}"
            headers = {
                "Cookie": f"ajs_anonymous_id={COOKIE}",
                "X-Forwarded-For": "203.0.113.8",
                "User-Agent": "test-agent",
            }
            assert get(f"{url}/cart?a=b", {**headers, "X-User-Id": "u1"}) == "ok"
            assert get(f"{url}/async-cart", headers) == "ok"
            assert get(f"{url}/quiet", headers) == "quiet"
            assert collector.wait_for_messages(2, timeout=20), server.text
            server.stop()
        [sync] = by_event(collector.messages, "Cart Viewed")
        [async_] = by_event(collector.messages, "Async Cart Viewed")
        assert (sync["userId"], sync["anonymousId"]) == ("u1", "anon-5")
        assert "userId" not in async_ and async_["anonymousId"] == "anon-5"
        for message in (sync, async_):
            assert message["context"]["ip"] == "203.0.113.8"
            assert message["context"]["userAgent"] == "test-agent"
        assert sync["context"]["page"] == {
            "path": "/cart",
            "url": f"{url}/cart?a=b",
            "search": "?a=b",
        }
        assert async_["context"]["page"]["path"] == "/async-cart"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork")
class TestGunicorn:
    def test_sync_middleware_under_gunicorn(
        self, collector: LocalCollector, tmp_path: Path
    ) -> None:
        """Django under gunicorn runs the middleware in sync mode; SIGTERM: delivered at exit."""
        pytest.importorskip("gunicorn")
        env = child_env(
            collector,
            APPS,
            DJANGO_SHOP_SERVER="1",
            DJANGO_SHOP_DATABASE=str(tmp_path / "db.sqlite3"),
            SEGMENT_FLUSH_INTERVAL="60",
        )
        args = ["-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1"]
        with ServerProcess([*args, "django_shop:wsgi_application"], tmp_path, env) as server:
            url = server.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)
            server.wait_for(r"Booting worker with pid")
            for n in range(3):
                headers = {
                    "Cookie": f"ajs_anonymous_id={COOKIE}",
                    "X-User-Id": f"u{n}",
                    "X-Forwarded-For": f"203.0.113.{n}",
                }
                assert get(f"{url}/cart?n={n}", headers) == "ok"
            assert get(f"{url}/quiet", headers) == "quiet"
            assert collector.requests == []  # held: a 60 s interval
            assert server.stop() == 0, server.text
        events = sorted(collector.messages, key=lambda m: m["userId"])
        assert [(m["event"], m["userId"]) for m in events] == [
            ("Cart Viewed", f"u{n}") for n in range(3)
        ]
        for n, message in enumerate(events):
            assert message["anonymousId"] == "anon-5"
            assert message["context"]["ip"] == f"203.0.113.{n}"
            assert message["context"]["page"]["search"] == f"?n={n}"


def test_without_django_the_import_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the middleware without Django's packages names the extra to install."""
    import importlib

    for name in ("asgiref", "asgiref.sync", "segmentio_logging.contrib.django"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "segmentio_logging.contrib.django")
    with pytest.raises(ImportError, match=r"pip install 'segmentio-logging\[django\]'"):
        importlib.import_module("segmentio_logging.contrib.django")
