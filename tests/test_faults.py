"""Fault injection end to end: SegmentHandler against a misbehaving LocalCollector.

Every scenario checks that nothing is lost: each message is delivered, failed
(reported once to ``on_failure``) or dropped (counted), and the counters add up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

from segmentio_logging import DeliveryError, QueueFull, Response, SegmentHandler, _transport
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import closed_port

MakeHandler = Callable[..., SegmentHandler]

# Small retry settings: faults settle in well under a second.
FAST = {"max_retries": 3, "retry_budget": 3.0, "timeout": 2.0, "shutdown_timeout": 2.0}


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds."""
    monkeypatch.setattr(_transport, "BACKOFF_BASE", 0.01)


class Calls:
    """Thread-safe record of on_success / on_failure calls."""

    def __init__(self, raise_in: Tuple[str, ...] = (), delay: float = 0.0) -> None:
        self._lock = threading.Condition()
        self._delay = delay
        self.successes: List[Tuple[List[Dict[str, Any]], Any]] = []
        self.failures: List[Tuple[List[Any], Any]] = []
        self._raise_in = raise_in

    def on_success(self, data: List[Dict[str, Any]], response: Any) -> None:
        if self._delay:
            time.sleep(self._delay)  # a slow callback, to show what waits for it
        with self._lock:
            self.successes.append((data, response))
            self._lock.notify_all()
        if "success" in self._raise_in:
            raise RuntimeError("on_success blew up")

    def on_failure(self, data: List[Any], error: Any) -> None:
        with self._lock:
            self.failures.append((data, error))
            self._lock.notify_all()
        if "failure" in self._raise_in:
            raise RuntimeError("on_failure blew up")

    @property
    def succeeded(self) -> int:
        return sum(len(data) for data, _ in self.successes)

    @property
    def failed(self) -> int:
        return sum(len(data) for data, _ in self.failures)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds, re-checked after each callback; False at timeout."""
        with self._lock:
            return self._lock.wait_for(predicate, timeout)

    def wait_for(self, delivered: int = 0, failed: int = 0, timeout: float = 5.0) -> bool:
        """Wait until callbacks covered at least ``delivered`` and ``failed`` messages."""
        return self.wait_until(
            lambda: self.succeeded >= delivered and self.failed >= failed, timeout
        )

    def wait_for_stats(self, handler: SegmentHandler, timeout: float = 5.0) -> bool:
        """Wait until the callbacks account for what stats() says was delivered and failed."""
        stats = handler.stats()
        return self.wait_for(stats["delivered"], stats["failed"], timeout)

    @property
    def delivery_errors(self) -> List[Tuple[List[Any], DeliveryError]]:
        return [(d, e) for d, e in self.failures if isinstance(e, DeliveryError)]


def attach(handler: SegmentHandler, logger: logging.Logger) -> logging.Logger:
    logger.addHandler(handler)
    return logger


def log_events(logger: logging.Logger, count: int, prefix: str = "e") -> List[str]:
    """Log ``count`` track events; their event names, in order."""
    names = [f"{prefix}{i}" for i in range(count)]
    for i, name in enumerate(names):
        logger.info(name, extra={"user_id": f"u{i % 3}", "properties": {"i": i}})
    return names


def received(collector: LocalCollector) -> List[str]:
    """Event names of every message the receiver accepted (duplicates included)."""
    return [m["event"] for m in collector.messages]


def assert_accounted(handler: SegmentHandler) -> Dict[str, int]:
    """After a flush: nothing pending and every message delivered, failed or dropped."""
    stats = handler.stats()
    assert stats["pending"] == 0, stats
    assert stats["enqueued"] == (
        stats["delivered"] + stats["failed"] + stats["dropped"] + stats["pending"]
    ), stats
    return stats


TRANSIENT = {
    "500": [Reply(500)],
    "502-503-504": [Reply(502), Reply(503), Reply(504)],
    "408": [Reply(408)],
    "429-retry-after": [Reply.retry_after(0.2, 429)],
    "503-retry-after-date": [Reply.retry_after(0.1, 503, http_date=True)],
    "reset": [Reply(reset=True)],
    "reset-twice": [Reply(reset=True), Reply(reset=True)],
    "hang": [Reply(hang=True)],
}


class TestTransientFaults:
    @pytest.mark.parametrize("faults", list(TRANSIENT.values()), ids=list(TRANSIENT))
    def test_everything_delivered(
        self,
        faults: List[Reply],
        collector: LocalCollector,
        make_handler: MakeHandler,
        logger: logging.Logger,
    ) -> None:
        """Retryable faults end in delivery: no failure, every event received."""
        calls = Calls()
        handler = make_handler(
            batch_size=5,
            on_success=calls.on_success,
            on_failure=calls.on_failure,
            **{**FAST, "timeout": 0.3},
        )
        collector.script(*faults)
        sent = log_events(attach(handler, logger), 12)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"], stats["dropped"]) == (12, 0, 0)
        assert stats["retries"] >= 1
        assert calls.failures == []
        assert calls.succeeded == 12
        assert set(received(collector)) == set(sent)


class TestPermanentFaults:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
    def test_rejected_batch_fails_once_with_status_and_body(
        self,
        status: int,
        collector: LocalCollector,
        make_handler: MakeHandler,
        logger: logging.Logger,
    ) -> None:
        """A rejected batch goes to on_failure once, with the status and the response body."""
        calls = Calls()
        handler = make_handler(
            batch_size=3,
            flush_interval=0.5,
            on_success=calls.on_success,
            on_failure=calls.on_failure,
            **FAST,
        )
        collector.script(Reply(status, body=f'{{"error":"nope {status}"}}'))
        sent = log_events(attach(handler, logger), 3)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"]) == (0, 3)
        assert len(collector.requests) == 1
        ((data, error),) = calls.failures
        assert isinstance(error, DeliveryError)
        assert (error.status, error.body, error.count) == (
            status,
            f'{{"error":"nope {status}"}}',
            3,
        )
        assert [m["event"] for m in data] == sent

    def test_persistent_500_fails_after_max_retries(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A receiver that keeps answering 500 fails each batch once, after max_retries+1 tries."""
        calls = Calls()
        handler = make_handler(
            batch_size=4,
            flush_interval=0.5,
            on_failure=calls.on_failure,
            **{**FAST, "max_retries": 2},
        )
        collector.default = Reply(500, body="overloaded")
        log_events(attach(handler, logger), 8)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"]) == (0, 8)
        errors = calls.delivery_errors
        assert len(errors) == len(calls.failures)
        assert sum(e.count for _, e in errors) == 8
        assert all((e.status, e.body, e.attempts) == (500, "overloaded", 3) for _, e in errors)
        assert len(collector.requests) == 3 * len(errors)

    def test_refused_connection_fails_each_batch_once(
        self, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """Nothing listening: every batch fails once, with no status."""
        calls = Calls()
        handler = make_handler(
            host=f"http://127.0.0.1:{closed_port()}",
            batch_size=5,
            on_failure=calls.on_failure,
            **{**FAST, "max_retries": 1},
        )
        log_events(attach(handler, logger), 10)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"]) == (0, 10)
        assert sum(e.count for _, e in calls.delivery_errors) == 10
        assert len(calls.failures) == len(calls.delivery_errors)
        assert all(e.status is None and e.attempts == 2 for _, e in calls.delivery_errors)

    def test_retry_after_past_budget_fails_promptly(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A 429 asking for longer than the retry budget fails the batch without waiting."""
        calls = Calls()
        handler = make_handler(on_failure=calls.on_failure, **{**FAST, "retry_budget": 0.5})
        collector.script(Reply.retry_after(30, 429))
        log_events(attach(handler, logger), 1)
        began = time.monotonic()
        assert handler.flush(5)
        assert calls.wait_for_stats(handler)
        assert time.monotonic() - began < 3.0
        ((_, error),) = calls.failures
        assert (error.status, error.count) == (429, 1)
        assert_accounted(handler)


class TestSplitOn413:
    def test_halves_delivered(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A 413 splits the batch; each half is delivered and reported to on_success."""
        calls = Calls()
        handler = make_handler(
            batch_size=6,
            flush_interval=0.5,
            on_success=calls.on_success,
            on_failure=calls.on_failure,
            **FAST,
        )
        collector.script(Reply(413))
        sent = log_events(attach(handler, logger), 6)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"]) == (6, 0)
        assert [len(data) for data, _ in calls.successes] == [3, 3]
        assert received(collector) == sent
        assert calls.failures == []

    def test_receiver_limit_splits_recursively(
        self, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """Against a receiver with a small body limit every event still arrives once."""
        with LocalCollector(max_body_bytes=1_500) as small:
            handler = make_handler(host=small.url, batch_size=40, flush_interval=0.5, **FAST)
            sent = log_events(attach(handler, logger), 40)
            assert handler.flush(10)
            stats = assert_accounted(handler)
            assert (stats["delivered"], stats["failed"]) == (40, 0)
            assert sorted(received(small)) == sorted(sent)
            assert any(r.status == 413 for r in small.requests)

    def test_single_message_413_fails(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A lone message answered 413 fails once with the status and body."""
        calls = Calls()
        handler = make_handler(batch_size=1, on_failure=calls.on_failure, **FAST)
        collector.script(Reply(413, body="too large"))
        log_events(attach(handler, logger), 1)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        ((data, error),) = calls.failures
        assert (error.status, error.body, error.count, len(data)) == (413, "too large", 1, 1)
        assert_accounted(handler)


class TestCallbacks:
    def test_on_success_gets_messages_and_response(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """on_success receives the batch's messages and the receiver's response."""
        calls = Calls()
        handler = make_handler(on_success=calls.on_success, **FAST)
        collector.script(Reply(500))
        sent = log_events(attach(handler, logger), 3)
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        assert [m["event"] for data, _ in calls.successes for m in data] == sent
        for data, response in calls.successes:
            assert isinstance(response, Response)
            assert response.status == 200
            assert all(m["type"] == "track" and "messageId" in m for m in data)
        assert calls.successes[0][1].attempts == 2

    def test_raising_on_failure_does_not_stop_the_worker(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A callback that raises is reported, and later events are still delivered."""
        calls = Calls(raise_in=("failure",))
        handler = make_handler(on_failure=calls.on_failure, **FAST)
        attach(handler, logger)
        collector.script(Reply(400, body="bad"))
        log_events(logger, 2, prefix="first")
        assert handler.flush(10)
        assert calls.wait_for(failed=2)
        assert len(calls.failures) == 1
        later = log_events(logger, 3, prefix="later")
        assert handler.flush(10)
        assert collector.wait_for_messages(3, timeout=5)
        assert received(collector) == later
        stats = assert_accounted(handler)
        assert (stats["delivered"], stats["failed"]) == (3, 2)

    def test_raising_on_success_does_not_stop_the_worker(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """An on_success that always raises leaves delivery and counters intact."""
        calls = Calls(raise_in=("success",))
        handler = make_handler(batch_size=2, on_success=calls.on_success, **FAST)
        attach(handler, logger)
        for round_ in range(3):
            log_events(logger, 2, prefix=f"r{round_}-")
            assert handler.flush(10)
            assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert stats["delivered"] == 6
        assert calls.succeeded == 6
        assert len(received(collector)) == 6


class TestFlushAndCallbacks:
    def test_flush_returns_after_the_callbacks_ran(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """When flush() returns True, on_success has been called for every delivered batch."""
        calls = Calls(delay=0.3)
        handler = make_handler(on_success=calls.on_success, **FAST)
        log_events(attach(handler, logger), 2)
        assert handler.flush(10)
        assert calls.succeeded == 2


class TestAccounting:
    def test_mixed_faults_lose_nothing(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """Through a run of mixed faults every event is delivered or reported failed, once."""
        calls = Calls()
        handler = make_handler(
            batch_size=4,
            on_success=calls.on_success,
            on_failure=calls.on_failure,
            **{**FAST, "timeout": 0.3},
        )
        collector.script(
            Reply(500),
            Reply(400, body="bad"),
            Reply.retry_after(0.1, 429),
            Reply(reset=True),
            Reply(413),
            Reply(hang=True),
            Reply(503),
        )
        attach(handler, logger)
        sent: List[str] = []
        for round_ in range(6):
            sent += log_events(logger, 4, prefix=f"r{round_}-")
            assert handler.flush(10)
            assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert stats["enqueued"] == len(sent)
        assert stats["delivered"] == calls.succeeded
        assert stats["failed"] == sum(len(data) for data, _ in calls.failures)
        assert stats["failed"] >= 1
        delivered = {m["event"] for data, _ in calls.successes for m in data}
        failed = {m["event"] for data, _ in calls.failures for m in data}
        assert delivered | failed == set(sent)
        assert not delivered & failed
        assert delivered <= set(received(collector))

    def test_full_queue_drops_are_counted_and_reported(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """With the receiver hanging and a tiny queue, drops are counted, reported, not lost."""
        calls = Calls()
        handler = make_handler(
            batch_size=2,
            max_queue_size=3,
            on_failure=calls.on_failure,
            **{**FAST, "timeout": 0.3, "max_retries": 0},
        )
        collector.default = Reply(hang=True)
        attach(handler, logger)
        log_events(logger, 2, prefix="a")
        assert collector.wait_for_requests(1, timeout=5)
        log_events(logger, 10, prefix="b")
        assert handler.flush(10)
        assert calls.wait_for_stats(handler)
        stats = assert_accounted(handler)
        assert stats["enqueued"] == 12
        assert stats["dropped"] >= 7

        def reported() -> int:
            return sum(e.count for _, e in calls.failures if isinstance(e, QueueFull))

        assert calls.wait_until(lambda: reported() == stats["dropped"])

    def test_close_during_retry_wait_reports_the_batch(
        self, collector: LocalCollector, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """close() cuts a long Retry-After wait short and reports the batch as failed, once."""
        calls = Calls()
        handler = make_handler(
            on_failure=calls.on_failure,
            **{**FAST, "retry_budget": 60.0, "shutdown_timeout": 0.3},
        )
        collector.default = Reply.retry_after(30, 503)
        log_events(attach(handler, logger), 2)
        assert collector.wait_for_requests(1, timeout=5)
        began = time.monotonic()
        handler.close()
        assert time.monotonic() - began < 3.0
        ((data, error),) = calls.failures
        assert (error.status, error.count, len(data)) == (503, 2, 2)
        assert "deadline" in error.reason
        stats = assert_accounted(handler)
        assert stats["failed"] == 2
