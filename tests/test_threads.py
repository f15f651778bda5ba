"""_threads: whether threads run under uWSGI (its ``uwsgi`` module's options and version),
and how a pipeline delivers where they do not (from the threads that log).

The gevent side of the module runs in subprocesses: tests/test_gevent.py.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from segmentio_logging import _report, _senders, _threads
from segmentio_logging.testing import LocalCollector, Reply


@pytest.fixture
def uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A ``uwsgi`` module as uWSGI provides it to its app: ``opt`` and ``version_info``."""
    module = types.ModuleType("uwsgi")
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    monkeypatch.setattr(_threads, "_uwsgi_warned", False)
    monkeypatch.setattr(_report, "_last", {})  # no rate limit left by another test
    yield module


@pytest.mark.parametrize(
    ("opt", "version", "run"),
    [
        ({}, (2, 0, 26, 0, ""), False),
        ({"enable-threads": True}, (2, 0, 26, 0, ""), True),
        ({"threads": b"4"}, (2, 0, 26, 0, ""), True),
        ({"threads": b"1"}, (2, 0, 26, 0, ""), False),
        ({"enable-threads": [b"false"]}, (2, 0, 20, 0, ""), False),
        ({}, (2, 0, 27, 0, ""), True),
        ({}, (2, 0, 31, 0, ""), True),
    ],
)
def test_threads_run_follows_the_options_and_the_version(
    uwsgi: types.ModuleType, opt: Dict[str, Any], version: Tuple[Any, ...], run: bool
) -> None:
    """Threads run with --enable-threads, --threads above 1, or a uWSGI from 2.0.27 on."""
    uwsgi.opt = opt  # type: ignore[attr-defined]
    uwsgi.version_info = version  # type: ignore[attr-defined]
    assert _threads.threads_run() is run


def test_without_threads_it_warns_once_with_the_fix(
    uwsgi: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warning names --enable-threads, and comes once however often it is asked."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    assert not _threads.threads_run()
    assert not _threads.threads_run()
    err = capsys.readouterr().err
    assert err.count("uWSGI runs without --enable-threads") == 1
    assert "Start uWSGI with --enable-threads" in err


def test_outside_uwsgi_and_gevent_threads_are_threads() -> None:
    """With neither, threads run and a worker is a plain daemon threading.Thread."""
    assert "uwsgi" not in sys.modules
    assert _threads.threads_run()
    thread = _threads.worker_thread(lambda: None, "w", made_with=threading.Event())
    assert isinstance(thread, threading.Thread) and thread.daemon


def test_without_threads_a_handler_sends_full_batches_from_the_caller_and_the_rest_at_close(
    uwsgi: types.ModuleType, make_handler: Any, collector: Any, logger: Any
) -> None:
    """No worker starts; a full batch goes from the logging thread, the rest at close."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    handler = make_handler(batch_size=5, flush_interval=30)
    logger.addHandler(handler)
    for n in range(7):
        logger.info("Song Played", extra={"user_id": f"u{n}"})
    assert not handler._pipeline.worker_alive()
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(5)]
    handler.close()
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(7)]
    assert handler.stats()["delivered"] == 7


def test_without_threads_a_queue_smaller_than_a_batch_goes_from_the_caller_once_full(
    uwsgi: types.ModuleType, make_handler: Any, collector: Any, logger: Any
) -> None:
    """With max_queue_size below batch_size a full queue is a full batch: it goes from the
    logging thread rather than the next record being dropped."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    handler = make_handler(batch_size=100, max_queue_size=5, flush_interval=30)
    logger.addHandler(handler)
    for n in range(7):
        logger.info("Song Played", extra={"user_id": f"u{n}"})
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(5)]
    assert handler.stats()["dropped"] == 0
    handler.close()
    assert handler.stats()["delivered"] == 7


@pytest.fixture
def no_threads(uwsgi: types.ModuleType) -> types.ModuleType:
    """A uWSGI before 2.0.27 started without --enable-threads."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    return uwsgi


def assert_all_accounted(handler: Any) -> None:
    stats = handler.stats()
    ended = ("delivered", "dropped", "skipped", "failed", "filtered", "pending")
    assert sum(stats[name] for name in ended) == stats["enqueued"], stats


def requests_per_call(
    collector: LocalCollector, log: Callable[[int], None], numbers: range
) -> List[int]:
    """How many requests each log call made (they are made on the calling thread)."""
    made = []
    for i in numbers:
        before = len(collector.requests)
        log(i)
        made.append(len(collector.requests) - before)
    return made


def test_without_threads_a_receiver_that_is_down_costs_a_log_call_one_request(
    no_threads: types.ModuleType, make_handler: Any, collector: LocalCollector, logger: Any
) -> None:
    """A failed batch stays queued for a later call instead of being retried in the log
    call; the backoff spaces the calls' attempts; the exit close delivers everything."""
    collector.script(Reply(503), Reply(503), Reply(503))
    handler = make_handler(batch_size=5, flush_interval=30, shutdown_timeout=30)
    logger.addHandler(handler)

    def log(n: int) -> None:
        logger.info("Song Played", extra={"user_id": f"u{n}"})

    made = requests_per_call(collector, log, range(5))
    assert made == [0, 0, 0, 0, 1]  # the call that filled the batch: one request, a 503
    assert handler.stats()["delivered"] == 0 and handler.stats()["pending"] == 5
    made += requests_per_call(collector, log, range(5, 15))
    assert max(made) == 1, made
    assert handler.stats()["failed"] == 0
    assert_all_accounted(handler)
    handler.close()
    assert sorted(m["userId"] for m in collector.messages) == sorted(f"u{n}" for n in range(15))
    ids = [m["messageId"] for m in collector.messages]
    assert len(set(ids)) == len(ids) == handler.stats()["delivered"] == 15
    assert_all_accounted(handler)


def test_without_threads_a_hanging_receiver_costs_a_log_call_one_request(
    no_threads: types.ModuleType, make_handler: Any, collector: LocalCollector, logger: Any
) -> None:
    """A request the receiver does not answer ends at the timeout and is not tried again
    in that call; the same messages go at close."""
    collector.script(Reply(hang=True), Reply(hang=True))
    handler = make_handler(batch_size=5, flush_interval=30, timeout=1, shutdown_timeout=30)
    logger.addHandler(handler)
    for n in range(5):
        logger.info("Song Played", extra={"user_id": f"u{n}"})
    assert len(collector.requests) == 1
    assert handler.stats()["pending"] == 5
    collector.release_hangs()
    handler.close()
    sent = [request.messages for request in collector.requests]
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(5)]
    assert [m["messageId"] for m in sent[-1]] == [m["messageId"] for m in sent[0]]
    assert_all_accounted(handler)


@pytest.mark.parametrize(
    ("reply", "options"),
    [(Reply(400), {}), (Reply(503), {"max_retries": 0}), (Reply(503), {"retry_budget": 0})],
)
def test_without_threads_a_refused_or_given_up_batch_fails_in_the_call(
    no_threads: types.ModuleType,
    make_handler: Any,
    collector: LocalCollector,
    logger: Any,
    reply: Reply,
    options: Dict[str, Any],
) -> None:
    """A refusal, or max_retries / retry_budget used up, fails the batch (reported)."""
    failures: List[Any] = []
    collector.script(reply)
    handler = make_handler(
        batch_size=5, flush_interval=30, on_failure=lambda m, e: failures.append(e), **options
    )
    logger.addHandler(handler)
    for n in range(5):
        logger.info("Song Played", extra={"user_id": f"u{n}"})
    assert handler.stats()["failed"] == 5
    assert [(e.count, e.status) for e in failures] == [(5, reply.status)]
    assert_all_accounted(handler)


def test_without_threads_a_batch_too_large_is_sent_in_halves_from_later_calls(
    no_threads: types.ModuleType, make_handler: Any, collector: LocalCollector, logger: Any
) -> None:
    """A 413 splits the held batch; each half goes from the next call, none is lost."""
    collector.script(Reply(413))
    handler = make_handler(batch_size=4, flush_interval=30)
    logger.addHandler(handler)

    def log(n: int) -> None:
        logger.info("Song Played", extra={"user_id": f"u{n}"})

    assert requests_per_call(collector, log, range(6)) == [0, 0, 0, 1, 1, 1]
    assert [len(request.messages) for request in collector.requests] == [4, 2, 2]
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(4)]
    assert handler.stats()["delivered"] == 4
    assert_all_accounted(handler)


def test_without_threads_a_log_call_does_not_wait_for_another_threads_request(
    no_threads: types.ModuleType,
    make_handler: Any,
    collector: LocalCollector,
    logger: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While one thread's request is out, another thread's log calls neither wait for it
    nor send its batch a second time."""
    monkeypatch.setattr(_senders, "DEFERRED_TIMEOUT", 60.0)  # out until the test lets it go
    collector.script(Reply(hang=True))
    handler = make_handler(batch_size=5, flush_interval=30, timeout=60, shutdown_timeout=30)
    logger.addHandler(handler)

    def log(n: int) -> None:
        logger.info("Song Played", extra={"user_id": f"u{n}"})

    for n in range(4):
        log(n)
    sending = threading.Thread(target=log, args=(4,))
    sending.start()
    try:
        assert collector.wait_for_requests(1)
        for n in range(5, 10):  # a full batch again: due, but the other thread is sending
            log(n)
        assert sending.is_alive() and len(collector.requests) == 1
    finally:
        collector.release_hangs()
        sending.join(30)
    handler.close()
    assert sorted(m["userId"] for m in collector.messages) == sorted(f"u{n}" for n in range(10))
    assert len({m["messageId"] for m in collector.messages}) == 10
    assert_all_accounted(handler)
