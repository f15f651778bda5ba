"""How a pipeline starts its background thread, and whether one can run at all.

Two environments change what ``threading.Thread`` means:

- **gevent**: after ``gevent.monkey.patch_all()`` a ``Thread`` is a greenlet and
  ``Event``, ``Lock`` and ``Condition`` are gevent's. A pipeline made *before*
  the patching (logging configured first; a server that loads the app, forks,
  then patches, as gunicorn's gevent worker with ``preload_app``) holds the
  operating system's primitives: a greenlet waiting on one of them blocks every
  greenlet of the process, and nobody can set it. Such a pipeline gets a real
  operating-system thread, as it would have had without gevent; a pipeline made
  after the patching gets a greenlet, consistent with its primitives.
- **uWSGI** before 2.0.27, without ``--enable-threads``, does not let the threads
  an application starts run between requests: :func:`threads_run` says so (once,
  on stderr, with the fix) and the pipeline delivers from the threads that log
  instead.
"""

from __future__ import annotations

import importlib
import socket
import sys
import threading
from typing import Any, Callable, Optional, Protocol

from . import _report


class WorkerThread(Protocol):
    """What a pipeline needs of its worker thread."""

    name: str

    def start(self) -> None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: Optional[float] = None) -> None: ...


def _gevent_original(module: str, name: str) -> Any:
    """``threading``'s (or ``_thread``'s) ``name`` before gevent patched it; None if it did not."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None:
        return None
    try:
        if not gevent_monkey.is_module_patched("threading"):
            return None
        return gevent_monkey.get_original(module, name)
    except Exception:  # pragma: no cover - a changed gevent: threads as threading makes them
        return None


def _import_what_gevent_imports_late() -> None:
    """Import gevent's thread pool now, while imports still work.

    gevent's hub for a native thread resolves host names on its thread pool, a
    module (with ``concurrent.futures``) it imports on first use. When a batch's
    first request comes at interpreter exit, Python 3.9 refuses that import
    ("can't register atexit after shutdown") and the batch fails.
    """
    try:
        importlib.import_module("gevent.threadpool")
    except Exception:  # pragma: no cover - a gevent without it: nothing to prepare
        pass


# How long the first event waits, at most, for a native worker thread to be ready.
READY_TIMEOUT = 5.0


def _start_gevents_resolver_here() -> None:
    """Resolve one address on this native thread now, while threads may start.

    Under gevent, ``getaddrinfo`` on this thread runs on its hub's thread pool,
    whose worker thread starts on first use. When a batch's first request comes
    at interpreter exit, Python 3.12 refuses to start it ("can't create new
    thread at interpreter shutdown") and the batch fails. Started here, the
    pool's thread is there for that request.
    """
    try:
        socket.getaddrinfo("127.0.0.1", None)
    except Exception:  # pragma: no cover - nothing to prepare, or nothing that helps
        pass


class NativeThread:
    """A daemon operating-system thread, started with the ``_thread`` gevent replaced.

    It is not a ``threading.Thread`` (gevent's ``threading`` would make that a
    greenlet): ``is_alive`` and ``join`` wait on a native lock released when
    ``target`` returns.
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self._target = target
        self._start_new_thread = _gevent_original("_thread", "start_new_thread")
        self._running = _gevent_original("_thread", "allocate_lock")()
        self._started = False

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else ("stopped" if self._started else "initial")
        return f"<{type(self).__name__} {self.name} {state}>"

    def start(self) -> None:
        """Start ``target`` on a new operating-system thread (RuntimeError at shutdown).

        Returns once the thread runs and has its resolver, as ``Thread.start``
        returns once its thread runs (see :func:`_start_gevents_resolver_here`).
        """
        _import_what_gevent_imports_late()
        ready = _gevent_original("_thread", "allocate_lock")()
        ready.acquire()
        self._running.acquire()
        try:
            self._start_new_thread(self._run, (ready,))
        except BaseException:
            self._running.release()
            raise RuntimeError("cannot start a thread") from None
        self._started = True
        ready.acquire(True, READY_TIMEOUT)

    def _run(self, ready: Any) -> None:
        try:
            _start_gevents_resolver_here()
        finally:
            ready.release()
        try:
            self._target()
        finally:
            self._running.release()

    def is_alive(self) -> bool:
        return self._started and self._running.locked()

    def join(self, timeout: Optional[float] = None) -> None:
        if not self._started:
            return
        if self._running.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self._running.release()


def worker_thread(target: Callable[[], None], name: str, *, made_with: object) -> WorkerThread:
    """A daemon thread for ``target``, not started yet.

    ``made_with`` is one of the pipeline's primitives (its wake-up ``Event``):
    when gevent patched ``threading`` after it was made, the thread is a
    :class:`NativeThread`, so that the worker's waits block only itself.
    """
    original_event = _gevent_original("threading", "Event")
    if original_event is not None and isinstance(made_with, original_event):
        return NativeThread(target, name)
    return threading.Thread(target=target, name=name, daemon=True)


_uwsgi_warned = False


# uWSGI enables Python threads by default from 2.0.27 on ("enable-threads" became a
# stub); before, only --enable-threads or --threads above 1 did.
UWSGI_THREADS_BY_DEFAULT = (2, 0, 27)


def threads_run() -> bool:
    """False inside a uWSGI that runs without Python threads: the threads an
    application starts there run only while a request releases the GIL, never between
    requests (uWSGI before 2.0.27 without ``--enable-threads`` or ``--threads``).

    Warns once per process, with the fix.
    """
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return True
    options = getattr(uwsgi, "opt", None) or {}
    if _uwsgi_option(options, "enable-threads") or _uwsgi_option(options, "threads"):
        return True
    version = tuple(getattr(uwsgi, "version_info", ())[:3])
    if version >= UWSGI_THREADS_BY_DEFAULT:
        return True
    global _uwsgi_warned
    if not _uwsgi_warned:
        _uwsgi_warned = True
        _report.warn(
            "uwsgi-threads",
            "uWSGI runs without --enable-threads: the background thread that sends "
            "events would not run between requests. Events are sent from the threads "
            "that log them, in batches (when batch_size are queued or flush_interval has "
            "passed), and at exit. Start uWSGI with --enable-threads (enable-threads = true) "
            "to send them in the background.",
        )
    return False


def _uwsgi_option(options: Any, name: str) -> bool:
    """Whether uWSGI option ``name`` is on (``uwsgi.opt`` holds bytes, or lists of them)."""
    value = options.get(name)
    if isinstance(value, list):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None or value is False:
        return False
    if value is True:
        return True
    text = str(value).strip().lower()
    if name == "threads":
        return text.isdigit() and int(text) > 1
    return text not in ("", "0", "false", "no", "off")
