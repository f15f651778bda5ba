"""Delivery at interpreter exit, in subprocesses: no flush, SIGTERM, hung receivers, 3.12 layout."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from segmentio_logging.testing import LocalCollector, Reply

ROOT = Path(__file__).resolve().parent.parent

# Each script gets the receiver's URL as argv[1] and prints "ready" once it has logged.
PRELUDE = """\
import logging, sys
from segmentio_logging import SegmentHandler
url = sys.argv[1]
log = logging.getLogger("app")
log.setLevel(logging.INFO)
"""


def start(script: str, url: str) -> subprocess.Popen[str]:
    """Run ``script`` in a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in [n for n in env if n.startswith("SEGMENT_")]:
        del env[name]
    code = PRELUDE + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_ready(process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Wait for the script's "ready" line."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        pytest.fail("the script never said it was ready")
    assert process.stdout.readline().strip() == "ready"


def finish(process: subprocess.Popen[str], timeout: float = 30.0) -> Tuple[int, str]:
    """Wait for the script to end; its exit code and stderr."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the script did not exit within {timeout} s")
    return process.returncode, err


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
        code, err = finish(process)
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
        code, err = finish(process)
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
            time.sleep(60)
            """,
            collector.url,
        )
        wait_ready(process)
        assert collector.messages == []  # batch_size and interval hold them until exit
        process.send_signal(signal.SIGTERM)
        code, err = finish(process)
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
        code, _ = finish(process, timeout=30)
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
        code, err = finish(process)
        assert code == 0, err
        assert "Traceback" not in err
        assert collector.wait_for_messages(300, timeout=5)
        assert indexes(collector) == list(range(300))
