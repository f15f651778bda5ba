"""The documented recipes, each run as printed against a LocalCollector standing in for Segment.

A recipe is the fenced block after ``<!-- recipe: NAME -->`` on any page of the
documentation (README.md, ``docs/**/*.md``), its name used once across them. The
write key and the host reach it through ``SEGMENT_WRITE_KEY`` and
``SEGMENT_HOST``, as in a deployment; nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import copy
import logging
import logging.config
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Set

import pytest

import segmentio_logging
from segmentio_logging import SegmentHandler
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import ROOT, doc_pages, tagged_recipes

HELPERS = Path(__file__).resolve().parent / "recipes"
WRITE_KEY = "recipe-key"
GUNICORN = [sys.executable, "-m", "gunicorn"]
CELERY = [sys.executable, "-m", "celery"]
QUIET_WORKER = ["--without-heartbeat", "--without-gossip", "--without-mingle"]

RECIPES = tagged_recipes(doc_pages())


def recipe(name: str) -> str:
    return RECIPES[name][1]


def run_recipe(name: str) -> Dict[str, Any]:
    """Execute a Python recipe in a fresh namespace; returns that namespace."""
    scope: Dict[str, Any] = {"__name__": f"readme_recipe_{name.replace('-', '_')}"}
    page, code = RECIPES[name]
    exec(compile(code, str(page), "exec"), scope)
    return scope


def write_recipe(name: str, folder: Path) -> Path:
    """Write the recipe ``dir/file.ext`` to ``folder/file.ext``, without the padding."""
    path = folder / name.rpartition("/")[2]
    path.write_text(recipe(name).lstrip("\n"), encoding="utf-8")
    return path


def segment_handlers() -> List[SegmentHandler]:
    """Every live SegmentHandler that logging knows of."""
    found = []
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if isinstance(handler, SegmentHandler):
            found.append(handler)
    return found


def flush_all(timeout: float = 5.0) -> None:
    for handler in segment_handlers():
        assert handler.flush(timeout), f"{handler!r} did not flush within {timeout} s"


def assert_message(message: Dict[str, Any], kind: str, **fields: Any) -> None:
    """A well-formed Segment message of type ``kind`` with these fields."""
    assert message["type"] == kind
    assert isinstance(message["messageId"], str) and message["messageId"]
    assert isinstance(message["timestamp"], str) and message["timestamp"]
    assert message["context"]["library"]["name"] == "segmentio-logging"
    for key, value in fields.items():
        assert message.get(key) == value, (key, message)


def assert_requests(collector: LocalCollector, write_key: str = WRITE_KEY) -> None:
    assert collector.requests, "no request arrived"
    for request in collector.requests:
        assert request.path == "/v1/batch"
        assert request.write_key == write_key


def child_env(collector: LocalCollector, folder: Path, **extra: str) -> Dict[str, str]:
    """The environment of a server subprocess: the collector, the recipe folder on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    path = [str(folder), str(HELPERS), str(ROOT), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        SEGMENT_HOST=collector.url,
        SEGMENT_WRITE_KEY=WRITE_KEY,
        # Nothing leaves before shutdown unless the process delivers it at exit.
        SEGMENT_FLUSH_INTERVAL="30",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class OutputReader:
    """Collects a subprocess's output lines in a thread; waits for a pattern."""

    def __init__(self, stream: Any) -> None:
        self.lines: List[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        stream.close()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> List[re.Match[str]]:
        """The first ``count`` matches of ``pattern``; fails with the output at the timeout."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in map(regex.search, self.lines) if m is not None]
                if len(found) >= count:
                    return found[:count]
                remaining = end - time.monotonic()
                if remaining <= 0 or self.closed:
                    text = "\n".join(self.lines[-40:])
                    pytest.fail(f"{count} x {pattern!r} not seen within {timeout} s:\n{text}")
                self._cond.wait(min(remaining, 0.5))

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig`` and wait for the exit; kill (and fail) if it does not come."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        pytest.fail(f"the process did not exit within {timeout} s of signal {sig}")


@pytest.fixture
def segment_env(monkeypatch: pytest.MonkeyPatch, collector: LocalCollector) -> LocalCollector:
    """SEGMENT_* variables pointing at the collector, with a short flush interval."""
    for name in list(os.environ):
        if name.startswith("SEGMENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("SEGMENT_HOST", collector.url)
    monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "0.05")
    return collector


@pytest.fixture(autouse=True)
def _close_new_handlers() -> Iterator[None]:
    """Close the SegmentHandlers (and stop the listeners) a recipe created."""
    from segmentio_logging import _handler

    before = set(map(id, segment_handlers()))
    listeners = list(_handler._listeners)
    yield
    for listener in list(_handler._listeners):
        if listener not in listeners:
            listener.stop()
    for handler in segment_handlers():
        if id(handler) not in before:
            handler.close()


class TestDocs:
    def test_every_recipe_is_run_here(self) -> None:
        """Each tagged block of the docs is one of the recipes this module runs (those of
        the integrations page: tests/contrib/test_integrations_docs.py)."""
        assert {name for name in RECIPES if not name.startswith("integrations/")} == {
            "dictconfig",
            "fileconfig/logging.ini",
            "fileconfig",
            "django/settings.py",
            "queue-listener",
            "structlog",
            "gunicorn/gunicorn.conf.py",
            "gunicorn/app.py",
            "lambda-flush",
            "lambda-sync",
            "eu",
            "rudderstack",
        }


class TestDictConfig:
    def test_recipe(self, segment_env: LocalCollector) -> None:
        """The dictConfig recipe sends its track call and skips the record without a user."""
        run_recipe("dictconfig")
        [handler] = segment_handlers()
        assert handler.flush(5)
        assert_requests(segment_env)
        [message] = segment_env.messages
        assert_message(
            message,
            "track",
            event="Order Completed",
            userId="u1",
            properties={"order_id": "o-17"},
        )
        assert handler.stats()["skipped"] == 1
        assert handler.options.batch_size == 50


class TestFileConfig:
    def test_recipe(
        self, segment_env: LocalCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The logging.ini recipe builds the handler from kwargs=; the record is an identify."""
        monkeypatch.chdir(tmp_path)
        write_recipe("fileconfig/logging.ini", tmp_path)
        run_recipe("fileconfig")
        [handler] = segment_handlers()
        assert handler.options.capture_extra is True
        assert handler.flush(5)
        assert_requests(segment_env)
        [message] = segment_env.messages
        assert_message(message, "identify", userId="u2", traits={"name": "Ada", "plan": "pro"})


class TestDjango:
    def test_logging_setting_through_dictconfig(self, segment_env: LocalCollector) -> None:
        """LOGGING goes through dictConfig as Django applies it; the shop logger sends."""
        settings = run_recipe("django/settings.py")
        logging.config.dictConfig(copy.deepcopy(settings["LOGGING"]))
        logging.getLogger("shop").info("Order Completed", extra={"user_id": "u5"})
        flush_all()
        [message] = segment_env.messages
        assert_message(message, "track", event="Order Completed", userId="u5")

    def test_logging_setting_through_django_setup(self, segment_env: LocalCollector) -> None:
        """django.setup() applies LOGGING after Django's defaults; the shop logger sends."""
        django = pytest.importorskip("django")
        from django.conf import settings as django_settings  # type: ignore[import-untyped,import-not-found,unused-ignore]

        if django_settings.configured:
            pytest.skip("Django settings were configured by another test of this process")
        settings = run_recipe("django/settings.py")
        django_settings.configure(
            LOGGING=settings["LOGGING"], MIDDLEWARE=settings["MIDDLEWARE"], INSTALLED_APPS=[]
        )
        django.setup()
        logging.getLogger("shop").info("Order Completed", extra={"user_id": "u6"})
        flush_all()
        [message] = segment_env.messages
        assert_message(message, "track", event="Order Completed", userId="u6")

    def test_middleware_setting_names_the_shipped_middleware(self) -> None:
        """The recipe's MIDDLEWARE entry imports as the contrib middleware (tested in contrib)."""
        pytest.importorskip("django")
        from django.utils.module_loading import import_string  # type: ignore[import-untyped,import-not-found,unused-ignore]

        from segmentio_logging.contrib.django import SegmentMiddleware

        settings = run_recipe("django/settings.py")
        assert [import_string(path) for path in settings["MIDDLEWARE"]] == [SegmentMiddleware]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig's listener key is 3.12+")
class TestQueueListener:
    def test_recipe(self, segment_env: LocalCollector) -> None:
        """The QueueHandler layout starts SegmentQueueListener, which hands records over."""
        from segmentio_logging import SegmentQueueListener

        run_recipe("queue-listener")
        [queue_handler] = logging.getLogger().handlers
        listener = queue_handler.listener  # type: ignore[attr-defined]
        assert isinstance(listener, SegmentQueueListener)
        assert segment_env.wait_for_messages(1, timeout=5)
        listener.stop()
        assert_requests(segment_env)
        [message] = segment_env.messages
        assert_message(
            message, "track", event="Signed Up", userId="u3", properties={"plan": "free"}
        )


class TestStructlog:
    def test_recipe(self, segment_env: LocalCollector) -> None:
        """A bound user_id and explicit keyword fields reach the record through structlog."""
        structlog = pytest.importorskip("structlog")
        try:
            scope = run_recipe("structlog")
            scope["checkout"]("u4", "o-4")
            assert structlog.contextvars.get_contextvars() == {}
            scope["log"].info("profile", user_id="u4", traits={"plan": "pro"})
            scope["log"].debug("Below The Level", user_id="u4")
            flush_all()
        finally:
            structlog.reset_defaults()
            structlog.contextvars.clear_contextvars()
        assert_requests(segment_env)
        track, identify = segment_env.messages
        assert_message(
            track, "track", event="Order Completed", userId="u4", properties={"order_id": "o-4"}
        )
        assert_message(identify, "identify", userId="u4", traits={"plan": "pro"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork")
class TestGunicorn:
    def test_recipe(self, collector: LocalCollector, tmp_path: Path) -> None:
        """Two preloaded sync workers each deliver their events, all of them at SIGTERM."""
        pytest.importorskip("gunicorn")
        write_recipe("gunicorn/gunicorn.conf.py", tmp_path)
        write_recipe("gunicorn/app.py", tmp_path)
        process = subprocess.Popen(
            [
                *GUNICORN,
                "-c",
                "gunicorn.conf.py",
                "--bind",
                "127.0.0.1:0",
                "gunicorn_preloaded:app",
            ],
            cwd=tmp_path,
            env=child_env(collector, tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        output = OutputReader(process.stderr)
        try:
            [listening] = output.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+)")
            booted = output.wait_for(r"Booting worker with pid: (\d+)", count=2)
            url = listening.group(1)
            workers = {int(m.group(1)) for m in booted}
            served = self.hit(url, workers)
            # Batches of 100 every 30 s: nothing was sent yet, all of it waits in the queues.
            assert collector.requests == []
        finally:
            status = stop(process)
        assert status == 0, output.text
        assert_requests(collector)
        messages = collector.messages
        views = [m for m in messages if m["type"] == "track" and m["event"] == "Page Viewed"]
        assert sorted(m["userId"] for m in views) == sorted(f"u{n}" for n in range(served))
        for message in views:
            assert_message(message, "track", event="Page Viewed")
            assert message["properties"]["path"].startswith("/orders/")
        assert {m["properties"]["pid"] for m in views} == workers
        # The arbiter's own event arrives once: the forked workers did not inherit it.
        arbiter = [m for m in messages if m.get("anonymousId") == "gunicorn-arbiter"]
        assert [m["event"] for m in arbiter] == ["Arbiter Ready"]
        assert len(messages) == served + 1

    @staticmethod
    def hit(url: str, workers: Set[int], limit: int = 96) -> int:
        """Requests from four threads until every worker served some (under a batch of 100)."""
        served: Dict[int, int] = {}  # request number -> the pid that served it
        lock = threading.Lock()

        def client(numbers: range) -> None:
            for n in numbers:
                request = urllib.request.Request(
                    f"{url}/orders/{n}", headers={"X-User-Id": f"u{n}"}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.read() == b"ok\n"
                    with lock:
                        served[n] = int(response.headers["X-Worker-Pid"])

        sent = 0
        while sent < limit and set(served.values()) != workers:
            threads = [
                threading.Thread(target=client, args=(range(sent + i, sent + 8, 4),))
                for i in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            sent += 8
        assert len(served) == sent, "a request failed"
        assert set(served.values()) == workers, f"not every worker served: {served}"
        return sent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the prefork pool needs fork")
class TestLambda:
    EVENT: ClassVar[Dict[str, str]] = {"user_id": "u8", "order_id": "o-8"}

    @pytest.fixture
    def slow_interval(self, segment_env: LocalCollector, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only the recipe's own delivery can bring the event in before the function returns."""
        monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "30")

    @pytest.mark.parametrize("name", ["lambda-flush", "lambda-sync"])
    def test_delivered_before_the_function_returns(
        self, name: str, segment_env: LocalCollector, slow_interval: None
    ) -> None:
        """The event is at the receiver when the handler function returns."""
        scope = run_recipe(name)
        assert scope["lambda_handler"](dict(self.EVENT), None) == {"statusCode": 200}
        assert_requests(segment_env)
        [message] = segment_env.messages
        assert_message(
            message, "track", event="Order Completed", userId="u8", properties={"order_id": "o-8"}
        )
        assert segmentio_logging.current_identity() == {}


class TestEURegion:
    EU = "https://events.eu1.segmentapis.com"

    def test_recipe(self, segment_env: LocalCollector) -> None:
        """The handler posts to the EU endpoint; nothing is sent, nothing leaves 127.0.0.1."""
        handler = run_recipe("eu")["handler"]
        assert handler.options.host == self.EU
        assert handler._pipeline.transport.url == f"{self.EU}/v1/batch"
        handler.close()
        assert handler.stats()["enqueued"] == 0
        assert segment_env.requests == []

    def test_the_environment_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SEGMENT_HOST set to the EU endpoint does the same."""
        monkeypatch.setenv("SEGMENT_HOST", self.EU)
        handler = SegmentHandler("key")
        try:
            assert handler._pipeline.transport.url == f"{self.EU}/v1/batch"
        finally:
            handler.close()


class TestRudderStack:
    def test_recipe(self, segment_env: LocalCollector, monkeypatch: pytest.MonkeyPatch) -> None:
        """Batches reach the data plane at /v1/batch with its write key, answered with "OK"."""
        monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", segment_env.url)
        monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", "rudder-key")
        segment_env.default = Reply(200, "OK")  # the data plane answers text, not JSON
        handler = run_recipe("rudderstack")["handler"]
        log = logging.getLogger("shop")
        log.setLevel(logging.INFO)
        log.info("Order Completed", extra={"user_id": "u9", "properties": {"revenue": 9.95}})
        assert handler.flush(5)
        assert_requests(segment_env, write_key="rudder-key")
        [message] = segment_env.messages
        assert_message(
            message, "track", event="Order Completed", userId="u9", properties={"revenue": 9.95}
        )
        stats = handler.stats()
        assert (stats["delivered"], stats["failed"]) == (1, 0)
