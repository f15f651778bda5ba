"""The recipes of docs/integrations.md, each run as printed against a LocalCollector.

A recipe is the fenced block after ``<!-- recipe: NAME -->``; ``dir/file.py``
names the file it is written to. The write key and the host reach it through
``SEGMENT_WRITE_KEY`` and ``SEGMENT_HOST``, as in a deployment.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from segmentio_logging.testing import LocalCollector

from ..helpers import free_port, tagged_recipes
from .helpers import ROOT, WRITE_KEY, ServerProcess, by_event, child_env

PAGE = ROOT / "docs" / "integrations.md"
COOKIE = "ajs_anonymous_id=%22anon-9%22"

pytest_plugins = ["pytester"]


# The page's recipes by name, each name under integrations/ (the other pages'
# recipes are run by tests/test_recipes.py).
RECIPES = {
    name.partition("/")[2]: code.lstrip("\n") for name, (_, code) in tagged_recipes([PAGE]).items()
}


def write_recipe(name: str, folder: Path) -> Path:
    """Write the recipe ``dir/file.py`` to ``folder/file.py``."""
    path = folder / name.rpartition("/")[2]
    path.write_text(RECIPES[name], encoding="utf-8")
    return path


def request(
    url: str, method: str = "GET", headers: Optional[Dict[str, str]] = None
) -> Tuple[int, Dict[str, str], str]:
    """One request; its status, headers (lower-case names) and body."""
    host, _, port = url.split("//")[1].partition(":")
    connection = http.client.HTTPConnection(host, int(port.partition("/")[0]), timeout=20)
    try:
        connection.request(method, "/" + url.split("/", 3)[3], headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode("utf-8")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def test_every_recipe_is_run_here() -> None:
    """Each tagged block of the page is one of the recipes this module runs."""
    assert set(RECIPES) == {
        "django/settings.py",
        "django/views.py",
        "django/asgi.py",
        "fastapi/app.py",
        "flask/app.py",
        "pytest/test_checkout.py",
    }


DJANGO_PROJECT = """
from settings import *  # the recipe: MIDDLEWARE, LOGGING, SEGMENT_MIDDLEWARE

SECRET_KEY = "tests-only"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "urls"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
"""
DJANGO_URLS = """
from django.urls import path

import views

urlpatterns = [path("checkout", views.checkout)]
"""
DJANGO_CLIENT = """
import os

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "project"
django.setup()

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

call_command("migrate", verbosity=0)
client = Client(headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.4"})
client.force_login(User.objects.create_user(username="ada", password="x"))
client.cookies["ajs_anonymous_id"] = "%22anon-9%22"
assert client.get("/checkout?coupon=x").content == b"thanks"
print("user", User.objects.get(username="ada").pk)
"""


@pytest.fixture
def django_project(tmp_path: Path) -> Path:
    """The Django recipes written as a project, with what a real one has besides."""
    pytest.importorskip("django")
    for name in ("django/settings.py", "django/views.py", "django/asgi.py"):
        write_recipe(name, tmp_path)
    (tmp_path / "project.py").write_text(DJANGO_PROJECT, encoding="utf-8")
    (tmp_path / "urls.py").write_text(DJANGO_URLS, encoding="utf-8")
    return tmp_path


class TestDjango:
    def test_settings_and_view(self, collector: LocalCollector, django_project: Path) -> None:
        """With the two settings, a signed-in request's event carries its user, cookie, ip."""
        (django_project / "client.py").write_text(DJANGO_CLIENT, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "client.py"],
            cwd=django_project,
            env=child_env(collector, django_project),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        pk = done.stdout.split()[-1]
        # Delivered at the exit of the process, without a flush.
        [event] = collector.messages
        assert event["event"] == "Order Completed"
        assert (event["userId"], event["anonymousId"]) == (pk, "anon-9")
        assert event["properties"] == {"total": 9.5}
        assert event["context"]["ip"] == "203.0.113.4"  # the setting trusts one proxy
        assert event["context"]["page"]["url"] == "http://testserver/checkout?coupon=x"

    def test_asgi_under_uvicorn_delivers_at_sigterm(
        self, collector: LocalCollector, django_project: Path
    ) -> None:
        """Django's ASGI application, wrapped, under uvicorn: what is held goes at SIGTERM."""
        pytest.importorskip("uvicorn")
        port = free_port()
        env = child_env(
            collector, django_project, DJANGO_SETTINGS_MODULE="project", SEGMENT_FLUSH_INTERVAL="60"
        )
        args = ["-m", "uvicorn", "asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        with ServerProcess(args, django_project, env) as server:
            server.wait_for(r"Uvicorn running on")
            for n in range(5):
                status, _, body = request(
                    f"http://127.0.0.1:{port}/checkout?n={n}", headers={"Cookie": COOKIE}
                )
                assert (status, body) == (200, "thanks")
            assert collector.requests == []  # held: a 60 s interval
            assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.text
        events = by_event(collector.messages, "Order Completed")
        assert sorted(e["context"]["page"]["search"] for e in events) == [
            f"?n={n}" for n in range(5)
        ]
        assert {e["anonymousId"] for e in events} == {"anon-9"}


class TestFastAPI:
    def test_recipe_under_uvicorn(self, collector: LocalCollector, tmp_path: Path) -> None:
        """The recipe under uvicorn: the hook finds the dependency's user; SIGTERM delivers."""
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
        write_recipe("fastapi/app.py", tmp_path)
        port = free_port()
        env = child_env(collector, tmp_path, SEGMENT_FLUSH_INTERVAL="60")
        args = ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
        with ServerProcess(args, tmp_path, env) as server:
            server.wait_for(r"Uvicorn running on")  # the lifespan startup is done before
            url = f"http://127.0.0.1:{port}/checkout"
            for headers in (
                {"Authorization": "User u1", "Cookie": COOKIE},
                {"Cookie": COOKIE},
                {},
            ):
                status, _, body = request(url, "POST", headers)
                assert (status, body) == (200, '{"ok":true}')
            assert collector.requests == []
            assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.text
        signed_in, anonymous = collector.messages  # the third had no id: skipped
        assert (signed_in["userId"], signed_in["anonymousId"]) == ("u1", "anon-9")
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-9"
        assert signed_in["context"]["page"]["path"] == "/checkout"
        assert signed_in["context"]["ip"] == "127.0.0.1"


class TestFlask:
    @pytest.fixture
    def url(
        self, collector: LocalCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[str]:
        serving = pytest.importorskip("werkzeug.serving")
        pytest.importorskip("flask")
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
        monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "0.05")
        scope: Dict[str, Any] = {"__name__": "flask_recipe"}
        exec(compile(RECIPES["flask/app.py"], str(PAGE), "exec"), scope)
        server = serving.make_server("127.0.0.1", 0, scope["app"], threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            for handler in list(scope["log"].handlers):
                scope["log"].removeHandler(handler)
                handler.close()

    def test_recipe(self, url: str, collector: LocalCollector) -> None:
        """After a login, the session's user and the cookie's id reach the checkout event."""
        status, headers, _ = request(f"{url}/login/ada", "POST")
        assert status == 200
        session = headers["set-cookie"].partition(";")[0]
        status, _, _ = request(f"{url}/checkout", "POST", {"Cookie": f"{session}; {COOKIE}"})
        assert status == 200
        status, _, _ = request(f"{url}/checkout", "POST", {"Cookie": COOKIE})
        assert status == 200
        assert collector.wait_for_messages(2)
        signed_in, anonymous = collector.messages
        assert (signed_in["userId"], signed_in["anonymousId"]) == ("ada", "anon-9")
        assert "userId" not in anonymous and anonymous["anonymousId"] == "anon-9"
        assert signed_in["properties"] == {"total": 9.5}


def test_pytest_recipe(pytester: pytest.Pytester) -> None:
    """The test of the pytest recipe passes: the event its code logs reaches the fixture."""
    pytester.makepyfile(test_checkout=RECIPES["pytest/test_checkout.py"])
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
