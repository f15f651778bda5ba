"""Servers stopped by SIGTERM after load, in subprocesses: every event logged is delivered.

uvicorn, configured by the uvicorn recipe's ``--log-config`` file, restores the SIGTERM
disposition it found (the handler's hook) after its graceful shutdown and raises
the signal again: the hook delivers, then the process dies of SIGTERM. gunicorn's
own handlers stay in charge: its workers stop gracefully and deliver at exit.
Requests go through urllib3 to 127.0.0.1, from a few threads, bounded in count.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import urllib3

from segmentio_logging.testing import LocalCollector

from .processes import ROOT, Lines, child_env, finish, launch, python, reap_launched

UVICORN_RECIPE = ROOT / "docs" / "recipes" / "uvicorn.md"
WRITE_KEY = "server-key"

# A plain ASGI callable: one event per request, for the user the request names.
ASGI_APP = """\
import logging

log = logging.getLogger("shop")


async def app(scope, receive, send):
    assert scope["type"] == "http"
    user = dict(scope["headers"])[b"x-user-id"].decode()
    log.info("Page Viewed", extra={"user_id": user, "properties": {"path": scope["path"]}})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

# The same for WSGI; the response says which SIGTERM handler the worker runs.
WSGI_APP = """\
import logging
import signal

log = logging.getLogger("shop")


def app(environ, start_response):
    user = environ["HTTP_X_USER_ID"]
    log.info("Page Viewed", extra={"user_id": user, "properties": {"path": environ["PATH_INFO"]}})
    handler = signal.getsignal(signal.SIGTERM)
    name = getattr(handler, "__qualname__", repr(handler))
    start_response("200 OK", [("X-Sigterm-Handler", name)])
    return [b"ok"]
"""

GUNICORN_CONF = """\
import json

logconfig_dict = json.load(open("logging.json"))
workers = 2
graceful_timeout = 10
"""


def recipe_log_config() -> str:
    """The JSON block after ``<!-- config: uvicorn/logging.json -->`` in the uvicorn recipe."""
    lines = UVICORN_RECIPE.read_text(encoding="utf-8").splitlines()
    start = lines.index("<!-- config: uvicorn/logging.json -->") + 2
    end = lines.index("```", start)
    text = "\n".join(lines[start:end])
    json.loads(text)  # the recipe shows valid JSON
    return text


def server_env(collector: LocalCollector) -> Dict[str, str]:
    """The collector as the receiver; nothing leaves before the stop (2,500 or 30 s)."""
    return child_env(
        SEGMENT_WRITE_KEY=WRITE_KEY,
        SEGMENT_HOST=collector.url,
        SEGMENT_FLUSH_INTERVAL="30",
        SEGMENT_BATCH_SIZE="2500",
    )


class Load:
    """Requests from a few threads, each naming a new user, until told to stop or refused."""

    def __init__(self, url: str, threads: int = 4, per_thread: int = 500) -> None:
        self.url = url
        self.per_thread = per_thread
        self.answered: List[str] = []
        self.handlers: Set[str] = set()
        self.sent: Set[str] = set()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._http = urllib3.PoolManager(maxsize=threads)
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, number: int) -> None:
        for n in range(self.per_thread):
            if self.stop.is_set():
                return
            user = f"u{number}-{n}"
            with self._lock:
                self.sent.add(user)
            try:
                response = self._http.request(
                    "GET",
                    f"{self.url}/orders/{n}",
                    headers={"X-User-Id": user},
                    timeout=10.0,
                    retries=False,
                )
            except urllib3.exceptions.HTTPError:
                return  # the server is going away
            with self._changed:
                if response.status == 200:
                    self.answered.append(user)
                    self.handlers.add(response.headers.get("X-Sigterm-Handler", ""))
                self._changed.notify_all()

    def wait_answered(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests were answered (fails at the timeout)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.answered) >= count, timeout):
                pytest.fail(f"only {len(self.answered)} of {count} requests answered")

    def finish(self, *, stop: bool = True) -> Tuple[List[str], Set[str]]:
        """Stop (or let every request go), wait for the threads; the users answered and sent."""
        if stop:
            self.stop.set()
        for thread in self._threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in self._threads)
        with self._lock:
            return list(self.answered), set(self.sent)


def delivered_users(collector: LocalCollector) -> List[str]:
    return [str(m["userId"]) for m in collector.messages]


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """The server and its workers are killed when a test ends."""
    yield
    reap_launched()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A folder with the recipe's logging.json and the two apps."""
    (tmp_path / "logging.json").write_text(recipe_log_config(), encoding="utf-8")
    (tmp_path / "shop_asgi.py").write_text(ASGI_APP, encoding="utf-8")
    (tmp_path / "shop_wsgi.py").write_text(WSGI_APP, encoding="utf-8")
    (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF, encoding="utf-8")
    return tmp_path


def stop(process: subprocess.Popen[str], output: Lines) -> int:
    """SIGTERM, then the exit status (bounded)."""
    process.send_signal(signal.SIGTERM)
    code, _, _ = finish(process, timeout=40)
    output.join()
    return code


class TestUvicorn:
    def test_sigterm_after_load_delivers_every_event_then_dies_of_the_signal(
        self, collector: LocalCollector, app_dir: Path
    ) -> None:
        """uvicorn --log-config: under load, SIGTERM delivers every answered request's event."""
        pytest.importorskip("uvicorn")
        process = launch(
            python(
                "-m",
                "uvicorn",
                "--app-dir",
                str(app_dir),
                "--log-config",
                "logging.json",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-access-log",
                "--lifespan",
                "off",
                "shop_asgi:app",
            ),
            server_env(collector),
            cwd=app_dir,
        )
        output = Lines(process.stderr)
        [running] = output.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        load = Load(running.group(1))
        load.wait_answered(800)
        assert collector.messages == []  # everything so far waits in the queue
        code = stop(process, output)  # while the load goes on
        answered, sent = load.finish()
        assert code == -signal.SIGTERM, output.text
        assert "Traceback" not in output.text
        assert collector.wait_for_messages(len(answered), timeout=10)
        users = delivered_users(collector)
        assert len(users) == len(set(users))  # once each
        assert set(answered) <= set(users) <= sent


@pytest.mark.skipif(not hasattr(signal, "SIGCHLD"), reason="gunicorn needs POSIX")
class TestGunicorn:
    def test_its_own_sigterm_handlers_stay_in_charge_and_workers_deliver(
        self, collector: LocalCollector, app_dir: Path
    ) -> None:
        """gunicorn keeps its handlers (the workers run its handle_exit); a stop delivers all."""
        pytest.importorskip("gunicorn")
        process = launch(
            python(
                "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "shop_wsgi:app"
            ),
            server_env(collector),
            cwd=app_dir,
        )
        output = Lines(process.stderr)
        [listening] = output.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+)")
        output.wait_for(r"Booting worker with pid: \d+", count=2)
        load = Load(listening.group(1), per_thread=50)
        answered, sent = load.finish(stop=False)  # all 200 requests, then the stop
        assert len(answered) == len(sent) == 200
        assert load.handlers == {"Worker.handle_exit"}  # gunicorn's, in every worker
        assert collector.messages == []
        code = stop(process, output)
        assert code == 0, output.text  # the arbiter's graceful stop, not death by SIGTERM
        assert collector.wait_for_messages(200, timeout=10)
        assert sorted(delivered_users(collector)) == sorted(answered)
