"""A process monkey-patched by gevent: events logged from many greenlets are all delivered.

Each case runs in a subprocess (monkey-patching cannot be undone) that logs to a
LocalCollector in this process; a process that hangs fails at the timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from segmentio_logging.testing import LocalCollector
from tests.helpers import closed_url

pytest.importorskip("gevent")

ROOT = Path(__file__).resolve().parent.parent
GREENLETS = 50
EVENTS_EACH = 20

# {patch_first} and {patch_late}: where the script calls patch_all(), before the handler
# exists or after it was made.
SCRIPT = """
import logging, os, sys
{patch_first}
import segmentio_logging

handler = segmentio_logging.SegmentHandler(
    write_key="gevent-key", host=sys.argv[1], shutdown_timeout=3.0
)
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(handler)
log.propagate = False
{patch_late}
import gevent

def work(n):
    for i in range(EVENTS_EACH):
        log.info("Song Played", extra={{"user_id": f"u{{n}}", "properties": {{"i": i}}}})
        gevent.sleep(0)

gevent.joinall([gevent.spawn(work, n) for n in range(GREENLETS)])
{end}
"""
PATCH = "from gevent import monkey; monkey.patch_all()"
# A forked child that patches after the fork: a server that loads the app, then forks
# gevent workers (gunicorn's gevent worker with preload_app).
FORK_THEN_PATCH = """
log.info("Loaded", extra={"user_id": "parent"})
handler.flush(5)
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
from gevent import monkey; monkey.patch_all()
"""


def run(collector_url: str, *, late: str = "", first: str = "", end: str = "") -> str:
    """Run the script; its output, or a failure when it does not exit within 60 s."""
    code = SCRIPT.format(patch_first=first, patch_late=late, end=end)
    code = f"GREENLETS = {GREENLETS}\nEVENTS_EACH = {EVENTS_EACH}\n" + code
    # A session of its own, so that a hung forked child is killed with its parent.
    process = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code), collector_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the gevent process did not exit within 60 s: {stderr!r}")
    assert process.returncode == 0, stderr
    return stderr


def user_counts(collector: LocalCollector) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for message in collector.messages:
        counts[message["userId"]] = counts.get(message["userId"], 0) + 1
    return counts


@pytest.mark.parametrize(
    ("case", "placement"),
    [
        ("patched first", {"first": PATCH}),
        ("patched after the handler was made", {"late": PATCH}),
        ("patched in a child forked after the handler ran", {"late": FORK_THEN_PATCH}),
    ],
)
def test_every_event_from_every_greenlet_is_delivered_at_exit(
    collector: LocalCollector, case: str, placement: Dict[str, str]
) -> None:
    """Without a flush, exit delivers every event of every greenlet, and the process ends."""
    run(collector.url, **placement)
    counts = user_counts(collector)
    counts.pop("parent", None)
    assert counts == {f"u{n}": EVENTS_EACH for n in range(GREENLETS)}, case
    assert len({m["messageId"] for m in collector.messages}) == len(collector.messages)


def test_flush_returns_once_the_events_are_delivered(collector: LocalCollector) -> None:
    """flush() called from a greenlet returns True with every event at the receiver."""
    end = "print('flushed', handler.flush(10), file=sys.stderr)"
    output = run(collector.url, first=PATCH, end=end)
    assert "flushed True" in output
    assert sum(user_counts(collector).values()) == GREENLETS * EVENTS_EACH


@pytest.mark.parametrize("placement", ["first", "late"])
def test_exit_is_bounded_when_the_receiver_is_down(placement: str) -> None:
    """With nothing listening, the process still exits and reports what it could not send."""
    output = run(closed_url(), **{placement: PATCH})
    assert "not delivered" in output, output
