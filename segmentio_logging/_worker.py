"""The pipeline: a bounded queue, one batching thread, flush, shutdown and fork.

Knows nothing of the Segment spec beyond sizes: items are turned into messages
by a ``prepare`` function, encoded, cut into batches by count and bytes, and
handed to the transport. The caller's side (:meth:`Pipeline.put`) takes no
lock: a ``deque`` append and a length check.

This module holds events in memory only. With ``spool_path``,
``make_pipeline`` builds the disk-spool variant instead,
:class:`~segmentio_logging._spooled.SpooledPipeline` (a subclass that overrides
the worker's steps and the waits); the steps meant for it are the
``_begin_work``, ``_work``, ``_end_work``, ``_release`` and ``_nothing_left``
methods below, and it also extends the state, the counters, the waits
(``flush``, ``persist``), closing and the fork reset.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
)

from . import _report
from ._errors import ClosedError, DeliveryError, InvalidMessage, QueueFull, SegmentError
from ._message import MAX_BATCH_BYTES, envelope_size, reset_message_ids
from ._transport import Deadline, Outcome, Response, Transport

# An item becomes its message and the message's encoded bytes. The message may be None
# when only the bytes were made; the callbacks then get it decoded from the bytes.
Prepared = Tuple[Optional[Dict[str, Any]], bytes]
Prepare = Callable[[Any], Prepared]
Callback = Callable[[Any, Any], Any]

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


_getpid = os.getpid
_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_serials = itertools.count(1)

# How long past its close deadline anything waits for a worker: time enough to
# report what failed. A request begun before close keeps its own timeout; the
# daemon thread may outlive the wait, never the process.
CLOSE_GRACE = 1.0


def _prepared(item: Any) -> Prepared:
    return item  # type: ignore[no-any-return]


def messages_of(messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> List[Any]:
    """The messages for a callback: those only encoded are decoded from their bytes."""
    return [
        message if message is not None else json.loads(data)
        for message, data in zip(messages, parts)
    ]


def _same(item: Any) -> Any:
    return item


def _logging_lock_held() -> bool:
    """True when this thread holds the logging module's lock (dictConfig closing handlers)."""
    lock = getattr(logging, "_lock", None)
    is_owned = getattr(lock, "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:  # pragma: no cover
        return False


def end_of(timeout: Optional[float]) -> float:
    """The ``time.monotonic()`` at which a wait of ``timeout`` seconds ends (None: never)."""
    return math.inf if timeout is None else time.monotonic() + timeout


class Pipeline:
    """Queue, worker thread and counters for one handler or client."""

    def __init__(
        self,
        transport: Transport,
        *,
        prepare: Prepare = _prepared,
        describe: Callable[[Any], Any] = _same,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        shutdown_timeout: float = 5.0,
        on_success: Optional[Callback] = None,
        on_failure: Optional[Callback] = None,
        sync_mode: bool = False,
    ) -> None:
        self.transport = transport
        self.prepare = prepare
        self.describe = describe
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.shutdown_timeout = shutdown_timeout
        self.on_success = on_success
        self.on_failure = on_failure
        self.sync_mode = sync_mode
        self._max_bytes = MAX_BATCH_BYTES - envelope_size(transport.write_key)
        # Keys the rate-limited warnings; an id() can be reused by the next pipeline.
        self._serial = next(_serials)
        self._closed = False
        self._fresh_state()
        _live.add(self)

    def _fresh_state(self) -> None:
        self._pid = os.getpid()
        self._queue: Deque[Any] = deque()
        self._lock = threading.Lock()
        self._settled_cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        # Whether a caller already woke the worker for a full batch: one plain read per put.
        self._woken = False
        self._deadline = Deadline()
        self._thread: Optional[threading.Thread] = None
        self._inline = self.sync_mode
        # Counters; written under self._lock.
        self._taken = 0
        self._delivered = 0
        self._failed = 0
        self._dropped_worker = 0
        self._dropped_caller = 0
        self._unreported_full = 0
        self._batches = 0
        self._retried_requests = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {state} queued={len(self._queue)} "
            f"transport={self.transport!r}>"
        )

    # ------------------------------------------------------------------ caller side

    def put(self, item: Any) -> bool:
        """Queue one item without blocking; False when it was dropped (full or closed)."""
        if self._pid != _getpid():
            self._check_fork()
        queue = self._queue
        size = len(queue)
        if self._closed or self._inline or size >= self.max_queue_size:
            return self._put_otherwise(item, size)
        queue.append(item)
        if self._thread is None:
            self._start()
        elif size + 1 >= self.batch_size and not self._woken:
            self._woken = True
            self._wake.set()
        if self._closed:  # closed while we appended: settle it here
            self._sweep_after_close()
        return True

    def _put_otherwise(self, item: Any, size: int) -> bool:
        """The rare cases of :meth:`put`: closed, delivering inline, or full."""
        if self._closed:
            self._drop_closed(item)
            return False
        if size >= self.max_queue_size:
            self._drop_full()
            return False
        self._put_inline(item)
        return True

    def _put_inline(self, item: Any) -> None:
        with self._lock:
            self._taken += 1
        self._process_here([item])

    def _drop_full(self) -> None:
        with self._lock:
            self._dropped_caller += 1
            self._unreported_full += 1
        _report.warn(
            f"full-{self._serial}",
            f"queue full (max_queue_size={self.max_queue_size}): dropping messages; "
            "the receiver may be down or too slow",
        )
        if self._thread is not None:
            self._wake.set()

    def reject(self, item: Any, error: SegmentError) -> None:
        """Count and report an item refused before it was queued (too large, invalid)."""
        with self._lock:
            self._dropped_caller += 1
        self._refused([item], error)

    def _drop_closed(self, item: Any) -> None:
        with self._lock:
            self._dropped_caller += 1
        error = ClosedError("1 message given after close(); not sent", count=1)
        _report.warn(f"closed-{self._serial}", error.reason)
        self._refused([item], error)

    def _start(self) -> None:
        with self._lock:
            current = self._thread
            if self._closed or (current is not None and current.is_alive()):
                return
            thread = threading.Thread(
                target=self._run, name="segmentio-logging-worker", daemon=True
            )
            try:
                thread.start()
                self._thread = thread
                return
            except RuntimeError:
                # Interpreter shutdown: no new threads. Deliver on the caller's thread.
                self._inline = True
                pending = list(self._queue)
                self._queue.clear()
                self._taken += len(pending)
        self._process_here(pending)

    def _process_here(self, items: List[Any]) -> None:
        """Deliver on the calling thread, marked like the worker so its logging is ignored."""
        with marked_busy():
            self._process(items)

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        with marked_busy():
            self._loop()

    def _loop(self) -> None:
        self._begin_work()
        while True:
            try:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                self._woken = False  # after the clear: a wake in between is kept, not lost
                self._report_full()
                self._work()
                if self._closed and not self._queue:
                    self._report_full()
                    self._end_work()
                    return
            except Exception as exc:  # pragma: no cover - a dead worker would lose everything
                _report.warn(f"worker-{self._serial}", f"worker error {type(exc).__name__}: {exc}")

    def _begin_work(self) -> None:
        """On the worker, once, before its first wait (the spool mode opens its spool)."""

    def _work(self) -> None:
        """On the worker, each time it wakes: deliver what is queued."""
        self._drain()

    def _end_work(self) -> None:
        """On the worker, once, when closed and the queue is empty: close idle sockets
        (also when close() handed the end to the worker, as under dictConfig)."""
        self.transport.close()

    def _take(self, limit: Optional[int] = None) -> List[Any]:
        queue = self._queue
        with self._lock:
            n = min(len(queue), self.batch_size if limit is None else limit)
            items = [queue.popleft() for _ in range(n)]
            self._taken += n
        return items

    def _drain(self) -> None:
        while True:
            items = self._take()
            if not items:
                return
            self._process(items)
            self._report_full()  # between batches: a slow receiver must not delay the report

    def _prepare_one(self, item: Any) -> Optional[Prepared]:
        """The item's message and bytes; None (reported) when it cannot become one."""
        try:
            return self.prepare(item)
        except Exception as exc:
            self._refuse_prepared(item, exc)
        return None

    def _refuse_prepared(self, item: Any, exc: Exception) -> None:
        if isinstance(exc, SegmentError):
            self._refused([item], exc)
        else:  # a bug or a hostile object: report, never stop
            reason = f"could not build the message: {type(exc).__name__}: {exc}"
            self._refused([item], InvalidMessage(reason))

    def _process(self, items: List[Any]) -> None:
        """Prepare, encode, cut by bytes and deliver ``items``; settle each one."""
        messages: List[Optional[Dict[str, Any]]] = []
        parts: List[bytes] = []
        size = 0
        dropped = 0
        prepare = self.prepare
        for item in items:
            try:
                message, data = prepare(item)
            except Exception as exc:
                self._refuse_prepared(item, exc)
                dropped += 1
                continue
            if parts and size + len(data) + 1 > self._max_bytes:
                self._send(messages, parts)
                messages, parts, size = [], [], 0
            messages.append(message)
            parts.append(data)
            size += len(data) + 1
        if parts:
            self._send(messages, parts)
        # Counted last: flush() compares counts, and counting these early would let
        # it return before the earlier items of this batch were sent.
        if dropped:
            self._settle(dropped=dropped)

    def _deliver(self, parts: List[bytes]) -> List[Outcome]:
        try:
            return self.transport.deliver(parts, self._deadline)
        except Exception as exc:  # a transport bug must settle the batch, not kill the worker
            count = len(parts)
            error = DeliveryError(
                f"{count} message{'s' if count != 1 else ''} not delivered: "
                f"the transport raised {type(exc).__name__}: {exc}",
                count=count,
                attempts=0,
            )
            return [(0, count, error)]

    def _send(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        outcomes = self._deliver(parts)
        # Callbacks first, counts second: once flush() returns, the callbacks have run.
        for start, end, outcome in outcomes:
            retries = max(outcome.attempts - 1, 0)
            if isinstance(outcome, Response):
                if self.on_success is not None:
                    data = messages_of(messages[start:end], parts[start:end])
                    self._call(self.on_success, data, outcome)
                self._settle(delivered=end - start, retries=retries)
            else:
                _report.warn(f"failed-{self._serial}", outcome.reason)
                if self.on_failure is not None:
                    data = messages_of(messages[start:end], parts[start:end])
                    self._call(self.on_failure, data, outcome)
                self._settle(failed=end - start, retries=retries)

    def _settle(
        self,
        *,
        delivered: int = 0,
        failed: int = 0,
        dropped: int = 0,
        retries: int = 0,
        batch: bool = False,
    ) -> None:
        with self._lock:
            self._delivered += delivered
            self._failed += failed
            self._dropped_worker += dropped
            self._retried_requests += retries
            if delivered or failed or batch:
                self._batches += 1
            self._settled_cond.notify_all()

    def _report_full(self) -> None:
        with self._lock:
            count, self._unreported_full = self._unreported_full, 0
        if count:
            error = QueueFull(
                f"{count} message{'s' if count != 1 else ''} dropped: the queue already held "
                f"max_queue_size={self.max_queue_size} messages",
                count=count,
            )
            self._call(self.on_failure, [], error)

    def _refused(self, items: List[Any], error: SegmentError) -> None:
        """Report items that will not be sent, as ``describe`` shows them to callbacks."""
        if self.on_failure is None:
            return
        try:
            data = [self.describe(item) for item in items]
        except Exception:  # describing must not lose the report
            data = list(items)
        self._call(self.on_failure, data, error)

    @staticmethod
    def _call(callback: Optional[Callback], data: Any, arg: Any) -> None:
        if callback is None:
            return
        try:
            with marked_busy():  # what the callback logs is not fed back
                callback(data, arg)
        except Exception as exc:
            name = getattr(callback, "__qualname__", repr(callback))
            _report.warn(f"callback-{name}", f"callback {name} raised {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ flush, close

    def _settled(self) -> int:
        return self._delivered + self._failed + self._dropped_worker

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed.

        True when it all settled, False at the timeout. On the worker thread or
        while the logging lock is held (a handler closed by ``dictConfig``) it
        only wakes the worker: waiting there could deadlock. Once closed it never
        waits past the close deadline (``logging.shutdown`` flushes without a timeout).
        """
        self._check_fork()
        return self._flush_memory(end_of(timeout))

    def _flush_memory(self, end: float) -> bool:
        with self._lock:
            goal = self._taken + len(self._queue)
            if self._settled() >= goal:
                return True
        if self._thread is None and not self._closed and not self._inline:
            self._start()
        self._wake.set()
        return self._wait(lambda: self._settled() >= goal, end)

    def _wait(
        self,
        done: Callable[[], bool],
        end: float,
        *,
        probe: Optional[Callable[[], object]] = None,
        gave_up: Optional[Callable[[], bool]] = None,
    ) -> bool:
        """Wait until ``done()`` holds (True), keeping a worker alive to get there.

        ``done`` and ``gave_up`` run under the lock, ``probe`` just before without
        it (for what needs another lock). False at ``end``, once closed at the close
        deadline plus :data:`CLOSE_GRACE`, when ``gave_up()``, and at once on the
        worker or under the logging lock, where waiting could deadlock. With no
        worker left it delivers here (inline mode) or starts one again.
        """
        waiting = not (threading.get_ident() in busy_threads or _logging_lock_held())
        while True:
            if probe is not None:
                probe()
            with self._lock:
                if done():
                    return True
                if not waiting or (gave_up is not None and gave_up()):
                    return False
                limit = min(end, self._deadline.at + CLOSE_GRACE) if self._closed else end
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    return False
                thread = self._thread
                alive = thread is not None and thread.is_alive()
                inline_work = self._inline and bool(self._queue)
                if not inline_work:
                    if alive or self._inline:
                        # Bounded: a worker that dies or a close is noticed without a notify.
                        self._settled_cond.wait(min(remaining, 0.5))
                        continue
                    if self._closed:
                        return False  # no worker left; close() settles the rest
            if inline_work:
                self._drain_here()
            else:
                self._start()

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is safe from a killed process.

        In memory nothing is safe before it was delivered, so this is :meth:`flush`;
        the spool mode overrides it to mean "on disk". False at the timeout.
        """
        return self.flush(timeout)

    def _drain_here(self) -> None:
        while True:
            items = self._take()
            if not items:
                return
            self._process_here(items)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Deliver what can be delivered within ``timeout`` (default ``shutdown_timeout``).

        Safe to call twice. True when nothing was left undelivered.
        """
        self.begin_close(timeout)
        return self.wait_closed()

    def begin_close(self, timeout: Optional[float] = None) -> None:
        """Stop taking items and set the close deadline; :meth:`wait_closed` waits for it."""
        self._check_fork()
        limit = self.shutdown_timeout if timeout is None else timeout
        with self._lock:
            self._closed = True
        self._deadline.set(time.monotonic() + limit)
        self._wake.set()

    def wait_closed(self) -> bool:
        """Wait for the worker until the close deadline, plus a grace; True when all was sent."""
        self._check_fork()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            if _logging_lock_held():
                return False  # the worker finishes in the background; exit waits for it
            # A little past the deadline, so the worker can report what failed. The end is
            # absolute: a second close() (logging.shutdown after atexit) does not wait again.
            thread.join(max(self._deadline.at + CLOSE_GRACE - time.monotonic(), 0.0))
            if thread.is_alive():
                # Stuck in a request the receiver does not answer: what is still queued
                # will not be sent before exit. Say so now rather than never.
                self._sweep_queue("still queued at the close deadline: not sent")
                with self._lock:  # the swept ones are settled (dropped) by now
                    in_flight = self._taken - self._settled()
                if in_flight > 0:
                    _report.warn(
                        f"in-flight-{self._serial}",
                        f"{in_flight} message{'s' if in_flight != 1 else ''} in a request the "
                        "receiver had not answered at the close deadline: outcome unknown",
                    )
                return False
        elif thread is None and self._queue:
            self._drain_here()  # never started (or cannot start): deliver on this thread
        self._sweep_after_close()
        self._release()
        self.transport.close()
        with self._lock:
            return self._nothing_left()

    def _release(self) -> None:
        """In :meth:`wait_closed` once the worker is done: let go of what it held."""

    def _nothing_left(self) -> bool:
        """Under the lock, once closed: True when nothing failed or is left undelivered."""
        return self._failed == 0 and self._dropped_worker == 0 and not self._queue

    def _sweep_after_close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._sweep_queue("still queued at close: not sent")

    def _sweep_queue(self, why: str) -> None:
        """Settle what is still queued as dropped, reported with ``why``."""
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._taken += len(left)
        if left:
            plural = "s" if len(left) != 1 else ""
            error = ClosedError(f"{len(left)} message{plural} {why}", count=len(left))
            _report.warn(f"swept-{self._serial}", error.reason)
            self._refused(left, error)
            self._settle(dropped=len(left))

    # ------------------------------------------------------------------ fork, stats

    def _check_fork(self) -> None:
        """A fork that skipped the fork hooks (some servers fork from C): reset now."""
        if self._pid != os.getpid():
            _after_fork_in_child()
            self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        """The child starts empty: what the parent held is the parent's to deliver."""
        if self._pid == os.getpid():
            return
        self._fresh_state()
        self.transport.reset_after_fork()

    def stats(self) -> Dict[str, int]:
        """Counters; ``enqueued == delivered + failed + dropped + pending`` always holds."""
        self._check_fork()
        with self._lock:
            queued = len(self._queue)
            in_flight = self._taken - self._delivered - self._failed - self._dropped_worker
            return {
                "enqueued": self._taken + queued + self._dropped_caller,
                "delivered": self._delivered,
                "failed": self._failed,
                "dropped": self._dropped_worker + self._dropped_caller,
                "pending": queued + in_flight,
                "queued": queued,
                "batches": self._batches,
                "retries": self._retried_requests,
            }


_child_resets: List[Callable[[], None]] = []
_reset_for_pid = os.getpid()


def on_fork_in_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in a forked child: from the fork hook, or from the first call
    that sees a new pid when a server forked without running the hooks."""
    _child_resets.append(reset)


def _after_fork_in_child() -> None:
    """Everything a child must not inherit, once per process."""
    global _reset_for_pid
    pid = os.getpid()
    if pid == _reset_for_pid:
        return
    _reset_for_pid = pid
    busy_threads.clear()  # the parent's threads do not exist here
    reset_message_ids()  # or parent and child would send the same messageIds
    _report.after_fork_in_child()
    for pipeline in list(_live):  # before the resets below restart any thread
        pipeline._after_fork_in_child()
    for reset in list(_child_resets):
        try:
            reset()
        except Exception:  # pragma: no cover - a child must not die of its logging
            pass
    _close_at_multiprocessing_exit()


_before_close_all: List[Callable[[], None]] = []


def before_close_all(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit before the pipelines close (listeners hand over their records)."""
    _before_close_all.append(hook)


def _close_all() -> None:
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
        util.Finalize(None, _close_all, exitpriority=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
