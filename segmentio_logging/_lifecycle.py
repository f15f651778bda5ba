"""The process around the pipelines: the busy-thread guard, fork, exit and signal hooks.

Pipelines register here; at a fork the child resets them (the parent's threads
do not exist there), at exit (``atexit``, or a ``multiprocessing`` child's
finalizers) they all close at once, each within its own deadline. A process
that SIGTERM would kill outright closes them first, then dies of the signal.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Protocol, Set

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


# Signals the kernel raises in the thread that caused them: never blocked.
_SYNCHRONOUS_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGTRAP", "SIGSYS")
    if hasattr(signal, name)
)


def leave_signals_to_other_threads() -> None:
    """Block asynchronous signals in this background thread.

    The kernel hands a signal sent to the process (``kill``, Ctrl-C, ``docker
    stop``) to any thread that does not block it. Python runs its handler on the
    main thread, but only once that thread is back in the interpreter: when the
    C-level handler runs on one of these threads, a main thread asleep in
    ``time.sleep`` or ``select`` sleeps on, and SIGTERM or Ctrl-C seems ignored.
    Under gevent or eventlet the "threads" share the main thread: left alone.
    """
    if not hasattr(signal, "pthread_sigmask") or _green_threads():
        return
    if threading.current_thread() is threading.main_thread():
        return
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS_SIGNALS)
    except (OSError, ValueError):  # pragma: no cover - a platform without them
        pass


def _green_threads() -> bool:
    """True when ``threading`` is monkey-patched into greenlets (gevent, eventlet)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        return True
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    return eventlet_patcher is not None and bool(eventlet_patcher.is_monkey_patched("thread"))


def may_wait() -> bool:
    """Whether this thread may block on a worker: not a worker, not under the logging lock."""
    return not (threading.get_ident() in busy_threads or logging_lock_held())


def end_of(timeout: Optional[float]) -> float:
    """The ``time.monotonic()`` at which a wait of ``timeout`` seconds ends (None: never)."""
    return math.inf if timeout is None else time.monotonic() + timeout


class Closable(Protocol):
    """What the exit, signal and fork hooks need of a pipeline."""

    shutdown_timeout: float

    def flush(self, timeout: Optional[float] = None) -> bool: ...

    def begin_close(self, timeout: Optional[float] = None) -> None: ...

    def wait_closed(self) -> bool: ...

    def after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Closable] = weakref.WeakSet()


def register(pipeline: Closable, *, handle_sigterm: bool = False) -> None:
    """Close ``pipeline`` at exit and reset it in a forked child, while it lives.

    With ``handle_sigterm``, SIGTERM closes it too when nothing else handles the
    signal (see :func:`install_sigterm_handler`).
    """
    _live.add(pipeline)
    if _in_multiprocessing_child():
        _add_exit_finalizer(None)  # first imported in the child: no after-fork callback ran
    if handle_sigterm:
        install_sigterm_handler()


def live_pipelines() -> List[Closable]:
    """Every pipeline of this process still alive (the integrations flush them)."""
    return list(_live)


_child_resets: List[Callable[[], None]] = []
_reset_for_pid = os.getpid()


def forks_may_skip_hooks() -> bool:
    """Whether this process may be forked without Python's fork hooks running.

    A program that embeds the interpreter may fork from C: uWSGI does, and runs the
    hooks only with ``py-call-uwsgi-fork-hooks``. A Python executable forks through
    ``os.fork`` (multiprocessing and every server written in Python do), which runs
    them, so a pipeline need not compare pids on every call.
    """
    if "uwsgi" in sys.modules:
        return True
    name = os.path.basename(sys.executable or "").lower()
    return "python" not in name and "pypy" not in name


def on_fork_in_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in a forked child: from the fork hook, or from the first call
    that sees a new pid when a server forked without running the hooks."""
    _child_resets.append(reset)


def after_fork_in_child() -> None:
    """Everything a child must not inherit, once per process."""
    global _reset_for_pid, _closing_on, _sigterm_closing, _sigterm_after_close
    pid = os.getpid()
    if pid == _reset_for_pid:
        return
    _reset_for_pid = pid
    busy_threads.clear()  # the parent's threads do not exist here
    _closing_on = None  # nor a close they ran, nor a SIGTERM the parent was handling
    _sigterm_closing = _sigterm_after_close = False
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


# The thread running close_all, while it runs (the SIGTERM handler must not close
# again on top of it), and whether a SIGTERM came meanwhile, for close_all to raise.
_closing_on: Optional[int] = None
_sigterm_after_close = False


def close_all() -> None:
    """At exit: close every live pipeline at once, each within its own shutdown_timeout."""
    global _closing_on
    if _closing_on is not None:
        _closing_all()  # a nested call (a hook that exits, say): nothing to track
        return
    _closing_on = threading.get_ident()
    try:
        _closing_all()
    finally:
        _closing_on = None
    if _sigterm_after_close and threading.current_thread() is threading.main_thread():
        _die_of_sigterm()  # a SIGTERM came while this close ran: what it would have done


def _closing_all() -> None:
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


# ---------------------------------------------------------------------- multiprocessing
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
_after_fork_callback_pid: Optional[int] = None
_exit_finalizer: Any = None  # the multiprocessing.util.Finalize that runs close_all


def _close_at_multiprocessing_exit() -> None:
    """A ``multiprocessing`` child ends with ``os._exit``: no atexit, only its finalizers.

    Its bootstrap clears the finalizers it inherited and then runs the after-fork
    callbacks; the callback registered here adds the finalizer that closes every
    pipeline, so a worker process delivers what it logged without calling flush.
    Registered at import too: a ``spawn`` or ``forkserver`` child imports its main
    module (and so this package) before its bootstrap runs.
    """
    global _after_fork_callback_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None or _after_fork_callback_pid == os.getpid():
        return
    try:
        util.register_after_fork(_token, _add_exit_finalizer)
        _after_fork_callback_pid = os.getpid()
    except Exception:  # pragma: no cover - a changed private API must not break the child
        pass


def _in_multiprocessing_child() -> bool:
    """True in a process that ``multiprocessing`` started, once its bootstrap began.

    Up to Python 3.12 such a process ends with ``os._exit`` after its finalizers
    (and a ``forkserver`` child never had this package imported before it forked:
    it imports it in a pool initializer or a task).
    """
    process = sys.modules.get("multiprocessing.process")
    parent_process = getattr(process, "parent_process", None)
    return parent_process is not None and parent_process() is not None


def _add_exit_finalizer(_: object) -> None:
    """Close every pipeline from multiprocessing's exit finalizers, once per process."""
    global _exit_finalizer
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    _leave_sigterm_to_multiprocessing()
    finalizer = _exit_finalizer
    if finalizer is not None and finalizer.still_active():
        return  # already there (the bootstrap empties the registry a fork inherited)
    try:
        _exit_finalizer = util.Finalize(None, close_all, exitpriority=0)
    except Exception:  # pragma: no cover - a changed private API must not break the child
        pass


# ---------------------------------------------------------------------- SIGTERM

# Set once this process decided, on its main thread, whether to handle SIGTERM.
_sigterm_decided = False
# Set while the handler closes the pipelines: a second SIGTERM kills at once.
_sigterm_closing = False


def install_sigterm_handler() -> bool:
    """Handle SIGTERM, if it has the default disposition: close, then die of the signal.

    Only on the main thread (the only one that may set handlers), once per process,
    and never over a handler the application (or a server) installed, or SIG_IGN.
    True when the handler was installed by this call.
    """
    global _sigterm_decided
    if _sigterm_decided or sys.platform == "win32":
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # the next pipeline started on the main thread decides
    _sigterm_decided = True
    if _in_multiprocessing_child():
        return False  # SIGTERM is terminate() there: see _leave_sigterm_to_multiprocessing
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, close_then_die_of_sigterm)
    except (ValueError, OSError):  # pragma: no cover - an interpreter without signals
        return False
    return True


def close_then_die_of_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler: close every pipeline within its shutdown_timeout (a spool
    keeps what is left), then raise SIGTERM again with the default disposition, so
    the process ends as SIGTERM would have ended it (status -15, no atexit).

    When it interrupts the exit's own close (atexit, a multiprocessing child's
    finalizers), that close goes on, and raises SIGTERM when it is done: a second
    close on top of it could wait for locks the interrupted one holds. A second
    SIGTERM during either close kills at once.
    """
    global _sigterm_closing, _sigterm_after_close
    if _sigterm_closing or _sigterm_after_close:
        _die_of_sigterm()
    if _closing_on == threading.get_ident():
        _sigterm_after_close = True
        return
    _sigterm_closing = True
    _close_all_within_the_deadlines()
    _die_of_sigterm()


def _leave_sigterm_to_multiprocessing() -> None:
    """In a multiprocessing child, SIGTERM is what ``terminate()`` sends to kill it now
    (a ``with Pool()`` block ends with it): a fork child inherits the parent's hook,
    which goes back to the default there. A Python handler would also wait for the
    main thread, which may sit forever on a lock the pool's parent holds. The child
    delivers at its normal end instead, from the exit finalizer.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is close_then_die_of_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):  # pragma: no cover - an interpreter without signals
        pass


def _die_of_sigterm() -> None:
    """End the process as SIGTERM with the default disposition does."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)


def _close_all_off_the_main_thread() -> None:
    leave_signals_to_other_threads()  # a second SIGTERM reaches the waiting main thread
    close_all()


def _close_all_within_the_deadlines() -> None:
    """:func:`close_all` on a thread of its own, waited for until the deadlines pass.

    The handler interrupts the main thread anywhere, perhaps holding a lock that a
    close needs: on another thread such a close only stalls until the wait ends,
    while on this one it would never end.
    """
    limit = max((pipeline.shutdown_timeout for pipeline in list(_live)), default=0.0)
    closer = threading.Thread(
        target=_close_all_off_the_main_thread, name="segmentio-logging-sigterm", daemon=True
    )
    try:
        closer.start()
    except RuntimeError:  # interpreter shutdown: no new threads
        close_all()
        return
    closer.join(limit + 2 * CLOSE_GRACE)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
atexit.register(close_all)
_close_at_multiprocessing_exit()
