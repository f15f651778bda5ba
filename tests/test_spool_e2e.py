"""The disk spool wired into the pipeline: crashes, outages, bounds, processes, faults."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from segmentio_logging import DeliveryError, SegmentHandler
from segmentio_logging._errors import SpoolError
from segmentio_logging._pipeline import Pipeline
from segmentio_logging._spool import Spool, SpoolDelivery
from segmentio_logging._transport import Deadline, Transport
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import closed_url, identity_holds

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock")

MakeHandler = Callable[..., SegmentHandler]

# Small budgets: a receiver that is down costs each attempt next to nothing.
FAST = {"flush_interval": 0.05, "max_retries": 0, "retry_budget": 0.5, "timeout": 2}

CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from segmentio_logging import SegmentHandler

    cfg = json.loads(sys.argv[1])
    options = cfg["options"]
    handler = SegmentHandler("test-key", host=cfg["host"], spool_path=cfg["spool"], **options)
    log = logging.getLogger("app")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    for i in range(cfg["count"]):
        log.info("Played", extra={"user_id": "u1", "message_id": f"{cfg['tag']}-{i}"})
    if cfg["mode"] == "persist-and-wait":
        ok = handler._pipeline.persist(10)
        print(json.dumps({"persisted": ok, "stats": handler.stats()}), flush=True)
        sys.stdin.read()  # blocks until the test kills this process
    elif cfg["mode"] == "flush":
        ok = handler.flush(20)
        print(json.dumps({"flushed": ok, "stats": handler.stats()}), flush=True)
    else:  # "exit": no flush, no close; interpreter exit does what it does
        print(json.dumps({"stats": handler.stats()}), flush=True)
    """
)


def child(
    spool: Path, host: str, *, count: int, tag: str, mode: str, **options: Any
) -> subprocess.Popen[str]:
    """Start a process that logs ``count`` events with message ids ``tag-0`` ... to ``host``."""
    cfg = {
        "spool": str(spool),
        "host": host,
        "count": count,
        "tag": tag,
        "mode": mode,
        "options": {**FAST, "shutdown_timeout": 2, **options},
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
    for name in list(env):
        if name.startswith("SEGMENT_"):
            del env[name]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> Tuple[Dict[str, Any], str]:
    """Wait for a child; its printed JSON and its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the child hung:\n{err}") from None
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def ids(collector: LocalCollector) -> Counter[str]:
    return Counter(str(m["messageId"]) for m in collector.messages)


def spool_files(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".sqlite3"))


def dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def log_events(logger: logging.Logger, tag: str, count: int, pad: int = 0) -> None:
    for i in range(count):
        extra: Dict[str, Any] = {"user_id": "u1", "message_id": f"{tag}-{i}"}
        if pad:
            extra["properties"] = {"pad": "x" * pad}
        logger.info("Played", extra=extra)


def padded(message_id: str) -> Tuple[Dict[str, Any], bytes]:
    """A ready (message, bytes) item of exactly 100 bytes for a Pipeline's default prepare."""
    message: Dict[str, Any] = {"type": "track", "userId": "u", "messageId": message_id, "pad": ""}
    message["pad"] = "x" * (100 - len(json.dumps(message)))
    data = json.dumps(message).encode("utf-8")
    assert len(data) == 100
    return message, data


def persist(handler: SegmentHandler, timeout: float = 10.0) -> bool:
    return handler._pipeline.persist(timeout)


class Calls:
    """Records on_success or on_failure calls."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, data: Any, arg: Any) -> None:
        with self._lock:
            self.calls.append((data, arg))

    def errors(self, kind: type) -> List[Any]:
        with self._lock:
            return [arg for _, arg in self.calls if isinstance(arg, kind)]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def attach(logger: logging.Logger) -> Iterator[Callable[[SegmentHandler], logging.Logger]]:
    def do(handler: SegmentHandler) -> logging.Logger:
        logger.addHandler(handler)
        return logger

    yield do


class TestCrashRecovery:
    def test_events_of_a_killed_process_are_delivered_once_by_the_next(
        self, collector: LocalCollector, spool_dir: Path
    ) -> None:
        """SIGKILL with the receiver down, then a new process delivers every event exactly once."""
        down = closed_url()
        proc = child(spool_dir, down, count=120, tag="k", mode="persist-and-wait")
        assert proc.stdout is not None
        line = proc.stdout.readline()
        report = json.loads(line)
        assert report["persisted"] is True
        assert report["stats"]["spooled"] == 120
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert len(spool_files(spool_dir)) == 1  # the dead process's file, left as an orphan

        result, _ = finish(child(spool_dir, collector.url, count=0, tag="n", mode="flush"))
        assert result["flushed"] is True
        assert result["stats"]["recovered"] == 120
        assert result["stats"]["enqueued"] == 0
        assert ids(collector) == Counter({f"k-{i}": 1 for i in range(120)})
        assert spool_files(spool_dir) == []

    def test_orphans_are_sent_before_the_new_process_own_events(
        self, collector: LocalCollector, spool_dir: Path
    ) -> None:
        """A process that finds an orphan sends its events first, oldest first."""
        proc = child(spool_dir, closed_url(), count=30, tag="old", mode="persist-and-wait")
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["persisted"] is True
        proc.kill()
        proc.communicate(timeout=10)

        result, _ = finish(child(spool_dir, collector.url, count=30, tag="new", mode="flush"))
        assert result["flushed"] is True
        order = [str(m["messageId"]) for m in collector.messages]
        assert order == [f"old-{i}" for i in range(30)] + [f"new-{i}" for i in range(30)]


class TestLongOutage:
    def test_an_outage_longer_than_the_process_leaves_events_for_the_next(
        self, collector: LocalCollector, spool_dir: Path
    ) -> None:
        """A process that exits during an outage leaves its events on disk, not failed."""
        collector.default = Reply(status=503)
        started = time.monotonic()
        # No retry limit (the default): the failing batch stays on disk, never given up.
        first, err = finish(
            child(
                spool_dir,
                collector.url,
                count=40,
                tag="o",
                mode="exit",
                max_retries=None,
                retry_budget=None,
            )
        )
        assert time.monotonic() - started < 15  # exit is bounded by shutdown_timeout
        assert first["stats"]["enqueued"] == 40
        assert "40 events left in the spool" in err
        assert collector.messages == []
        assert len(spool_files(spool_dir)) == 1

        collector.default = Reply()
        second, _ = finish(child(spool_dir, collector.url, count=0, tag="n", mode="flush"))
        assert second["flushed"] is True
        assert second["stats"]["recovered"] == 40
        assert ids(collector) == Counter({f"o-{i}": 1 for i in range(40)})

    def test_during_an_outage_events_wait_on_disk_and_count_as_pending(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """Undelivered events sit on disk (not in memory), pending; delivered once it is over."""
        collector.default = Reply(status=503)
        failures = Calls()
        handler = make_handler(spool_path=str(spool_dir), on_failure=failures, **FAST)
        logger = attach(handler)
        log_events(logger, "p", 30)
        assert persist(handler)
        assert handler.flush(0.3) is False
        stats = handler.stats()
        assert (stats["pending"], stats["queued"], stats["spooled"]) == (30, 0, 30)
        assert (stats["failed"], stats["delivered"]) == (0, 0)
        assert identity_holds(stats)
        assert failures.calls == []  # kept on disk is not a failure

        collector.default = Reply()
        assert handler.flush(10) is True
        assert ids(collector) == Counter({f"p-{i}": 1 for i in range(30)})
        stats = handler.stats()
        assert (stats["delivered"], stats["pending"], stats["spooled"]) == (30, 0, 0)

    def test_flush_without_timeout_returns_false_during_an_outage(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """flush() with no timeout does not wait out an outage: False once an attempt gave up."""
        collector.default = Reply(status=503)
        handler = make_handler(spool_path=str(spool_dir), **FAST)
        log_events(attach(handler), "f", 5)
        started = time.monotonic()
        assert handler.flush() is False
        assert time.monotonic() - started < 5
        assert handler.stats()["spooled"] == 5

    def test_memory_stays_bounded_while_the_queue_drains_to_disk(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """During an outage the queue empties into the spool: max_queue_size is never reached."""
        collector.default = Reply(status=503)
        handler = make_handler(spool_path=str(spool_dir), max_queue_size=50, **FAST)
        logger = attach(handler)
        for round_ in range(10):
            log_events(logger, f"m{round_}", 40)
            assert persist(handler)
            assert handler.stats()["queued"] == 0
        stats = handler.stats()
        assert (stats["dropped"], stats["spooled"], stats["pending"]) == (0, 400, 400)

    def test_a_batch_refused_for_good_leaves_the_spool_and_fails(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """A 400 is not retried: the events leave the spool and reach on_failure as dicts."""
        collector.script(Reply(status=400, body='{"error":"bad"}'))
        failures = Calls()
        handler = make_handler(spool_path=str(spool_dir), on_failure=failures, **FAST)
        log_events(attach(handler), "r", 3)
        assert handler.flush(10) is True
        stats = handler.stats()
        assert (stats["failed"], stats["pending"], stats["spooled"]) == (3, 0, 0)
        [(data, error)] = [(d, e) for d, e in failures.calls if isinstance(e, DeliveryError)]
        assert error.status == 400
        assert [m["messageId"] for m in data] == ["r-0", "r-1", "r-2"]
        assert len(collector.requests) == 1

    def test_on_success_receives_message_dicts(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """on_success gets the delivered messages as dicts, read back from the spool."""
        successes = Calls()
        handler = make_handler(spool_path=str(spool_dir), on_success=successes, **FAST)
        log_events(attach(handler), "s", 4)
        assert handler.flush(10) is True
        sent = [m["messageId"] for data, _ in successes.calls for m in data]
        assert sent == ["s-0", "s-1", "s-2", "s-3"]
        assert all(resp.status == 200 for _, resp in successes.calls)


class TestBounds:
    def test_past_spool_max_bytes_the_oldest_are_dropped_and_counted(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """A small spool_max_bytes drops the oldest events, counted, reported, disk bounded."""
        collector.default = Reply(status=503)
        failures = Calls()
        limit = 128 * 1024
        handler = make_handler(
            spool_path=str(spool_dir), spool_max_bytes=limit, on_failure=failures, **FAST
        )
        logger = attach(handler)
        total = 1_500
        for chunk in range(15):
            log_events(logger, f"b{chunk:02d}", 100, pad=300)
            assert persist(handler)
        stats = handler.stats()
        assert stats["dropped"] > 0
        assert stats["dropped"] + stats["pending"] == total
        assert identity_holds(stats)
        reported = failures.errors(SpoolError)
        assert reported and all("spool_max_bytes" in e.reason for e in reported)
        assert sum(e.count for e in reported) == stats["dropped"]
        # The bound counts payload bytes; SQLite's pages and its WAL (kept at 1 MiB) come on top.
        assert dir_size(spool_dir) < limit + (1 << 20) + 256 * 1024

        collector.default = Reply()
        assert handler.flush(15) is True
        got = [str(m["messageId"]) for m in collector.messages]
        logged = [f"b{c:02d}-{i}" for c in range(15) for i in range(100)]
        assert got == logged[total - len(got) :]  # the newest survived, in order
        assert handler.stats()["delivered"] == len(got) == total - stats["dropped"]

    def test_past_spool_max_age_old_events_are_dropped(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """Events older than spool_max_age are deleted, counted as dropped and reported."""
        collector.default = Reply(status=503)
        failures = Calls()
        handler = make_handler(
            spool_path=str(spool_dir), spool_max_age=0.2, on_failure=failures, **FAST
        )
        logger = attach(handler)
        log_events(logger, "a", 10)
        assert persist(handler)
        end = time.monotonic() + 10
        n = 0
        while handler.stats()["dropped"] < 10 and time.monotonic() < end:
            log_events(logger, f"late{n}", 1)  # each append applies the bound
            assert persist(handler)
            n += 1
            time.sleep(0.05)  # polling: lets the first events age
        assert handler.stats()["dropped"] >= 10
        assert any("spool_max_age" in e.reason for e in failures.errors(SpoolError))
        assert identity_holds(handler.stats())


class TestBoundDuringDelivery:
    def test_rows_a_bound_drops_in_flight_reach_on_failure_only(
        self, collector: LocalCollector, spool_dir: Path
    ) -> None:
        """spool_max_bytes dropping rows of a batch in flight: those are counted and reported as
        dropped, never passed to on_success too; the other rows are delivered; counts add up."""
        entered, go = threading.Event(), threading.Event()

        class Held(Transport):
            """Holds its first request until the test lets it go; a real POST after that."""

            def deliver(self, parts: List[bytes], deadline: Optional[Deadline] = None) -> Any:
                if not entered.is_set():
                    entered.set()
                    assert go.wait(10)
                return super().deliver(parts, deadline)

        successes, failures = Calls(), Calls()
        pipeline = Pipeline(
            Held(host=collector.url, write_key="k", timeout=5, max_retries=0),
            flush_interval=0.05,
            on_success=successes,
            on_failure=failures,
            delivery=SpoolDelivery(Spool(spool_dir, max_bytes=500)),
        )
        try:
            for i in range(4):
                assert pipeline.put(padded(f"a-{i}"))
            assert pipeline.persist(10)
            assert entered.wait(10)  # the sender holds a-0..a-3, read from the spool
            for i in range(3):
                assert pipeline.put(padded(f"b-{i}"))
            assert pipeline.persist(10)  # this append pushed out the oldest: a-0, a-1
            dropped = pipeline.stats()["dropped"]
            assert dropped == 2
            go.set()
            assert pipeline.flush(10) is True
            sent = Counter(str(m["messageId"]) for m in collector.messages)
            assert sent == Counter(["a-0", "a-1", "a-2", "a-3", "b-0", "b-1", "b-2"])
            succeeded = [m["messageId"] for data, _ in successes.calls for m in data]
            assert succeeded == ["a-2", "a-3", "b-0", "b-1", "b-2"]
            reported = failures.errors(SpoolError)
            assert sum(e.count for e in reported) == dropped
            assert all("spool_max_bytes" in e.reason for e in reported)
            assert [d for d, e in failures.calls if not isinstance(e, SpoolError)] == []
            stats = pipeline.stats()
            assert (stats["delivered"], stats["dropped"], stats["pending"]) == (5, 2, 0)
            assert stats["enqueued"] == 7
            assert identity_holds(stats)
        finally:
            go.set()
            pipeline.close(2)


class TestSeveralProcesses:
    def test_three_processes_share_one_spool_path(
        self, collector: LocalCollector, spool_dir: Path
    ) -> None:
        """Three processes at once on one spool_path, plus an orphan: each event once, no damage."""
        orphan = child(spool_dir, closed_url(), count=50, tag="orphan", mode="persist-and-wait")
        assert orphan.stdout is not None
        assert json.loads(orphan.stdout.readline())["persisted"] is True
        orphan.kill()
        orphan.communicate(timeout=10)

        procs = [
            child(spool_dir, collector.url, count=300, tag=f"w{n}", mode="flush", batch_size=20)
            for n in range(3)
        ]
        results = [finish(proc) for proc in procs]
        for result, err in results:
            assert result["flushed"] is True
            assert "corrupt" not in err
        assert sum(result["stats"]["recovered"] for result, _ in results) == 50
        expected = {f"w{n}-{i}": 1 for n in range(3) for i in range(300)}
        expected.update({f"orphan-{i}": 1 for i in range(50)})
        assert ids(collector) == Counter(expected)
        assert [p.name for p in spool_dir.iterdir()] == []  # all delivered, all cleaned up


class TestFaults:
    @pytest.mark.parametrize(
        "content",
        [b"this is not a database" * 50, b"SQLite format 3\x00" + bytes(range(256)) * 16],
        ids=["bad-header", "bad-pages"],
    )
    def test_a_corrupt_spool_file_is_moved_aside_and_reported(
        self,
        collector: LocalCollector,
        make_handler: MakeHandler,
        attach: Any,
        spool_dir: Path,
        content: bytes,
    ) -> None:
        """A corrupt file is renamed *.corrupt-*, reported to on_failure; delivery goes on."""
        spool_dir.mkdir()
        (spool_dir / "spool-1-deadbeef.sqlite3").write_bytes(content)
        failures = Calls()
        handler = make_handler(spool_path=str(spool_dir), on_failure=failures, **FAST)
        log_events(attach(handler), "c", 5)
        assert handler.flush(10) is True
        assert ids(collector) == Counter({f"c-{i}": 1 for i in range(5)})
        [error] = failures.errors(SpoolError)
        assert "corrupt" in error.reason
        names = [p.name for p in spool_dir.iterdir()]
        assert not (spool_dir / "spool-1-deadbeef.sqlite3").exists()
        assert any(name.startswith("spool-1-deadbeef.sqlite3.corrupt-") for name in names)

    def test_an_unusable_spool_path_falls_back_to_memory(
        self,
        collector: LocalCollector,
        make_handler: MakeHandler,
        attach: Any,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A spool_path that cannot be a directory is reported once; events go from memory."""
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        failures = Calls()
        handler = make_handler(spool_path=str(blocker / "spool"), on_failure=failures, **FAST)
        logger = attach(handler)
        log_events(logger, "mem", 5)
        assert handler.flush(10) is True
        log_events(logger, "mem2", 5)
        assert handler.flush(10) is True
        assert len(collector.messages) == 10
        [error] = failures.errors(SpoolError)
        assert "spool_path" in error.reason
        assert "keeping events in memory" in capsys.readouterr().err
        stats = handler.stats()
        assert (stats["delivered"], stats["spooled"]) == (10, 0)


class TestHotPath:
    def test_emit_does_no_disk_io(
        self, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """Logging leaves the spool untouched; only the worker thread appends, later."""
        # The receiver down: what the worker appends stays on disk to be counted (a
        # receiver that is up may already have taken it from the spool's sender).
        handler = make_handler(
            host=closed_url(),
            spool_path=str(spool_dir),
            flush_interval=30,
            batch_size=2_500,
            max_retries=0,
        )
        assert persist(handler)  # the worker has opened its file
        pipeline = handler._pipeline
        assert isinstance(pipeline.delivery, SpoolDelivery)  # what spool_path builds
        spool = pipeline.delivery.spool
        threads: List[str] = []
        original = spool.append

        def recording(parts: Any) -> Any:
            threads.append(threading.current_thread().name)
            return original(parts)

        spool.append = recording  # type: ignore[method-assign]
        before = {p.name: p.stat().st_size for p in spool_dir.iterdir()}
        log_events(attach(handler), "h", 200)
        assert {p.name: p.stat().st_size for p in spool_dir.iterdir()} == before
        assert threads == []
        assert persist(handler)
        assert threads == ["segmentio-logging-worker"]
        assert {p.name: p.stat().st_size for p in spool_dir.iterdir()} != before
        assert handler.stats()["spooled"] == 200


class TestFork:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_forked_child_gets_its_own_spool_file(
        self, collector: LocalCollector, make_handler: MakeHandler, attach: Any, spool_dir: Path
    ) -> None:
        """After fork the child writes a fresh file; every event is delivered once."""
        handler = make_handler(spool_path=str(spool_dir), **FAST)
        logger = attach(handler)
        log_events(logger, "parent", 5)
        assert persist(handler)
        parent_file = set(spool_files(spool_dir))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                log_events(logger, "child", 5)
                ok = persist(handler) and handler.flush(10)
                os.write(write, json.dumps(spool_files(spool_dir)).encode())
                code = 0 if ok else 2
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as stream:
            child_files = set(json.loads(stream.read() or "[]"))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert handler.flush(10) is True
        assert child_files - parent_file  # the child had a file of its own
        expected = {f"{who}-{i}": 1 for who in ("parent", "child") for i in range(5)}
        assert ids(collector) == Counter(expected)


class TestRemoveFailure:
    def test_a_batch_the_spool_cannot_remove_is_resent_with_a_backoff(
        self, tmp_path: Path, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A delivered batch the spool fails to delete is sent again after a growing wait,
        not in a tight loop."""

        def refuse(self: Spool, file: Any, row_ids: List[int]) -> int:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(Spool, "_delete", refuse)
        handler = SegmentHandler(
            "k", host=collector.url, spool_path=str(tmp_path), flush_interval=0.05
        )
        log = logging.getLogger("tests.spool.remove_failure")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.handlers[:] = [handler]
        try:
            log.info("Saved", extra={"user_id": "u"})
            assert collector.wait_for_requests(2, timeout=5)
            # Backing off from 0.05 s and doubling, ten requests take far longer than this.
            assert not collector.wait_for_requests(10, timeout=1.5)
        finally:
            handler.close()
