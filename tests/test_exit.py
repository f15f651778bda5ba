"""Delivery at interpreter exit, in subprocesses: no flush, SIGTERM, hung receivers, 3.12 layout.

And the SIGTERM hook: a process that SIGTERM would kill outright delivers (or
spools) what it holds, then dies of the signal as it would have.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from segmentio_logging import SegmentHandler
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import closed_url
from .processes import child_env, finish, launch, python, reap_launched, wait_ready

# Each script gets the receiver's URL as argv[1] and prints "ready" once it has logged.
PRELUDE = """\
import logging, sys
from segmentio_logging import SegmentHandler
url = sys.argv[1]
log = logging.getLogger("app")
log.setLevel(logging.INFO)
"""


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Whatever a test started is killed when it ends, even when it failed."""
    yield
    reap_launched()


def start(script: str, url: str, **env: str) -> subprocess.Popen[str]:
    """Run ``script`` in a fresh interpreter that imports this checkout."""
    code = PRELUDE + textwrap.dedent(script)
    return launch(python("-c", code, url), child_env(**env))


def indexes(collector: LocalCollector) -> List[int]:
    return sorted(m["properties"]["i"] for m in collector.messages)


@pytest.fixture
def silent_socket() -> Iterator[str]:
    """A listening socket that completes connections (the kernel does) and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX: select on pipes, signals")
class TestDeliveryAtExit:
    def test_exit_without_flush_delivers_everything(self, collector: LocalCollector) -> None:
        """A script that logs 1,000 records and exits without flush delivers all 1,000."""
        process = start(
            """
            log.addHandler(SegmentHandler("key", host=url, flush_interval=30))
            for i in range(1000):
                log.info("Exit Event", extra={"user_id": f"u{i}", "properties": {"i": i}})
            """,
            collector.url,
        )
        code, _, err = finish(process)
        assert code == 0, err
        assert "Traceback" not in err
        assert collector.wait_for_messages(1000, timeout=5)
        assert indexes(collector) == list(range(1000))

    def test_client_calls_without_flush_are_delivered(self, collector: LocalCollector) -> None:
        """The classic module-level track() calls are delivered at exit too."""
        process = start(
            """
            import segmentio_logging
            segmentio_logging.init("key", host=url, flush_interval=30)
            for i in range(300):
                segmentio_logging.track("s1", "u1", "Clicked", {"i": i})
            """,
            collector.url,
        )
        code, _, err = finish(process)
        assert code == 0, err
        assert collector.wait_for_messages(300, timeout=5)
        assert indexes(collector) == list(range(300))

    def test_sigterm_handler_that_exits_delivers(self, collector: LocalCollector) -> None:
        """SIGTERM with a handler that calls sys.exit (as servers do) still delivers."""
        process = start(
            """
            import signal, time
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
            log.addHandler(SegmentHandler("key", host=url, flush_interval=30, batch_size=1000))
            for i in range(200):
                log.info("Before Term", extra={"user_id": "u1", "properties": {"i": i}})
            print("ready", flush=True)
            while True:  # see IDLE_UNTIL_SIGNALLED
                time.sleep(0.05)
            """,
            collector.url,
        )
        wait_ready(process)
        assert collector.messages == []  # batch_size and interval hold them until exit
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == 0, err
        assert collector.wait_for_messages(200, timeout=5)
        assert indexes(collector) == list(range(200))

    @pytest.mark.parametrize("receiver", ["hanging collector", "silent socket"])
    def test_exit_never_hangs_on_a_receiver_that_never_answers(
        self, receiver: str, collector: LocalCollector, silent_socket: str
    ) -> None:
        """Against a receiver that never answers, exit takes shutdown_timeout plus a margin."""
        if receiver == "hanging collector":
            collector.default = Reply(hang=True)
            url = collector.url
        else:
            url = silent_socket
        process = start(
            """
            handler = SegmentHandler(
                "key", host=url, timeout=30, max_retries=0, shutdown_timeout=1,
                flush_interval=0.01,
            )
            log.addHandler(handler)
            for i in range(10):
                log.info("Unanswered", extra={"user_id": "u1", "properties": {"i": i}})
            handler.flush(0.3)
            print("ready", flush=True)
            """,
            url,
        )
        wait_ready(process)
        started = time.monotonic()
        code, _, _ = finish(process, timeout=30)
        assert time.monotonic() - started < 1 + 3.0
        assert code == 0
        collector.release_hangs()

    @pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig listener: key is 3.12+")
    def test_queue_handler_layout_delivers_at_exit(self, collector: LocalCollector) -> None:
        """SegmentHandler behind dictConfig's QueueHandler + SegmentQueueListener delivers."""
        process = start(
            """
            import logging.config
            logging.config.dictConfig({
                "version": 1,
                "disable_existing_loggers": False,  # keep the prelude's "app" logger
                "handlers": {
                    "segment": {
                        "class": "segmentio_logging.SegmentHandler",
                        "write_key": "key",
                        "host": url,
                        "flush_interval": 30,
                        "batch_size": 1000,
                    },
                    "queue": {
                        "class": "logging.handlers.QueueHandler",
                        "handlers": ["segment"],
                        "listener": "segmentio_logging.SegmentQueueListener",
                    },
                },
                "root": {"level": "INFO", "handlers": ["queue"]},
            })
            for i in range(300):
                log.info("Queued", extra={"user_id": "u1", "properties": {"i": i}})
            """,
            collector.url,
        )
        code, _, err = finish(process)
        assert code == 0, err
        assert "Traceback" not in err
        assert collector.wait_for_messages(300, timeout=5)
        assert indexes(collector) == list(range(300))


# 1,000 events that wait in the queue: a batch would need 2,500, or 30 s.
LOG_1000 = """
for i in range(1000):
    log.info("Before Term", extra={"user_id": f"u{i}", "properties": {"i": i}})
"""
QUEUED = "flush_interval=30, batch_size=2500"
KILLED_BY_SIGTERM = -signal.SIGTERM
# The child's main thread idles in short sleeps, as an application's loop does. A
# signal that arrives after the interpreter last looked for one, and before a long
# ``time.sleep`` began, is handled only when that sleep ends: a single
# ``time.sleep(60)`` right after "ready" met SIGTERM there about once in 15 runs.
IDLE_UNTIL_SIGNALLED = "while True:\n    time.sleep(0.05)\n"


def start_and_log(setup: str, url: str, **env: str) -> subprocess.Popen[str]:
    """``setup`` (which adds a handler), then LOG_1000, "ready", and an idle loop."""
    script = (
        textwrap.dedent(setup)
        + LOG_1000
        + 'print("ready", flush=True)\nimport time\n'
        + IDLE_UNTIL_SIGNALLED
    )
    return start(script, url, **env)


def recover(spool: Path, url: str) -> SegmentHandler:
    """A handler of this process on ``spool``: it claims and sends what a dead one left."""
    handler = SegmentHandler("key", host=url, spool_path=str(spool), handle_sigterm=False)
    assert handler.flush(20)
    handler.close()
    return handler


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals")
class TestSigterm:
    def test_sigterm_delivers_everything_then_kills_the_process_by_the_signal(
        self, collector: LocalCollector
    ) -> None:
        """Default disposition: SIGTERM delivers the 1,000 queued events, then the status is -15."""
        process = start_and_log(
            f"""
            import signal
            log.addHandler(SegmentHandler("key", host=url, {QUEUED}))
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            """,
            collector.url,
        )
        wait_ready(process)
        assert collector.messages == []  # all 1,000 wait in the queue
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == KILLED_BY_SIGTERM, err
        assert "Traceback" not in err
        assert collector.wait_for_messages(1000, timeout=5)
        assert indexes(collector) == list(range(1000))

    @pytest.mark.parametrize("receiver", ["up", "down"])
    def test_sigterm_with_a_spool_leaves_every_event_on_disk_or_delivered(
        self, receiver: str, collector: LocalCollector, tmp_path: Path
    ) -> None:
        """With spool_path, what SIGTERM's close did not deliver is on disk for the next process."""
        spool = tmp_path / "spool"
        url = collector.url if receiver == "up" else closed_url()
        process = start_and_log(
            f"""
            log.addHandler(SegmentHandler(
                "key", host=url, spool_path={str(spool)!r}, {QUEUED},
                shutdown_timeout=2, max_retries=0,
            ))
            """,
            url,
        )
        wait_ready(process)
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == KILLED_BY_SIGTERM, err
        assert "Traceback" not in err
        if receiver == "down":
            assert collector.messages == []
            assert "1000 events left in the spool" in err
        recovered = recover(spool, collector.url)
        if receiver == "down":
            assert recovered.stats()["recovered"] == 1000
        assert sorted(set(indexes(collector))) == list(range(1000))

    @pytest.mark.parametrize("disposition", ["a handler", "SIG_IGN"])
    def test_an_application_disposition_set_first_is_kept(
        self, disposition: str, collector: LocalCollector
    ) -> None:
        """A SIGTERM handler (or SIG_IGN) the application set first stays; its handler runs."""
        chosen = "on_term" if disposition == "a handler" else "signal.SIG_IGN"
        process = start_and_log(
            f"""
            import signal
            def on_term(signum, frame):
                sys.exit(3)
            signal.signal(signal.SIGTERM, {chosen})
            log.addHandler(SegmentHandler("key", host=url, {QUEUED}))
            assert signal.getsignal(signal.SIGTERM) is {chosen}
            """,
            collector.url,
        )
        wait_ready(process)
        if disposition == "SIG_IGN":
            return  # kept: the script checked it; the test's end kills it
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == 3, err  # the application's handler ran, and exit delivered
        assert collector.wait_for_messages(1000, timeout=5)
        assert indexes(collector) == list(range(1000))

    @pytest.mark.parametrize("how", ["keyword", "environment"])
    def test_handle_sigterm_false_leaves_the_default_disposition(
        self, how: str, collector: LocalCollector
    ) -> None:
        """handle_sigterm=False (or SEGMENT_HANDLE_SIGTERM=false): SIGTERM kills at once."""
        option = ", handle_sigterm=False" if how == "keyword" else ""
        env = {"SEGMENT_HANDLE_SIGTERM": "false"} if how == "environment" else {}
        process = start_and_log(
            f"""
            import signal
            log.addHandler(SegmentHandler("key", host=url, {QUEUED}{option}))
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            """,
            collector.url,
            **env,
        )
        wait_ready(process)
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == KILLED_BY_SIGTERM, err
        assert collector.messages == []  # nothing closed the pipeline: the queue died with it

    def test_a_handler_started_off_the_main_thread_leaves_the_choice_to_the_next(
        self, collector: LocalCollector
    ) -> None:
        """Off the main thread nothing is installed; the next handler on the main thread does."""
        process = start_and_log(
            f"""
            import signal, threading
            thread = threading.Thread(
                target=lambda: log.addHandler(SegmentHandler("key", host=url, {QUEUED}))
            )
            thread.start()
            thread.join()
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            log.addHandler(SegmentHandler("key", host=url, {QUEUED}))
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            """,
            collector.url,
        )
        wait_ready(process)
        process.send_signal(signal.SIGTERM)
        code, _, err = finish(process)
        assert code == KILLED_BY_SIGTERM, err
        assert collector.wait_for_messages(2000, timeout=5)  # each handler's 1,000
        assert indexes(collector) == sorted(list(range(1000)) * 2)

    def test_a_sigterm_during_the_exit_close_lets_it_finish_then_kills(
        self, collector: LocalCollector
    ) -> None:
        """SIGTERM while atexit closes, holding a lock the close needs: that close goes on,
        delivers all, then the status is -15 (a second close on top would wait in vain)."""
        setup = f"""
import signal
from segmentio_logging import _lifecycle
handler = SegmentHandler("key", host=url, {QUEUED})
log.addHandler(handler)
"""
        hook = """
def sigterm_now():  # inside the exit's close_all, on the main thread
    with handler._pipeline.ledger.lock:
        signal.raise_signal(signal.SIGTERM)
    print("the close went on", flush=True)

_lifecycle.before_close_all(sigterm_now)
"""
        process = start(setup + LOG_1000 + hook, collector.url)
        code, out, err = finish(process)
        assert code == KILLED_BY_SIGTERM, err
        assert out.strip() == "the close went on"
        assert collector.wait_for_messages(1000, timeout=5)
        assert indexes(collector) == list(range(1000))

    def test_a_second_sigterm_during_the_close_kills_at_once(
        self, collector: LocalCollector
    ) -> None:
        """While the close waits on a receiver that hangs, a second SIGTERM ends the wait."""
        collector.default = Reply(hang=True)
        process = start_and_log(
            f"""
            log.addHandler(SegmentHandler("key", host=url, {QUEUED}, shutdown_timeout=60))
            """,
            collector.url,
        )
        try:
            wait_ready(process)
            process.send_signal(signal.SIGTERM)
            assert collector.wait_for_requests(1, timeout=10)  # the close is under way
            process.send_signal(signal.SIGTERM)
            code, _, err = finish(process, timeout=20)  # well before shutdown_timeout
            assert code == KILLED_BY_SIGTERM, err
        finally:
            collector.release_hangs()
