"""Tests for ``_lifecycle``: the busy-thread guard, deadlines, the exit, fork and SIGTERM hooks.

The SIGTERM hook and multiprocessing's exit are also tested end to end, in
subprocesses: ``test_exit.py``, ``test_pools.py``, ``test_servers.py``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing.process
import multiprocessing.util
import signal
import sys
import threading
import time
import types
import weakref
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from segmentio_logging import _lifecycle
from segmentio_logging.testing import LocalCollector


class FakePipeline:
    """Records the calls the exit and fork hooks make on a registered pipeline."""

    def __init__(self, calls: List[str], name: str, shutdown_timeout: float = 5.0) -> None:
        self.calls = calls
        self.name = name
        self.shutdown_timeout = shutdown_timeout

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
@pytest.mark.parametrize(
    ("executable", "uwsgi", "expected"),
    [
        ("/usr/bin/python3.11", False, False),
        ("/srv/app/.venv/bin/python", False, False),
        ("/opt/pypy3/bin/pypy3", False, False),
        ("/usr/bin/python3", True, True),  # uWSGI's module: forks from C
        ("/usr/sbin/unitd", False, True),  # an interpreter embedded in another program
        ("", False, True),
    ],
)
def test_forks_may_skip_hooks_where_the_interpreter_is_embedded(
    monkeypatch: pytest.MonkeyPatch, executable: str, uwsgi: bool, expected: bool
) -> None:
    """Only a program that embeds the interpreter may fork without Python's fork hooks."""
    monkeypatch.setattr(sys, "executable", executable)
    if uwsgi:
        monkeypatch.setitem(sys.modules, "uwsgi", types.ModuleType("uwsgi"))
    else:
        monkeypatch.delitem(sys.modules, "uwsgi", raising=False)
    assert _lifecycle.forks_may_skip_hooks() is expected


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


# ---------------------------------------------------------------------- multiprocessing


@pytest.fixture
def no_exit_finalizer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No exit finalizer yet; whatever a test adds to multiprocessing's registry is removed."""
    monkeypatch.setattr(_lifecycle, "_exit_finalizer", None)
    finalizers = dict(multiprocessing.util._finalizer_registry)  # type: ignore[attr-defined]
    yield
    registry = multiprocessing.util._finalizer_registry  # type: ignore[attr-defined]
    for key in [key for key in registry if key not in finalizers]:
        del registry[key]


def exit_finalizers() -> List[Any]:
    registry = multiprocessing.util._finalizer_registry  # type: ignore[attr-defined]
    return [f for f in registry.values() if f._callback is _lifecycle.close_all]


@pytest.mark.usefixtures("no_live", "no_exit_finalizer")
def test_a_pipeline_of_a_multiprocessing_child_is_closed_by_one_exit_finalizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a process multiprocessing started, register adds one finalizer that closes all."""
    monkeypatch.setattr(multiprocessing.process, "_parent_process", object())
    calls: List[str] = []
    first, second = FakePipeline(calls, "a"), FakePipeline(calls, "b")
    _lifecycle.register(first)
    _lifecycle.register(second)
    [finalizer] = exit_finalizers()
    finalizer()  # what multiprocessing's exit function runs before os._exit
    assert sorted(calls) == ["begin a", "begin b", "wait a", "wait b"]


@pytest.mark.usefixtures("no_live", "no_exit_finalizer")
def test_a_pipeline_of_the_main_process_adds_no_exit_finalizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside a multiprocessing child, atexit closes the pipelines: no finalizer."""
    monkeypatch.setattr(multiprocessing.process, "_parent_process", None)
    _lifecycle.register(FakePipeline([], "a"))
    assert exit_finalizers() == []


@pytest.mark.usefixtures("no_exit_finalizer")
def test_the_exit_finalizer_is_added_again_once_the_bootstrap_cleared_it() -> None:
    """A child's bootstrap empties the registry it inherited: the callback adds it back."""
    _lifecycle._add_exit_finalizer(None)
    _lifecycle._add_exit_finalizer(None)
    [finalizer] = exit_finalizers()
    finalizer.cancel()  # as the bootstrap's clear() leaves it: no longer active
    _lifecycle._add_exit_finalizer(None)
    assert len(exit_finalizers()) == 1


def test_the_after_fork_callback_is_registered_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The callback that adds the finalizer in a child's bootstrap is registered once."""
    registry = multiprocessing.util._afterfork_registry  # type: ignore[attr-defined]
    before = set(registry)
    monkeypatch.setattr(_lifecycle, "_after_fork_callback_pid", None)
    try:
        _lifecycle._close_at_multiprocessing_exit()
        _lifecycle._close_at_multiprocessing_exit()
        added = [key for key in registry if key not in before]
        assert [key[2] for key in added] == [_lifecycle._add_exit_finalizer]
    finally:
        for key in [key for key in registry if key not in before]:
            del registry[key]


# ---------------------------------------------------------------------- SIGTERM


def application_handler(signum: int, frame: object) -> None:
    """Stands for a handler the application installed; never called here."""


@pytest.fixture
def sigterm_undecided(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIGTERM at its default and no decision taken; the test process's handler comes back."""
    saved = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(_lifecycle, "_sigterm_decided", False)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


@pytest.mark.usefixtures("sigterm_undecided")
def test_the_sigterm_hook_is_installed_over_the_default_disposition_once() -> None:
    """On the main thread with SIG_DFL the hook is installed; the next call does nothing."""
    assert _lifecycle.install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is _lifecycle.close_then_die_of_sigterm
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as if the application reset it
    assert not _lifecycle.install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.usefixtures("sigterm_undecided")
@pytest.mark.parametrize("disposition", [application_handler, signal.SIG_IGN])
def test_the_sigterm_hook_never_replaces_what_the_application_set(disposition: Any) -> None:
    """A handler of the application's, or SIG_IGN, stays."""
    signal.signal(signal.SIGTERM, disposition)
    assert not _lifecycle.install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is disposition


@pytest.mark.usefixtures("sigterm_undecided")
def test_off_the_main_thread_the_choice_waits_for_the_main_thread() -> None:
    """From another thread nothing is installed nor decided; the main thread then installs."""
    results: List[bool] = []
    thread = threading.Thread(target=lambda: results.append(_lifecycle.install_sigterm_handler()))
    thread.start()
    thread.join(10)
    assert results == [False]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert _lifecycle.install_sigterm_handler()


@pytest.mark.usefixtures("sigterm_undecided")
def test_a_multiprocessing_child_keeps_sigterm_for_terminate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a multiprocessing child nothing is installed, and an inherited hook is undone."""
    monkeypatch.setattr(multiprocessing.process, "_parent_process", object())
    assert not _lifecycle.install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signal.signal(signal.SIGTERM, _lifecycle.close_then_die_of_sigterm)  # as a fork inherits it
    _lifecycle._leave_sigterm_to_multiprocessing()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signal.signal(signal.SIGTERM, application_handler)
    _lifecycle._leave_sigterm_to_multiprocessing()
    assert signal.getsignal(signal.SIGTERM) is application_handler  # not ours: kept


@pytest.mark.usefixtures("sigterm_undecided", "no_live")
@pytest.mark.parametrize("handle_sigterm", [True, False])
def test_register_installs_the_hook_only_when_asked(handle_sigterm: bool) -> None:
    """register(handle_sigterm=False), the pipeline's default, leaves SIGTERM alone."""
    _lifecycle.register(FakePipeline([], "a"), handle_sigterm=handle_sigterm)
    installed = signal.getsignal(signal.SIGTERM) is _lifecycle.close_then_die_of_sigterm
    assert installed is handle_sigterm


class HangingPipeline(FakePipeline):
    """A pipeline whose close never ends until released."""

    def __init__(self, calls: List[str]) -> None:
        super().__init__(calls, "hangs", shutdown_timeout=0.0)
        self.release = threading.Event()

    def wait_closed(self) -> bool:
        self.release.wait(30)
        return super().wait_closed()


@pytest.mark.usefixtures("no_live")
def test_the_close_on_sigterm_gives_up_at_the_deadline_of_a_close_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close stuck (on a lock the interrupted thread holds, say) does not keep the signal."""
    monkeypatch.setattr(_lifecycle, "CLOSE_GRACE", 0.01)
    calls: List[str] = []
    pipeline = HangingPipeline(calls)
    _lifecycle.register(pipeline)
    try:
        _lifecycle._close_all_within_the_deadlines()  # returns: the process may die now
        assert calls == ["begin hangs"]
    finally:
        pipeline.release.set()


def blocked_signals(thread: threading.Thread) -> int:
    """The mask of signals ``thread`` blocks, read from /proc."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    return int(line.split()[1], 16)


def bit(signum: int) -> int:
    return 1 << (signum - 1)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread masks in /proc")
def test_background_threads_leave_asynchronous_signals_to_other_threads() -> None:
    """A background thread blocks SIGTERM and SIGINT (a main thread asleep then gets them),
    but never the signals a fault raises in the thread itself."""
    ready, done = threading.Event(), threading.Event()

    def background() -> None:
        _lifecycle.leave_signals_to_other_threads()
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=background)
    thread.start()
    try:
        assert ready.wait(10)
        mask = blocked_signals(thread)
        assert mask & bit(signal.SIGTERM) and mask & bit(signal.SIGINT)
        assert not mask & (bit(signal.SIGSEGV) | bit(signal.SIGFPE) | bit(signal.SIGBUS))
        assert not blocked_signals(threading.main_thread()) & bit(signal.SIGTERM)
    finally:
        done.set()
        thread.join(10)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread masks in /proc")
def test_the_main_thread_never_blocks_signals_of_its_own() -> None:
    """Called on the main thread (as a green thread under gevent runs), it changes nothing."""
    before = blocked_signals(threading.main_thread())
    _lifecycle.leave_signals_to_other_threads()
    assert blocked_signals(threading.main_thread()) == before


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread masks in /proc")
def test_the_pipeline_worker_leaves_sigterm_to_the_main_thread() -> None:
    """The worker a handler starts blocks SIGTERM, so ``kill`` reaches the main thread."""
    from segmentio_logging import SegmentHandler

    handler = SegmentHandler("key", send=False, handle_sigterm=False)
    try:
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "Played", None, None)
        record.user_id = "u1"
        handler.handle(record)
        assert handler.flush(10)
        workers = [t for t in threading.enumerate() if t.name == "segmentio-logging-worker"]
        assert workers
        assert all(blocked_signals(worker) & bit(signal.SIGTERM) for worker in workers)
    finally:
        handler.close()


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
