"""Run each fault scenario against a LocalCollector and show that no event is lost.

    python scripts/fault_matrix.py

For every fault, a fresh receiver is scripted to misbehave and a SegmentHandler
logs the same events to it, then flushes. The table shows per fault: events
sent, delivered, failed (reported to on_failure), dropped (counted), lost
(sent - delivered - failed - dropped: must be 0), and the duplicates the
receiver saw (a retry after a timeout whose answer never arrived; Segment
deduplicates on messageId). Exits 1 when any event is lost or the callbacks
disagree with the counters.

Backoff is shortened (``BACKOFF_BASE``) so the whole matrix runs in seconds.

    python scripts/fault_matrix.py --real-time

adds rows that run in real time with the default options (about six minutes):
a receiver answering 503 for two minutes while the app logs 20 events a
second, a 429 with ``Retry-After: 120``, and a receiver down while the queue
overflows (drops counted exactly). Each must lose nothing it did not count.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

try:
    import segmentio_logging
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import segmentio_logging

from segmentio_logging import SegmentHandler, _transport
from segmentio_logging.testing import LocalCollector, Reply

EVENTS = 200
DEFAULT_BACKOFF_BASE = _transport.BACKOFF_BASE  # the real-time rows run with the defaults
BATCH_SIZE = 20
BASE_OPTIONS: Dict[str, Any] = {
    "batch_size": BATCH_SIZE,
    "flush_interval": 0.05,
    "timeout": 0.5,
    "max_retries": 4,
    "retry_budget": 5.0,
    "shutdown_timeout": 2.0,
}


@dataclass
class Scenario:
    name: str
    replies: List[Reply] = field(default_factory=list)
    default: Optional[Reply] = None
    options: Dict[str, Any] = field(default_factory=dict)
    max_body_bytes: Optional[int] = None
    refused: bool = False


def scenarios() -> List[Scenario]:
    return [
        Scenario("no fault"),
        Scenario("500 x3", [Reply(500)] * 3),
        Scenario("502, 503, 504", [Reply(502), Reply(503), Reply(504)]),
        Scenario("408", [Reply(408)] * 2),
        Scenario("429 Retry-After 0.3s", [Reply.retry_after(0.3, 429)] * 2),
        Scenario("503 Retry-After date", [Reply.retry_after(0.5, 503, http_date=True)]),
        Scenario("reset x3", [Reply(reset=True)] * 3),
        Scenario("hang x2 (timeout)", [Reply(hang=True)] * 2),
        Scenario("answer after timeout", [Reply(delay=0.8)]),
        Scenario("400 on 2 batches", [Reply(400, body='{"error":"bad"}')] * 2),
        Scenario("413 once (split)", [Reply(413)]),
        Scenario("413 limit 2 KB (recursive)", max_body_bytes=2_000),
        Scenario("500 forever", default=Reply(500), options={"max_retries": 2}),
        Scenario(
            "429 past retry budget",
            default=Reply.retry_after(1, 429),
            options={"retry_budget": 0.5},
        ),
        Scenario("refused (port closed)", refused=True, options={"max_retries": 2}),
        Scenario(
            "hang + full queue",
            default=Reply(hang=True),
            options={"max_queue_size": 30, "max_retries": 0, "timeout": 0.3},
        ),
        Scenario(
            "flapping",
            [Reply(500), Reply(reset=True), Reply(), Reply(503), Reply(hang=True), Reply(429)] * 3,
        ),
    ]


@dataclass
class Row:
    name: str
    sent: int
    delivered: int
    failed: int
    dropped: int
    lost: int
    duplicates: int
    requests: int
    seconds: float
    problem: str = ""


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def run(scenario: Scenario, index: int) -> Row:
    collector = LocalCollector(max_body_bytes=scenario.max_body_bytes).start()
    collector.script(*scenario.replies)
    if scenario.default is not None:
        collector.default = scenario.default
    lock = threading.Lock()
    called = {"success": 0, "failure": 0}

    def on_success(data: List[Any], response: Any) -> None:
        with lock:
            called["success"] += len(data)

    def on_failure(data: List[Any], error: Any) -> None:
        with lock:
            called["failure"] += getattr(error, "count", len(data))

    host = f"http://127.0.0.1:{closed_port()}" if scenario.refused else collector.url
    options = {**BASE_OPTIONS, **scenario.options}
    handler = SegmentHandler(
        "matrix-key", host=host, on_success=on_success, on_failure=on_failure, **options
    )
    logger = logging.getLogger(f"fault_matrix.{index}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    began = time.monotonic()
    try:
        for i in range(EVENTS):
            logger.info("Matrix Event", extra={"user_id": f"u{i % 7}", "properties": {"i": i}})
        flushed = handler.flush(30)
        seconds = time.monotonic() - began
    finally:
        logger.removeHandler(handler)
        handler.close()
        collector.release_hangs()
        collector.stop()
    stats = handler.stats()
    received = Counter(m.get("messageId") for m in collector.messages)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    lost = EVENTS - stats["delivered"] - stats["failed"] - stats["dropped"]
    problems = []
    if not flushed:
        problems.append("flush timed out")
    if stats["enqueued"] != EVENTS:
        problems.append(f"enqueued {stats['enqueued']}")
    if called["success"] != stats["delivered"]:
        problems.append(f"on_success saw {called['success']}")
    if called["failure"] != stats["failed"] + stats["dropped"]:
        problems.append(f"on_failure saw {called['failure']}")
    if len(received) < stats["delivered"]:
        problems.append(f"receiver has only {len(received)}")
    return Row(
        scenario.name,
        EVENTS,
        stats["delivered"],
        stats["failed"],
        stats["dropped"],
        lost,
        duplicates,
        len(collector.requests),
        seconds,
        "; ".join(problems),
    )


@dataclass
class RealTime:
    """A row run in real time with the default options: ``replies`` then ``default``
    until ``outage`` seconds have passed, while ``rate`` events a second are logged
    for ``seconds``."""

    name: str
    default: Reply
    outage: float
    rate: float
    seconds: float
    replies: List[Reply] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)


def real_time_rows(scale: float) -> List[RealTime]:
    return [
        RealTime("503 for 2 min, 20/s", Reply(503), 120 * scale, 20, 130 * scale),
        RealTime(
            "429 Retry-After: 120, 20/s",
            Reply(),
            0,
            20,
            130 * scale,
            replies=[Reply.retry_after(120 * scale, 429)],
        ),
        RealTime(
            "down, queue overflows",
            Reply(503),
            20 * scale,
            100,
            10 * scale,
            options={"max_queue_size": 300},
        ),
    ]


def run_real_time(row: RealTime, index: int) -> Row:
    """Log at ``row.rate`` while the receiver misbehaves; then wait for all to arrive."""
    _transport.BACKOFF_BASE = DEFAULT_BACKOFF_BASE
    collector = LocalCollector().start()
    collector.script(*row.replies)
    collector.default = row.default
    lock = threading.Lock()
    reported = {"dropped": 0, "failed": 0}

    def on_failure(data: List[Any], error: Any) -> None:
        with lock:
            kind = "dropped" if isinstance(error, segmentio_logging.QueueFull) else "failed"
            reported[kind] += getattr(error, "count", len(data))

    handler = SegmentHandler("matrix-key", host=collector.url, on_failure=on_failure, **row.options)
    logger = logging.getLogger(f"fault_matrix.real.{index}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    began = time.monotonic()
    sent = 0
    recovered = row.outage <= 0
    total = int(row.rate * row.seconds)
    while sent < total or not recovered:
        now = time.monotonic()
        if not recovered and now - began >= row.outage:
            collector.default, recovered = Reply(), True
        while sent < min(int((now - began) * row.rate) + 1, total):
            logger.info(
                "Matrix Event", extra={"user_id": f"u{sent % 7}", "properties": {"i": sent}}
            )
            sent += 1
        time.sleep(0.01)
    flushed = handler.flush(180)
    seconds = time.monotonic() - began
    logger.removeHandler(handler)
    handler.close()
    collector.stop()
    stats = handler.stats()
    received = Counter(m.get("messageId") for m in collector.messages)
    problems = []
    if not flushed:
        problems.append("flush timed out")
    if reported["dropped"] != stats["dropped"]:
        problems.append(f"on_failure reported {reported['dropped']} dropped")
    if stats["failed"] or reported["failed"]:
        problems.append("events given up")
    if len(received) != stats["delivered"] or stats["delivered"] + stats["dropped"] != sent:
        problems.append(f"receiver has {len(received)}")
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    lost = sent - stats["delivered"] - stats["failed"] - stats["dropped"]
    return Row(
        row.name,
        sent,
        stats["delivered"],
        stats["failed"],
        stats["dropped"],
        lost,
        duplicates,
        len(collector.requests),
        seconds,
        "; ".join(problems),
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backoff-base", type=float, default=0.02, help="seconds (default 0.02)")
    parser.add_argument(
        "--real-time", action="store_true", help="also the real-time rows (about six minutes)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="real-time rows: multiply their durations"
    )
    args = parser.parse_args(argv)
    _transport.BACKOFF_BASE = args.backoff_base

    header = (
        f"{'fault':<28} {'sent':>5} {'deliv':>5} {'failed':>6} {'dropped':>7} {'lost':>4} "
        f"{'dups':>4} {'reqs':>4} {'secs':>5}  check"
    )
    print(f"segmentio-logging {segmentio_logging.__version__} fault matrix")
    print(f"{EVENTS} events per fault, batch_size={BATCH_SIZE}, options {BASE_OPTIONS}")
    print(header)
    print("-" * len(header))
    bad = 0
    began = time.monotonic()
    rows = [lambda s=s, i=i: run(s, i) for i, s in enumerate(scenarios())]
    if args.real_time:
        rows += [
            lambda r=r, i=i: run_real_time(r, i) for i, r in enumerate(real_time_rows(args.scale))
        ]
    for make_row in rows:
        row = make_row()
        ok = row.lost == 0 and not row.problem
        bad += not ok
        print(
            f"{row.name:<28} {row.sent:>5} {row.delivered:>5} {row.failed:>6} {row.dropped:>7} "
            f"{row.lost:>4} {row.duplicates:>4} {row.requests:>4} {row.seconds:>5.1f}  "
            f"{'ok' if ok else 'FAIL: ' + (row.problem or 'events lost')}",
            flush=True,
        )
    print("-" * len(header))
    total = time.monotonic() - began
    print(f"{'all faults: no event lost' if not bad else f'{bad} fault(s) FAILED'} ({total:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
