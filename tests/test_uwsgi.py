"""A real uWSGI serving tests/uwsgi_app.py, with and without --enable-threads.

uWSGI loads the app in its master and forks two workers; their events go to a
LocalCollector in this process. Skipped when no ``uwsgi`` is installed beside this
Python (.ci/run installs it into its main virtual environment).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from segmentio_logging._threads import UWSGI_THREADS_BY_DEFAULT
from segmentio_logging.testing import LocalCollector
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
# The uwsgi of this interpreter's environment (one built for another Python cannot load
# this one's packages); TEST_UWSGI names another build, such as a uWSGI before 2.0.27.
UWSGI = os.environ.get("TEST_UWSGI") or shutil.which("uwsgi", path=str(Path(sys.executable).parent))
USERS = [f"u{n}" for n in range(12)]
WARNING = "uWSGI runs without --enable-threads"
BATCH_SIZE = 5

pytestmark = pytest.mark.skipif(UWSGI is None, reason="uwsgi is not installed")


def uwsgi_version() -> Tuple[int, ...]:
    assert UWSGI is not None
    text = subprocess.run([UWSGI, "--version"], capture_output=True, text=True, timeout=30).stdout
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class Server:
    """uWSGI on a free port; stopped by SIGTERM (``--die-on-term``), its output kept."""

    def __init__(self, collector: LocalCollector, log_path: Path, *flags: str) -> None:
        assert UWSGI is not None
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
        env.update(
            SEGMENT_HOST=collector.url,
            SEGMENT_WRITE_KEY="uwsgi-key",
            SEGMENT_FLUSH_INTERVAL="0.2",
            # Without threads a worker sends from the request that fills a batch: 12
            # requests over 2 workers fill at least one.
            SEGMENT_BATCH_SIZE=str(BATCH_SIZE),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        )
        command = [UWSGI, "--http-socket", f"127.0.0.1:{self.port}", "--master"]
        command += ["--processes", "2", "--die-on-term", "--need-app"]
        command += ["--module", "tests.uwsgi_app:application", "--virtualenv", sys.prefix]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*command, *flags], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def get(self, query: str, timeout: float = 10.0) -> str:
        url = f"http://127.0.0.1:{self.port}/?{query}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode().strip())

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until a request is answered (the workers are up), or fail with the output."""
        end = time.monotonic() + timeout
        while True:
            try:
                self.get("warm-up", timeout=2.0)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"uWSGI did not answer:\n{self.output()}")
                time.sleep(0.05)  # polling a condition: the port accepting

    def stop(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"uWSGI did not exit within {timeout} s of SIGTERM:\n{self.output()}")
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def counts(collector: LocalCollector, event: str) -> Dict[str, int]:
    found: Dict[str, int] = {}
    for message in collector.messages:
        if message["event"] == event:
            found[message["userId"]] = found.get(message["userId"], 0) + 1
    return found


def wait_for_users(collector: LocalCollector, timeout: float = 30.0) -> None:
    """Until every user's event arrived, one message at a time; returns at the timeout."""
    end = time.monotonic() + timeout
    while not set(USERS) <= set(counts(collector, "Page Viewed")):
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        collector.wait_for_messages(len(collector.messages) + 1, timeout=remaining)


@dataclasses.dataclass
class Run:
    """What one uWSGI run left: the receiver, the users seen before the stop, the exit."""

    collector: LocalCollector
    before_stop: List[str]
    threads: bool
    output: str
    status: int


@pytest.fixture(scope="module", params=["--enable-threads", "default"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """One uWSGI run: a request per user, the events seen before the stop, then SIGTERM."""
    flags = [str(request.param)] if request.param != "default" else []
    threads = bool(flags) or uwsgi_version() >= UWSGI_THREADS_BY_DEFAULT
    folder = tmp_path_factory.mktemp("uwsgi")
    with LocalCollector() as collector:
        server = Server(collector, folder / "uwsgi.log", *flags)
        try:
            server.wait_ready()
            pids = [server.get(user) for user in USERS]
            if threads:  # the workers' threads deliver within the flush interval
                wait_for_users(collector)
            before = sorted(counts(collector, "Page Viewed"))
        finally:
            status = server.stop()
        assert len(set(pids)) >= 1
        yield Run(collector, before, threads, server.output(), status)


def test_every_request_event_is_delivered_once(served: Run) -> None:
    """Each request's event reaches the receiver exactly once, with its user."""
    assert served.status == 0, served.output
    viewed = counts(served.collector, "Page Viewed")
    viewed.pop("warm-up", None)
    assert viewed == {user: 1 for user in USERS}, served.output
    messages = served.collector.messages
    assert len({m["messageId"] for m in messages}) == len(messages)


def test_the_workers_do_not_send_what_the_master_queued_before_the_fork(served: Run) -> None:
    """The event logged while the master loaded the app is not sent again by each worker."""
    messages = served.collector.messages
    assert counts(served.collector, "App Loaded").get("master", 0) <= 1, served.output
    pids = {m["properties"]["pid"] for m in messages if m["event"] == "Page Viewed"}
    loaded = {m["properties"]["pid"] for m in messages if m["event"] == "App Loaded"}
    assert not pids & loaded  # requests are served by the forked workers, not the master


def test_background_delivery_or_a_warning_with_the_fix(served: Run) -> None:
    """With threads, events arrive before the stop and nothing is said; without, one warning
    names --enable-threads, and full batches go from the requests that filled them."""
    if served.threads:
        assert set(USERS) <= set(served.before_stop)
        assert WARNING not in served.output
    else:
        # Once: in the master, which logged while loading the app; the workers inherit it.
        assert served.output.count(WARNING) == 1, served.output
        assert "Start uWSGI with --enable-threads" in served.output
        assert len(served.before_stop) >= BATCH_SIZE  # sent by the request that filled a batch
