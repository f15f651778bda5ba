"""Tests for ``_lifecycle``: the busy-thread guard, deadlines, and the exit and fork hooks."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from typing import List, Optional

import pytest

from segmentio_logging import _lifecycle
from segmentio_logging.testing import LocalCollector


class FakePipeline:
    """Records the calls the exit and fork hooks make on a registered pipeline."""

    def __init__(self, calls: List[str], name: str) -> None:
        self.calls = calls
        self.name = name

    def begin_close(self, timeout: Optional[float] = None) -> None:
        self.calls.append(f"begin {self.name}")

    def wait_closed(self) -> bool:
        self.calls.append(f"wait {self.name}")
        return True

    def after_fork_in_child(self) -> None:
        self.calls.append(f"fork {self.name}")


@pytest.fixture
def no_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the pipelines a test registers are live (and the hooks are its own)."""
    monkeypatch.setattr(_lifecycle, "_live", weakref.WeakSet())
    monkeypatch.setattr(_lifecycle, "_before_close_all", [])
    monkeypatch.setattr(_lifecycle, "_child_resets", [])


def test_marked_busy_marks_this_thread_for_the_block_only() -> None:
    """Inside the block the thread is busy; after it, it is not."""
    ident = threading.get_ident()
    assert ident not in _lifecycle.busy_threads
    with _lifecycle.marked_busy():
        assert ident in _lifecycle.busy_threads
        assert not _lifecycle.may_wait()
    assert ident not in _lifecycle.busy_threads
    assert _lifecycle.may_wait()


def test_nested_marked_busy_keeps_the_mark_until_the_outer_block_ends() -> None:
    """An inner block does not clear the mark the outer block set."""
    ident = threading.get_ident()
    with _lifecycle.marked_busy():
        with _lifecycle.marked_busy():
            pass
        assert ident in _lifecycle.busy_threads
    assert ident not in _lifecycle.busy_threads


def test_marked_busy_is_per_thread() -> None:
    """Another thread is not marked by this thread's block."""
    seen: List[bool] = []
    with _lifecycle.marked_busy():
        thread = threading.Thread(
            target=lambda: seen.append(threading.get_ident() in _lifecycle.busy_threads)
        )
        thread.start()
        thread.join(10)
    assert seen == [False]


def test_may_wait_is_false_under_the_logging_lock() -> None:
    """Holding logging's lock (dictConfig closing handlers) forbids waiting on a worker."""
    lock = logging._lock
    with lock:
        assert _lifecycle.logging_lock_held()
        assert not _lifecycle.may_wait()
    assert not _lifecycle.logging_lock_held()


def test_end_of_none_is_never_and_a_timeout_is_that_far_ahead() -> None:
    """end_of(None) never comes; end_of(t) is t seconds from now on the monotonic clock."""
    assert _lifecycle.end_of(None) == math.inf
    before = time.monotonic()
    end = _lifecycle.end_of(2.0)
    assert before + 2.0 <= end <= time.monotonic() + 2.0


@pytest.mark.usefixtures("no_live")
def test_close_all_runs_the_hooks_then_begins_every_close_before_waiting() -> None:
    """At exit the hooks run first, then every pipeline begins closing, then each is waited."""
    calls: List[str] = []
    first, second = FakePipeline(calls, "a"), FakePipeline(calls, "b")
    _lifecycle.register(first)
    _lifecycle.register(second)
    _lifecycle.before_close_all(lambda: calls.append("hook"))
    _lifecycle.close_all()
    assert calls[0] == "hook"
    assert sorted(calls[1:3]) == ["begin a", "begin b"]
    assert sorted(calls[3:]) == ["wait a", "wait b"]


@pytest.mark.usefixtures("no_live")
def test_a_raising_exit_hook_does_not_stop_the_closes() -> None:
    """A hook that raises is passed over; the pipelines still close."""
    calls: List[str] = []
    pipeline = FakePipeline(calls, "a")
    _lifecycle.register(pipeline)

    def broken() -> None:
        raise RuntimeError("boom")

    _lifecycle.before_close_all(broken)
    _lifecycle.close_all()
    assert calls == ["begin a", "wait a"]


@pytest.mark.usefixtures("no_live")
def test_a_pipeline_no_longer_referenced_is_not_closed_at_exit() -> None:
    """Registration is weak: a pipeline the program dropped is not kept alive for exit."""
    calls: List[str] = []
    _lifecycle.register(FakePipeline(calls, "gone"))
    _lifecycle.close_all()
    assert calls == []


@pytest.mark.usefixtures("no_live")
def test_after_fork_in_child_resets_pipelines_then_runs_the_resets_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a new process, pipelines reset before the registered resets; twice is once."""
    calls: List[str] = []
    pipeline = FakePipeline(calls, "a")
    _lifecycle.register(pipeline)
    _lifecycle.on_fork_in_child(lambda: calls.append("reset"))
    monkeypatch.setattr(_lifecycle, "_reset_for_pid", -1)  # as if this were a new process
    busy = threading.get_ident() + 1
    _lifecycle.busy_threads.add(busy)
    try:
        _lifecycle.after_fork_in_child()
        _lifecycle.after_fork_in_child()
        assert calls == ["fork a", "reset"]
        assert busy not in _lifecycle.busy_threads  # the parent's threads do not exist here
    finally:
        _lifecycle.busy_threads.discard(busy)


def test_flush_all_delivers_what_every_pipeline_holds_and_leaves_them_open(
    make_handler: object, collector: LocalCollector
) -> None:
    """flush_all() sends what each live pipeline queued; the handlers keep working after."""
    handlers = [make_handler(flush_interval=30) for _ in range(2)]  # type: ignore[operator]
    log = logging.getLogger("tests.lifecycle.flush_all")
    log.propagate = False
    for n, handler in enumerate(handlers):
        handler.handle(
            log.makeRecord(
                log.name, logging.INFO, __file__, 1, f"E{n}", (), None, extra={"user_id": f"u{n}"}
            )
        )
    assert _lifecycle.flush_all()
    assert sorted(m["event"] for m in collector.messages) == ["E0", "E1"]
    handlers[0].handle(
        log.makeRecord(
            log.name, logging.INFO, __file__, 1, "After", (), None, extra={"user_id": "u0"}
        )
    )
    assert handlers[0].flush(10)
    assert "After" in [m["event"] for m in collector.messages]
