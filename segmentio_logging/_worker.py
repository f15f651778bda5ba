"""The pipeline: a bounded queue, one batching thread, flush, shutdown and fork.

Knows nothing of the Segment spec beyond sizes: items are turned into messages
by a ``prepare`` function, encoded, cut into batches by count and bytes, and
handed to the transport. The caller's side (:meth:`Pipeline.put`) takes no
lock: a ``deque`` append and a length check.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _report
from ._errors import ClosedError, InvalidMessage, QueueFull, SegmentError
from ._message import MAX_BATCH_BYTES, envelope_size
from ._transport import Deadline, Response, Transport

# An item becomes its message and the message's encoded bytes.
Prepare = Callable[[Any], Tuple[Dict[str, Any], bytes]]
Callback = Callable[[Any, Any], Any]

# Marks the threads whose log records the handler must ignore: the worker
# itself (urllib3 logs each request) and any thread already inside ``emit``.
guard = threading.local()

_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()


def _prepared(item: Any) -> Tuple[Dict[str, Any], bytes]:
    return item  # type: ignore[no-any-return]


def _logging_lock_held() -> bool:
    """True when this thread holds the logging module's lock (dictConfig closing handlers)."""
    lock = getattr(logging, "_lock", None)
    is_owned = getattr(lock, "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:  # pragma: no cover
        return False


class Pipeline:
    """Queue, worker thread and counters for one handler or client."""

    def __init__(
        self,
        transport: Transport,
        *,
        prepare: Prepare = _prepared,
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
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.shutdown_timeout = shutdown_timeout
        self.on_success = on_success
        self.on_failure = on_failure
        self.sync_mode = sync_mode
        self._max_bytes = MAX_BATCH_BYTES - envelope_size(transport.write_key)
        self._closed = False
        self._fresh_state()
        _live.add(self)

    def _fresh_state(self) -> None:
        self._pid = os.getpid()
        self._queue: Deque[Any] = deque()
        self._lock = threading.Lock()
        self._settled_cond = threading.Condition(self._lock)
        self._wake = threading.Event()
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
        return f"<Pipeline {state} queued={len(self._queue)} transport={self.transport!r}>"

    # ------------------------------------------------------------------ caller side

    def put(self, item: Any) -> bool:
        """Queue one item without blocking; False when it was dropped (full or closed)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()
        queue = self._queue
        if self._closed:
            self._drop_closed([item])
            return False
        if len(queue) >= self.max_queue_size:
            self._drop_full()
            return False
        if self._inline:
            self._put_inline(item)
            return True
        queue.append(item)
        if self._thread is None:
            self._start()
        elif len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if self._closed:  # closed while we appended: settle it here
            self._sweep_after_close()
        return True

    def _put_inline(self, item: Any) -> None:
        with self._lock:
            self._taken += 1
        self._process([item])

    def _drop_full(self) -> None:
        with self._lock:
            self._dropped_caller += 1
            self._unreported_full += 1
        _report.warn(
            f"full-{id(self)}",
            f"queue full (max_queue_size={self.max_queue_size}): dropping messages; "
            "the receiver may be down or too slow",
        )
        if self._thread is not None:
            self._wake.set()

    def reject(self, item: Any, error: SegmentError) -> None:
        """Count and report an item refused before it was queued (too large, invalid)."""
        with self._lock:
            self._dropped_caller += 1
        self._call(self.on_failure, [item], error)

    def _drop_closed(self, items: List[Any]) -> None:
        with self._lock:
            self._dropped_caller += len(items)
        error = ClosedError(
            f"{len(items)} message{'s' if len(items) != 1 else ''} given after close(); not sent",
            count=len(items),
        )
        _report.warn(f"closed-{id(self)}", error.reason)
        self._call(self.on_failure, items, error)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
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
        self._process(pending)

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        guard.active = True
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._report_full()
            self._drain()
            if self._closed and not self._queue:
                self._report_full()
                return

    def _take(self) -> List[Any]:
        queue = self._queue
        with self._lock:
            n = min(len(queue), self.batch_size)
            items = [queue.popleft() for _ in range(n)]
            self._taken += n
        return items

    def _drain(self) -> None:
        while True:
            items = self._take()
            if not items:
                return
            self._process(items)

    def _process(self, items: List[Any]) -> None:
        """Prepare, encode, cut by bytes and deliver ``items``; settle each one."""
        messages: List[Dict[str, Any]] = []
        parts: List[bytes] = []
        size = 0
        dropped = 0
        for item in items:
            try:
                message, data = self.prepare(item)
            except SegmentError as error:
                dropped += 1
                self._call(self.on_failure, [item], error)
                continue
            except Exception as exc:  # a bug or a hostile object: report, never stop
                dropped += 1
                reason = f"could not build the message: {type(exc).__name__}: {exc}"
                self._call(self.on_failure, [item], InvalidMessage(reason))
                continue
            if parts and size + len(data) + 1 > self._max_bytes:
                self._send(messages, parts)
                messages, parts, size = [], [], 0
            messages.append(message)
            parts.append(data)
            size += len(data) + 1
        if dropped:
            self._settle(dropped=dropped)
        if parts:
            self._send(messages, parts)

    def _send(self, messages: List[Dict[str, Any]], parts: List[bytes]) -> None:
        outcomes = self.transport.deliver(parts, self._deadline)
        for start, end, outcome in outcomes:
            data = messages[start:end]
            if isinstance(outcome, Response):
                self._settle(delivered=end - start, retries=max(outcome.attempts - 1, 0))
                self._call(self.on_success, data, outcome)
            else:
                self._settle(failed=end - start, retries=max(outcome.attempts - 1, 0))
                _report.warn(f"failed-{id(self)}", outcome.reason)
                self._call(self.on_failure, data, outcome)

    def _settle(
        self, *, delivered: int = 0, failed: int = 0, dropped: int = 0, retries: int = 0
    ) -> None:
        with self._lock:
            self._delivered += delivered
            self._failed += failed
            self._dropped_worker += dropped
            self._retried_requests += retries
            if delivered or failed:
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

    @staticmethod
    def _call(callback: Optional[Callback], data: Any, arg: Any) -> None:
        if callback is None:
            return
        try:
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
        only wakes the worker: waiting there could deadlock.
        """
        if self._pid != os.getpid():
            self._after_fork_in_child()
        with self._lock:
            goal = self._taken + len(self._queue)
            if self._settled() >= goal:
                return True
        if self._thread is None and not self._closed:
            self._start()
        self._wake.set()
        if getattr(guard, "active", False) or _logging_lock_held():
            return False
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._settled() < goal:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    if self._closed:
                        return self._settled() >= goal
                self._settled_cond.wait(remaining if remaining is not None else 1.0)
            return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Deliver what can be delivered within ``timeout`` (default ``shutdown_timeout``).

        Safe to call twice. True when nothing was left undelivered.
        """
        self.begin_close(timeout)
        return self.wait_closed()

    def begin_close(self, timeout: Optional[float] = None) -> None:
        limit = self.shutdown_timeout if timeout is None else timeout
        with self._lock:
            self._closed = True
        self._deadline.set(time.monotonic() + limit)
        self._wake.set()

    def wait_closed(self) -> bool:
        thread = self._thread
        remaining = max(self._deadline.at - time.monotonic(), 0.0)
        if thread is not None and thread is not threading.current_thread():
            if _logging_lock_held():
                return False  # the worker finishes in the background; exit waits for it
            # A little past the deadline: the worker needs it to report what failed.
            thread.join(remaining + 1.0)
            if thread.is_alive():
                return False
        elif thread is None and self._queue:
            self._drain()  # never started (or cannot start): deliver on this thread
        self._sweep_after_close()
        self.transport.close()
        with self._lock:
            return self._failed == 0 and self._dropped_worker == 0 and not self._queue

    def _sweep_after_close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._taken += len(left)
            self._dropped_worker += len(left)
            self._settled_cond.notify_all()
        if left:
            plural = "s" if len(left) != 1 else ""
            error = ClosedError(
                f"{len(left)} message{plural} still queued at close: not sent",
                count=len(left),
            )
            self._call(self.on_failure, left, error)

    # ------------------------------------------------------------------ fork, stats

    def _after_fork_in_child(self) -> None:
        """The child starts empty: what the parent held is the parent's to deliver."""
        if self._pid == os.getpid():
            return
        self._fresh_state()
        self.transport.reset_after_fork()

    def stats(self) -> Dict[str, int]:
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


def _after_fork_in_child() -> None:
    for pipeline in list(_live):
        pipeline._after_fork_in_child()


def _close_all() -> None:
    """At exit: close every live pipeline at once, each within its own shutdown_timeout."""
    pipelines = list(_live)
    for pipeline in pipelines:
        pipeline.begin_close()
    for pipeline in pipelines:
        pipeline.wait_closed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
