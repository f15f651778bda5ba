"""The process around the pipelines: the busy-thread guard, fork and exit hooks.

Pipelines register here; at a fork the child resets them (the parent's threads
do not exist there), at exit (``atexit``, or a ``multiprocessing`` child's
finalizers) they all close at once, each within its own deadline.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Protocol, Set

from . import _report

# How long past its close deadline anything waits for a worker: time enough to
# report what failed. A request begun before close keeps its own timeout; the
# daemon thread may outlive the wait, never the process.
CLOSE_GRACE = 1.0

# The threads whose log records the handler ignores: workers (urllib3 logs each
# request; a callback may log) and threads running user code from inside the
# handler (a filter, an object's __str__), which would otherwise recurse. A set
# of idents, so that the handler's common path costs one lookup.
busy_threads: Set[int] = set()


@contextmanager
def marked_busy() -> Iterator[None]:
    """Mark this thread busy for the block (nested blocks are harmless)."""
    ident = threading.get_ident()
    if ident in busy_threads:
        yield
        return
    busy_threads.add(ident)
    try:
        yield
    finally:
        busy_threads.discard(ident)


def logging_lock_held() -> bool:
    """True when this thread holds the logging module's lock (dictConfig closing handlers)."""
    lock = getattr(logging, "_lock", None)
    is_owned = getattr(lock, "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:  # pragma: no cover
        return False


def may_wait() -> bool:
    """Whether this thread may block on a worker: not a worker, not under the logging lock."""
    return not (threading.get_ident() in busy_threads or logging_lock_held())


def end_of(timeout: Optional[float]) -> float:
    """The ``time.monotonic()`` at which a wait of ``timeout`` seconds ends (None: never)."""
    return math.inf if timeout is None else time.monotonic() + timeout


class Closable(Protocol):
    """What the exit and fork hooks need of a pipeline."""

    shutdown_timeout: float

    def flush(self, timeout: Optional[float] = None) -> bool: ...

    def begin_close(self, timeout: Optional[float] = None) -> None: ...

    def wait_closed(self) -> bool: ...

    def after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Closable] = weakref.WeakSet()


def register(pipeline: Closable) -> None:
    """Close ``pipeline`` at exit and reset it in a forked child, while it lives."""
    _live.add(pipeline)


_child_resets: List[Callable[[], None]] = []
_reset_for_pid = os.getpid()


def on_fork_in_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in a forked child: from the fork hook, or from the first call
    that sees a new pid when a server forked without running the hooks."""
    _child_resets.append(reset)


def after_fork_in_child() -> None:
    """Everything a child must not inherit, once per process."""
    global _reset_for_pid
    pid = os.getpid()
    if pid == _reset_for_pid:
        return
    _reset_for_pid = pid
    busy_threads.clear()  # the parent's threads do not exist here
    _report.after_fork_in_child()
    for pipeline in list(_live):  # before the resets below restart any thread
        pipeline.after_fork_in_child()
    for reset in list(_child_resets):  # message ids among them (or parent and child share ids)
        try:
            reset()
        except Exception:  # pragma: no cover - a child must not die of its logging
            pass
    _close_at_multiprocessing_exit()


_before_close_all: List[Callable[[], None]] = []


def before_close_all(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit before the pipelines close (listeners hand over their records)."""
    _before_close_all.append(hook)


def close_all() -> None:
    """At exit: close every live pipeline at once, each within its own shutdown_timeout."""
    for hook in _before_close_all:
        try:
            hook()
        except Exception:  # pragma: no cover - exit must go on
            pass
    pipelines = list(_live)
    for pipeline in pipelines:
        pipeline.begin_close()
    for pipeline in pipelines:
        pipeline.wait_closed()


def flush_all() -> bool:
    """Deliver what every live pipeline holds, within the longest ``shutdown_timeout``,
    leaving them open (a server's own shutdown, before ``atexit`` closes them).

    Listeners keep running: their records reach the pipelines at exit.
    """
    pipelines = list(_live)
    end = end_of(max((p.shutdown_timeout for p in pipelines), default=0.0))
    done = True
    for pipeline in pipelines:
        done = pipeline.flush(max(end - time.monotonic(), 0.0)) and done
    return done


class _Token:
    """A weak-referenceable key for ``multiprocessing.util.register_after_fork``."""


_token = _Token()


def _close_at_multiprocessing_exit() -> None:
    """A ``multiprocessing`` child ends with ``os._exit``: no atexit, only its finalizers.

    Its bootstrap clears the finalizers it inherited and then runs the after-fork
    callbacks; the callback registered here adds the finalizer that closes every
    pipeline, so a worker process delivers what it logged without calling flush.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    try:
        util.register_after_fork(_token, _add_exit_finalizer)
    except Exception:  # pragma: no cover - a changed private API must not break the child
        pass


def _add_exit_finalizer(_: object) -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, close_all, exitpriority=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
atexit.register(close_all)
