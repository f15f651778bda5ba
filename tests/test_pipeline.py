"""The pipeline: batching, flush, close, bounded memory, counters, threads and fork;
its two deliveries (in memory, through the spool)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import pytest

from segmentio_logging import (
    ClosedError,
    DeliveryError,
    InvalidMessage,
    QueueFull,
    SegmentHandler,
    _lifecycle,
)
from segmentio_logging._delivery import MemoryDelivery
from segmentio_logging._pipeline import Pipeline
from segmentio_logging._spool import SpoolDelivery
from segmentio_logging._transport import Deadline, Outcome, Transport
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import identity_holds

MakeHandler = Callable[..., SegmentHandler]

WORKER_NAME = "segmentio-logging-worker"


class Failures:
    """An ``on_failure`` callback that records its calls and can be waited on."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, data: Any, error: Any) -> None:
        with self._cond:
            self.calls.append((data, error))
            self._cond.notify_all()

    def of(self, kind: type) -> List[Any]:
        with self._cond:
            return [error for _, error in self.calls if isinstance(error, kind)]

    def wait_for(self, predicate: Callable[[Failures], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True


def log_events(log: logging.Logger, count: int, event: str = "Played a Song", **extra: Any) -> None:
    """Log ``count`` track records numbered by ``properties.i``."""
    for i in range(count):
        log.info(event, extra={"user_id": f"u{i}", "properties": {"i": i}, **extra})


def release(collector: LocalCollector, workers: Sequence[threading.Thread] = ()) -> None:
    """Answer normally again, let hung requests go, and let closed workers finish with them."""
    collector.default = Reply()
    collector.release_hangs()
    for worker in workers:
        worker.join(10)


def workers_since(before: Set[threading.Thread]) -> List[threading.Thread]:
    """Worker threads started since the ``before`` snapshot of ``threading.enumerate()``."""
    return [t for t in threading.enumerate() if t not in before and t.name == WORKER_NAME]


def encoded(i: int) -> Tuple[Dict[str, Any], bytes]:
    """A ready (message, bytes) item for a Pipeline with the default ``prepare``."""
    message = {"type": "track", "event": "E", "userId": "u", "messageId": f"m{i}"}
    return message, json.dumps(message).encode("utf-8")


class TestBatching:
    def test_batches_cut_by_count(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """With batch_size=10, 35 records go out in requests of at most 10 messages."""
        handler = make_handler(batch_size=10)
        logger.addHandler(handler)
        log_events(logger, 35)
        assert handler.flush(10)
        sizes = [len(r.messages) for r in collector.accepted]
        assert sum(sizes) == 35
        assert max(sizes) <= 10
        assert len(sizes) >= 4

    def test_batches_cut_by_bytes(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Messages of about 30 KB are cut into request bodies of at most 500,000 bytes."""
        handler = make_handler(batch_size=100, gzip=False, flush_interval=5)
        logger.addHandler(handler)
        blob = "x" * 30_000
        for i in range(40):
            logger.info("Big", extra={"user_id": "u", "properties": {"i": i, "blob": blob}})
        assert handler.flush(20)
        requests = collector.accepted
        assert all(len(r.raw) <= 500_000 for r in requests)
        assert sorted(m["properties"]["i"] for r in requests for m in r.messages) == list(range(40))
        assert len(requests) >= 3  # 40 x 30 KB cannot fit in fewer

    def test_interval_sends_without_flush(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """One record far below batch_size is sent after flush_interval, without flush()."""
        handler = make_handler(batch_size=100, flush_interval=0.2)
        logger.addHandler(handler)
        logger.info("Lonely", extra={"user_id": "u1"})
        assert collector.wait_for_messages(1, timeout=10)
        assert collector.messages[0]["event"] == "Lonely"

    def test_a_queue_smaller_than_a_batch_wakes_the_worker_once_full(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """With max_queue_size below batch_size a full queue is the largest batch there is:
        it goes at once, not at the next flush_interval, and nothing is dropped meanwhile."""
        handler = make_handler(batch_size=100, max_queue_size=5, flush_interval=60)
        logger.addHandler(handler)
        log_events(logger, 5)
        assert collector.wait_for_messages(5, timeout=10)
        assert handler.stats()["dropped"] == 0


class TestFlush:
    def test_flush_true_when_everything_settled(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """flush() returns True once every record logged before it is delivered."""
        handler = make_handler(flush_interval=30)
        logger.addHandler(handler)
        log_events(logger, 25)
        assert handler.flush(10) is True
        assert len(collector.messages) == 25  # already there: no waiting after flush
        stats = handler.stats()
        assert stats["delivered"] == 25
        assert stats["pending"] == 0

    def test_flush_counts_failed_batches_as_settled(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A batch the receiver rejects (400) is settled: flush() returns True, not waits."""
        collector.default = Reply(status=400, body='{"error":"bad"}')
        failures = Failures()
        handler = make_handler(flush_interval=30, on_failure=failures)
        logger.addHandler(handler)
        log_events(logger, 5)
        assert handler.flush(10) is True
        assert handler.stats()["failed"] == 5
        assert [e.status for e in failures.of(DeliveryError)] == [400]

    def test_flush_false_at_timeout_against_hang(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Against a receiver that never answers, flush(0.5) returns False within its timeout."""
        collector.default = Reply(hang=True)
        handler = make_handler(timeout=30, max_retries=0, shutdown_timeout=0.5)
        logger.addHandler(handler)
        logger.info("Stuck", extra={"user_id": "u1"})
        assert collector.wait_for_requests(1)
        started = time.monotonic()
        assert handler.flush(0.5) is False
        assert time.monotonic() - started < 0.5 + 1.0
        release(collector)
        assert handler.flush(10)  # the hung batch failed; nothing is left

    def test_flush_after_close_stops_at_the_close_deadline(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """flush() without a timeout after close (as logging.shutdown does) never outwaits close."""
        collector.default = Reply(hang=True)
        before = set(threading.enumerate())
        handler = make_handler(timeout=30, max_retries=0, shutdown_timeout=0.3)
        logger.addHandler(handler)
        logger.info("Stuck", extra={"user_id": "u1"})
        assert collector.wait_for_requests(1)
        handler.close()
        started = time.monotonic()
        assert handler.flush() is False
        assert time.monotonic() - started < 2.0
        release(collector, workers_since(before))


class TestClose:
    def test_close_bounded_by_shutdown_timeout(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """close() returns within shutdown_timeout (plus a short grace) against a hang."""
        collector.default = Reply(hang=True)
        before = set(threading.enumerate())
        handler = make_handler(timeout=30, max_retries=0, shutdown_timeout=0.5)
        logger.addHandler(handler)
        log_events(logger, 3)
        assert collector.wait_for_requests(1)
        started = time.monotonic()
        handler.close()
        assert time.monotonic() - started < 0.5 + 2.0
        release(collector, workers_since(before))

    def test_close_twice_is_harmless(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A second close() neither raises nor sends anything again."""
        handler = make_handler()
        logger.addHandler(handler)
        log_events(logger, 3)
        handler.close()
        assert len(collector.messages) == 3
        started = time.monotonic()
        handler.close()
        assert time.monotonic() - started < 1.0
        assert len(collector.requests) == 1
        assert handler.stats()["delivered"] == 3

    def test_close_delivers_what_is_queued(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Records still queued when close() is called are delivered before it returns."""
        handler = make_handler(flush_interval=30, batch_size=1000)
        logger.addHandler(handler)
        log_events(logger, 50)
        handler.close()
        assert len(collector.messages) == 50

    def test_record_after_close_is_dropped_and_reported(
        self, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """A record logged after close is counted as dropped and reported, never raised."""
        failures = Failures()
        handler = make_handler(on_failure=failures)
        logger.addHandler(handler)
        handler.close()
        logger.info("Late", extra={"user_id": "u1"})
        assert handler.stats()["dropped"] == 1
        (error,) = failures.of(ClosedError)
        assert error.count == 1
        assert identity_holds(handler.stats())


class TestBoundedMemory:
    def test_full_queue_drops_without_blocking(
        self,
        make_handler: MakeHandler,
        logger: logging.Logger,
        collector: LocalCollector,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """With the receiver hung, a full queue drops, counts and reports; logging never blocks."""
        collector.default = Reply(hang=True)
        failures = Failures()
        handler = make_handler(
            max_queue_size=50,
            batch_size=10,
            timeout=0.5,
            max_retries=0,
            shutdown_timeout=0.5,
            on_failure=failures,
        )
        logger.addHandler(handler)
        logger.info("First", extra={"user_id": "u0"})
        assert collector.wait_for_requests(1)  # the worker is now stuck on it
        started = time.monotonic()
        log_events(logger, 500)
        assert time.monotonic() - started < 5.0  # 500 calls; a blocking put would take minutes
        stats = handler.stats()
        assert stats["queued"] <= 50
        assert stats["dropped"] >= 500 - 50 - 10 * 10  # at most a few batches left the queue
        assert identity_holds(stats)
        assert "queue full (max_queue_size=50)" in capfd.readouterr().err
        dropped = stats["dropped"]
        assert failures.wait_for(lambda f: sum(e.count for e in f.of(QueueFull)) >= dropped)
        assert all(e.count >= 1 and "max_queue_size=50" in e.reason for e in failures.of(QueueFull))
        release(collector)
        assert handler.flush(10)


class TestCounters:
    def test_identity_holds_while_running(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """enqueued == delivered + failed + dropped + pending, sampled throughout a mixed run."""
        collector.script(Reply(status=400), Reply(delay=0.05), Reply(delay=0.05))
        handler = make_handler(batch_size=5, max_queue_size=20, flush_interval=0.01)
        logger.addHandler(handler)
        samples: List[Dict[str, int]] = []
        writer = threading.Thread(target=log_events, args=(logger, 200))
        writer.start()
        while writer.is_alive():
            samples.append(handler.stats())
        writer.join()
        assert handler.flush(10)
        final = handler.stats()
        samples.append(final)
        assert all(identity_holds(s) for s in samples)
        assert [s["enqueued"] for s in samples] == sorted(s["enqueued"] for s in samples)
        assert final["enqueued"] == 200
        assert final["pending"] == 0
        assert final["failed"] == 5
        assert final["delivered"] == len(collector.messages)
        assert final["delivered"] + final["failed"] + final["dropped"] == 200

    def test_many_threads_lose_nothing(
        self, make_handler: MakeHandler, collector: LocalCollector
    ) -> None:
        """8 threads x 2,000 records: every message delivered exactly once."""
        handler = make_handler(batch_size=500, max_queue_size=100_000)
        loggers = []
        for t in range(8):
            log = logging.getLogger(f"tests.stress.{t}")
            log.propagate = False
            log.setLevel(logging.INFO)
            log.addHandler(handler)
            loggers.append(log)
        barrier = threading.Barrier(8)

        def write(t: int) -> None:
            barrier.wait()
            for i in range(2_000):
                loggers[t].info("Stress", extra={"user_id": f"t{t}", "properties": {"i": i}})

        threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert handler.flush(30)
        messages = collector.messages
        ids = [m["messageId"] for m in messages]
        assert len(ids) == 16_000
        assert len(set(ids)) == 16_000
        assert {(m["userId"], m["properties"]["i"]) for m in messages} == {
            (f"t{t}", i) for t in range(8) for i in range(2_000)
        }
        stats = handler.stats()
        assert stats["enqueued"] == stats["delivered"] == 16_000
        assert identity_holds(stats)


def _read_result(fd: int, pid: int, timeout: float = 20.0) -> Dict[str, Any]:
    """Read the JSON a forked child wrote to ``fd``; kill it if it does not answer in time."""
    chunks: List[bytes] = []
    end = time.monotonic() + timeout
    try:
        while True:
            remaining = end - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the forked child hung")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return json.loads(b"".join(chunks).decode("utf-8"))  # type: ignore[no-any-return]


def _fork_and_log(handler: SegmentHandler, logger: logging.Logger) -> Dict[str, Any]:
    """Fork; the child logs one record, flushes, and reports what it saw."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            before = handler.stats()
            logger.info("D", extra={"user_id": "child"})
            flushed = handler.flush(10)
            result = {"before": before, "flushed": flushed, "after": handler.stats()}
            os.write(write_fd, json.dumps(result).encode("utf-8"))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return _read_result(read_fd, pid)


def _child_logs(name: str, count: int) -> None:  # pragma: no cover - runs in the child
    log = logging.getLogger(name)
    for i in range(count):
        log.info("From Child", extra={"user_id": "mp", "properties": {"i": i}})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
class TestFork:
    def _parent_with_queued(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> SegmentHandler:
        """A handler whose worker is busy on A (a slow reply) while B and C wait in the queue."""
        collector.script(Reply(delay=1.5))
        handler = make_handler(flush_interval=0.01)
        logger.addHandler(handler)
        logger.info("A", extra={"user_id": "parent"})
        assert collector.wait_for_requests(1)
        logger.info("B", extra={"user_id": "parent"})
        logger.info("C", extra={"user_id": "parent"})
        assert handler.stats()["queued"] == 2
        return handler

    def _check(self, handler: SegmentHandler, collector: LocalCollector, child: Any) -> None:
        assert child["before"]["enqueued"] == 0
        assert child["flushed"] is True
        assert child["after"]["enqueued"] == child["after"]["delivered"] == 1
        assert handler.flush(10)
        assert collector.wait_for_messages(4)
        events = sorted(m["event"] for m in collector.messages)
        assert events == ["A", "B", "C", "D"]  # B and C once: the child did not send them
        assert handler.stats()["delivered"] == 3

    def test_events_queued_at_fork_are_sent_once_by_the_parent(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """The child starts empty and delivers its own record; the parent delivers its own."""
        handler = self._parent_with_queued(make_handler, logger, collector)
        child = _fork_and_log(handler, logger)
        self._check(handler, collector, child)

    def test_pid_check_when_fork_hooks_are_skipped(
        self,
        make_handler: MakeHandler,
        logger: logging.Logger,
        collector: LocalCollector,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A child whose fork hook did not reach the pipeline still starts afresh (pid check)."""
        handler = self._parent_with_queued(make_handler, logger, collector)
        # The at-fork hook walks this set: empty, it resets nothing, as with a fork
        # made by code that skips Python's hooks.
        monkeypatch.setattr(_lifecycle, "_live", weakref.WeakSet())
        child = _fork_and_log(handler, logger)
        self._check(handler, collector, child)

    def test_multiprocessing_child_delivers_without_flush(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A multiprocessing (fork) child that logs and returns delivers at its exit."""
        handler = make_handler(flush_interval=30, batch_size=1000)
        logger.addHandler(handler)
        context = multiprocessing.get_context("fork")
        process = context.Process(target=_child_logs, args=(logger.name, 20))
        process.start()
        process.join(20)
        assert process.exitcode == 0
        assert collector.wait_for_messages(20)
        assert sorted(m["properties"]["i"] for m in collector.messages) == list(range(20))
        assert handler.stats()["enqueued"] == 0  # the parent never held them


class TestWorkerThread:
    def test_worker_started_lazily_as_named_daemon(
        self, make_handler: MakeHandler, logger: logging.Logger
    ) -> None:
        """No thread at construction; the first record starts one daemon worker."""
        before = set(threading.enumerate())

        handler = make_handler()
        assert workers_since(before) == []
        logger.addHandler(handler)
        logger.info("Skipped: no id")
        assert workers_since(before) == []
        logger.info("Go", extra={"user_id": "u1"})
        logger.info("Go", extra={"user_id": "u2"})
        (worker,) = workers_since(before)
        assert worker.daemon

    def test_transport_error_does_not_stop_the_worker(self, collector: LocalCollector) -> None:
        """A transport that raises fails that batch only; later batches are delivered."""

        class Flaky(Transport):
            calls = 0

            def deliver(self, parts: List[bytes], deadline: Optional[Deadline] = None) -> Any:
                Flaky.calls += 1
                if Flaky.calls == 1:
                    raise RuntimeError("boom")
                result: List[Outcome] = super().deliver(parts, deadline)
                return result

        failures = Failures()
        transport = Flaky(host=collector.url, write_key="k", timeout=5, max_retries=0)
        pipeline = Pipeline(transport, flush_interval=0.01, on_failure=failures)
        try:
            pipeline.put(encoded(0))
            assert pipeline.flush(10)
            pipeline.put(encoded(1))
            assert pipeline.flush(10)
            assert [m["messageId"] for m in collector.messages] == ["m1"]
            (error,) = failures.of(DeliveryError)
            assert "RuntimeError: boom" in error.reason
            stats = pipeline.stats()
            assert (stats["delivered"], stats["failed"]) == (1, 1)
        finally:
            pipeline.close(2)

    def test_prepare_error_drops_that_item_only(self, collector: LocalCollector) -> None:
        """An item whose prepare raises is dropped and reported; its batch-mates are sent."""

        def prepare(item: int) -> Tuple[Dict[str, Any], bytes]:
            if item % 3 == 0:
                raise ValueError(f"bad item {item}")
            return encoded(item)

        failures = Failures()
        transport = Transport(host=collector.url, write_key="k", timeout=5)
        pipeline = Pipeline(transport, encode=prepare, flush_interval=30, on_failure=failures)
        try:
            for i in range(9):
                assert pipeline.put(i)
            assert pipeline.flush(10)
            assert [m["messageId"] for m in collector.messages] == [
                f"m{i}" for i in range(9) if i % 3
            ]
            errors = failures.of(InvalidMessage)
            assert len(errors) == 3
            assert "ValueError: bad item 0" in errors[0].reason
            stats = pipeline.stats()
            assert (stats["delivered"], stats["dropped"], stats["pending"]) == (6, 3, 0)
        finally:
            pipeline.close(2)


class TestSpoolOption:
    def test_sync_mode_with_a_spool_is_refused(self, tmp_path: Any) -> None:
        """A spool is written by the worker, so sync_mode and a spool raise, naming spool_path."""
        from segmentio_logging._spool import Spool

        transport = Transport(host="http://127.0.0.1:9", write_key="k")
        with pytest.raises(ValueError) as info:
            Pipeline(transport, sync_mode=True, delivery=SpoolDelivery(Spool(tmp_path)))
        assert str(info.value).startswith("spool_path")

    def test_spool_path_builds_the_spooled_pipeline(self, tmp_path: Any) -> None:
        """With spool_path the handler's pipeline is the spool mode's; without, a plain one."""
        plain = SegmentHandler("k", host="http://127.0.0.1:9")._pipeline
        spooled = SegmentHandler(
            "k", host="http://127.0.0.1:9", flush_interval=0.05, spool_path=str(tmp_path)
        )._pipeline
        try:
            assert type(plain) is Pipeline
            assert isinstance(plain.delivery, MemoryDelivery)
            assert isinstance(spooled.delivery, SpoolDelivery)
            assert repr(spooled).startswith("<Pipeline open delivery=spool")
        finally:
            plain.close(1)
            spooled.close(1)

    def test_without_a_spool_persist_means_flush(self, collector: LocalCollector) -> None:
        """Without a spool nothing is safe before delivery: persist() waits like flush()."""
        transport = Transport(host=collector.url, write_key="k", timeout=5)
        pipeline = Pipeline(transport, flush_interval=30)
        try:
            assert pipeline.put(encoded(0))
            assert pipeline.persist(10) is True
            assert [m["messageId"] for m in collector.messages] == ["m0"]
            assert "spooled" not in pipeline.stats()
        finally:
            pipeline.close(2)

    def test_with_a_spool_the_worker_starts_at_construction(
        self, collector: LocalCollector, tmp_path: Any
    ) -> None:
        """A spool's worker starts at once, to deliver what earlier processes left."""
        from segmentio_logging._spool import Spool

        before = set(threading.enumerate())
        transport = Transport(host=collector.url, write_key="k", timeout=5)
        pipeline = Pipeline(transport, flush_interval=0.05, delivery=SpoolDelivery(Spool(tmp_path)))
        try:
            assert len(workers_since(before)) == 1
            assert pipeline.persist(5) is True
            names = {t.name for t in threading.enumerate() if t not in before}
            assert names == {WORKER_NAME, "segmentio-logging-sender"}
        finally:
            pipeline.close(2)

    def test_with_a_spool_a_prepare_error_drops_that_item_only(
        self, collector: LocalCollector, tmp_path: Any
    ) -> None:
        """Through the spool too, an item whose prepare raises is dropped and reported alone."""
        from segmentio_logging._spool import Spool

        def prepare(item: int) -> Tuple[Dict[str, Any], bytes]:
            if item % 3 == 0:
                raise ValueError(f"bad item {item}")
            return encoded(item)

        failures = Failures()
        transport = Transport(host=collector.url, write_key="k", timeout=5)
        pipeline = Pipeline(
            transport,
            encode=prepare,
            flush_interval=0.05,
            on_failure=failures,
            delivery=SpoolDelivery(Spool(tmp_path)),
        )
        try:
            for i in range(9):
                assert pipeline.put(i)
            assert pipeline.flush(10)
            assert [m["messageId"] for m in collector.messages] == [
                f"m{i}" for i in range(9) if i % 3
            ]
            assert len(failures.of(InvalidMessage)) == 3
            stats = pipeline.stats()
            assert (stats["delivered"], stats["dropped"], stats["pending"]) == (6, 3, 0)
            assert identity_holds(stats)
        finally:
            pipeline.close(2)


# The end of each script below: the parent exits as its forked child did (30 s at most).
_EXIT_AS_THE_CHILD = """
end = time.monotonic() + 30
while time.monotonic() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        os._exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 0)
    time.sleep(0.01)
os.kill(pid, 9)
os._exit(4)
"""


# Run in a process of its own, with no thread but the main one at the fork: libc's
# fork copies the interpreter's lock as it is, which is only sound with one thread.
_HOOKLESS_FORK = (
    """
import ctypes, os, sys, time
import segmentio_logging
client = segmentio_logging.Client("k", host=sys.argv[1], sync_mode=True, max_retries=0)
client.track("p", None, "parent-before")
pid = ctypes.CDLL(None).fork()  # runs none of Python's fork hooks
if pid == 0:
    client.track("c", None, "child")
    os._exit(0 if client.stats()["delivered"] == 1 else 3)
client.track("p", None, "parent-after")
"""
    + _EXIT_AS_THE_CHILD
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
class TestForkWithoutHooks:
    def test_child_gets_fresh_message_ids_and_delivers(self, collector: LocalCollector) -> None:
        """A fork that runs no Python hooks (libc's fork, as some servers do) still gives the
        child its own messageIds and a working pipeline, through the pid check."""
        result = subprocess.run(
            [sys.executable, "-c", _HOOKLESS_FORK, collector.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert collector.wait_for_messages(3)
        ids = {m["event"]: m["messageId"] for m in collector.messages}
        assert sorted(ids) == ["child", "parent-after", "parent-before"]
        prefixes = {event: mid.rsplit("-", 1)[0] for event, mid in ids.items()}
        assert prefixes["child"] != prefixes["parent-before"] == prefixes["parent-after"]


# The same under an embedded interpreter that forks from C (uWSGI's module is there), with
# the parent's worker running: every put compares pids, so the child's first event counts.
_HOOKLESS_FORK_UNDER_UWSGI = (
    """
import ctypes, logging, os, sys, time, types
uwsgi = types.ModuleType("uwsgi")
uwsgi.opt, uwsgi.version_info = {}, (2, 0, 31, 0, "")
sys.modules["uwsgi"] = uwsgi
import segmentio_logging
handler = segmentio_logging.SegmentHandler("k", host=sys.argv[1], flush_interval=0.05)
logger = logging.getLogger("app")
logger.addHandler(handler)
logger.warning("parent-before", extra={"user_id": "p"})
assert handler.flush(10)  # the worker is up and waits: nothing new would start in the child
# libc's fork under the interpreter's lock (PyDLL keeps it), as uWSGI forks: no Python hook
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    for i in range(3):
        logger.warning(f"child-{i}", extra={"user_id": "c"})
    ok = handler.flush(10) and handler.stats()["delivered"] == 3
    os._exit(0 if ok else 3)
"""
    + _EXIT_AS_THE_CHILD
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_under_uwsgi_a_hookless_fork_is_seen_at_the_first_put(collector: LocalCollector) -> None:
    """Under uWSGI, which forks its workers from C, a child's first events are queued in a
    fresh pipeline of its own and delivered: none is lost to the parent's inherited queue."""
    result = subprocess.run(
        [sys.executable, "-c", _HOOKLESS_FORK_UNDER_UWSGI, collector.url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert collector.wait_for_messages(4)
    assert sorted(m["event"] for m in collector.messages) == [
        "child-0",
        "child-1",
        "child-2",
        "parent-before",
    ]


# A plain python process whose parent worker is held in a request (the receiver hangs the
# first one) and already woken for the next batch when a C-level fork skips Python's hooks:
# the child notices its new pid a batch later at most, and delivers what it logs after that.
_HOOKLESS_FORK_WHILE_THE_WORKER_IS_BUSY = (
    """
import ctypes, logging, os, sys, time
import segmentio_logging
handler = segmentio_logging.SegmentHandler(
    "k", host=sys.argv[1], batch_size=10, flush_interval=60, shutdown_timeout=1
)
logger = logging.getLogger("app")
logger.addHandler(handler)
for i in range(10):
    logger.warning(f"parent-{i}", extra={"user_id": "p"})  # a full batch: its request hangs
end = time.monotonic() + 30
while handler.stats()["queued"] and time.monotonic() < end:
    time.sleep(0.01)
for i in range(10):
    logger.warning(f"parent-{10 + i}", extra={"user_id": "p"})  # wakes the busy worker again
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    for i in range(30):
        logger.warning(f"child-{i}", extra={"user_id": "c"})
    ok = handler.flush(10) and handler.stats()["delivered"] >= 20
    os._exit(0 if ok else 3)
"""
    + _EXIT_AS_THE_CHILD
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_hookless_fork_while_the_worker_is_busy_is_seen_a_batch_later(
    collector: LocalCollector,
) -> None:
    """A fork that ran no Python hook, made while the parent's worker was in a request and
    already woken again, is noticed in the child within a batch: what the child logs after
    that is its own and delivered, not held in the parent's inherited queue until it fills."""
    collector.script(Reply(hang=True))
    try:
        result = subprocess.run(
            [sys.executable, "-c", _HOOKLESS_FORK_WHILE_THE_WORKER_IS_BUSY, collector.url],
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        release(collector)
    assert result.returncode == 0, result.stderr
    events = [m["event"] for m in collector.messages if m["userId"] == "c"]
    assert len(events) >= 20
    assert set(events) <= {f"child-{i}" for i in range(30)}


class TestCloseBehindAHungRequest:
    def test_queued_messages_are_reported_at_the_deadline(
        self,
        make_handler: Any,
        collector: LocalCollector,
        logger: logging.Logger,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """When close() times out behind a request that never answers, what is still queued
        is reported to on_failure and counted as dropped, not left unsaid."""
        collector.default = Reply(hang=True)
        failures: List[Tuple[int, Exception]] = []
        handler = make_handler(
            shutdown_timeout=0.3,
            timeout=10,
            on_failure=lambda data, error: failures.append((len(data), error)),
        )
        logger.handlers[:] = [handler]
        logger.info("first", extra={"user_id": "u"})
        assert collector.wait_for_requests(1, timeout=5)
        for _ in range(20):
            logger.info("later", extra={"user_id": "u"})
        started = time.monotonic()
        assert handler._pipeline.close() is False
        assert time.monotonic() - started < 5
        assert [(count, type(error).__name__) for count, error in failures] == [(20, "ClosedError")]
        counts = handler.stats()
        assert counts["dropped"] == 20 and counts["pending"] == 1
        assert counts["enqueued"] == 21
        assert "1 message in a request the receiver had not answered" in capfd.readouterr().err
        collector.release_hangs()


class RecordingDelivery:
    """A delivery of the test's own: records the pipeline's calls, sends in memory."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: List[str] = []
        self.host: Any = None
        self.worker_threads: Set[str] = set()

    def attach(self, pipeline: Any) -> None:
        self.calls.append("attach")
        self.host = pipeline

    def begin(self) -> None:
        self.calls.append("begin")
        self.worker_threads.add(threading.current_thread().name)

    def work(self) -> None:
        self.worker_threads.add(threading.current_thread().name)
        self.host.drain()

    def end(self) -> None:
        self.calls.append("end")

    def flush(self, timeout: Optional[float]) -> bool:
        self.calls.append("flush")
        result: bool = self.host.wait_settled(time.monotonic() + (timeout or 10))
        return result

    def persist(self, timeout: Optional[float]) -> bool:
        self.calls.append("persist")
        return self.flush(timeout)

    def closing(self) -> None:
        self.calls.append("closing")

    def release(self) -> None:
        self.calls.append("release")

    def holds_nothing(self) -> bool:
        return True

    def after_fork_in_child(self) -> None:
        self.calls.append("fork")

    def stats(self) -> Dict[str, int]:
        return {"recorded": len(self.calls)}


class TestDeliveryStrategy:
    def test_the_pipeline_drives_the_delivery_it_holds(self, collector: LocalCollector) -> None:
        """A pipeline built with a delivery of its own calls it at each step, on the worker."""
        delivery = RecordingDelivery()
        transport = Transport(host=collector.url, write_key="k", timeout=5)
        pipeline = Pipeline(transport, flush_interval=30, delivery=delivery)
        assert delivery.calls == ["attach"]
        assert repr(pipeline).startswith("<Pipeline open delivery=recording")
        for i in range(3):
            assert pipeline.put(encoded(i))
        assert pipeline.flush(10)
        assert [m["messageId"] for m in collector.messages] == ["m0", "m1", "m2"]
        assert delivery.worker_threads == {WORKER_NAME}
        assert pipeline.persist(10)
        stats = pipeline.stats()
        assert stats["delivered"] == 3
        assert stats["recorded"] == len(delivery.calls)
        assert pipeline.close(5) is True
        assert delivery.calls == [
            "attach",
            "begin",
            "flush",
            "persist",
            "flush",
            "closing",
            "end",
            "release",
        ]

    def test_without_a_delivery_the_pipeline_keeps_events_in_memory(self) -> None:
        """The default delivery is the in-memory one."""
        transport = Transport(host="http://127.0.0.1:9", write_key="k")
        pipeline = Pipeline(transport)
        try:
            assert isinstance(pipeline.delivery, MemoryDelivery)
            assert pipeline.delivery.host is pipeline
            assert pipeline.stats().keys() == {
                "enqueued",
                "delivered",
                "failed",
                "dropped",
                "filtered",
                "pending",
                "queued",
                "batches",
                "retries",
            }
        finally:
            pipeline.close(1)
