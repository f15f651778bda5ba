"""The pipeline: a bounded queue, one batching thread, flush, shutdown and fork.

Knows nothing of the Segment spec beyond sizes: items are turned into messages
by a ``prepare`` function, encoded, cut into batches by count and bytes, and
handed to the transport. The caller's side (:meth:`Pipeline.put`) takes no
lock: a ``deque`` append and a length check.

With a disk spool (``spool_path``) the work is split over two threads so that
a slow or absent receiver never keeps events in memory: the worker drains the
queue into the spool every ``flush_interval`` (one transaction per chunk), and
a sender thread reads batches back from the spool, oldest first (orphans left
by dead processes before this process's own), posts them and removes them once
the receiver accepted them or refused them for good (4xx). A batch still
failing when its retry budget is spent stays on disk; the sender tries again
after a backoff (``flush_interval`` doubling up to ``SPOOL_RETRY_CAP``), and
what is still there at exit is left for the next process.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import logging
import math
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
)

from . import _report
from ._errors import (
    ClosedError,
    DeliveryError,
    InvalidMessage,
    QueueFull,
    SegmentError,
    SpoolError,
)
from ._message import MAX_BATCH_BYTES, envelope_size, reset_message_ids
from ._transport import Deadline, Outcome, Response, Transport, is_retryable

if TYPE_CHECKING:  # the spool (and sqlite3) is only imported when spool_path is set
    from ._spool import Spool, SpoolKey

# An item becomes its message and the message's encoded bytes.
Prepare = Callable[[Any], Tuple[Dict[str, Any], bytes]]
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

# Spool mode: events per spool transaction, and the longest wait between two
# delivery attempts from the spool during an outage (the retry budget of each
# attempt comes on top).
SPOOL_CHUNK = 1_000
SPOOL_RETRY_CAP = 30.0

_T = TypeVar("_T")


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
        spool: Optional[Spool] = None,
    ) -> None:
        if spool is not None and sync_mode:
            raise ValueError(
                "spool_path cannot be combined with sync_mode=True: sync_mode delivers on the "
                "caller's thread, the spool is written by the worker thread"
            )
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
        # Keys the rate-limited warnings; an id() can be reused by the next pipeline.
        self._serial = next(_serials)
        self._closed = False
        self._spool = spool
        if spool is not None:
            # The pipeline counts and reports what the spool drops or loses.
            spool.on_drop = self._spool_dropped
            spool.on_error = self._spool_error
        self._fresh_state()
        _live.add(self)
        if spool is not None:
            # At once, not on the first event: events left by earlier processes
            # are delivered even if this one logs nothing.
            self._start()

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
        # Spool mode; the spool's own state is reset by its fork hook.
        self._spool_on = self._spool is not None  # False once the spool proved unusable
        self._spool_lock = threading.Lock()  # one spool call and its bookkeeping at a time
        self._spool_opened = threading.Event()
        self._spool_closed = False
        self._sender: Optional[threading.Thread] = None
        self._send_wake = threading.Event()
        self._writer_done = False  # the worker stored its last events (closing)
        self._own_on_disk = 0  # own events in the spool; under _spool_lock
        self._losses: List[SpoolError] = []  # reported by the spool during a call
        self._stored = 0  # items taken and then stored (or settled) by the worker
        self._recovered = 0  # orphans' events delivered
        self._recovered_lost = 0  # orphans' events refused for good, or dropped
        self._outages = 0  # consecutive attempts that ended with events left on disk
        self._giveups = 0  # all such attempts, for flush()
        self._retry_at = 0.0
        self._flush_requests = 0
        self._flush_seen = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Pipeline {state} queued={len(self._queue)} transport={self.transport!r}>"

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
        elif size + 1 >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if self._closed:  # closed while we appended: settle it here
            self._sweep_after_close()
        return True

    def _put_otherwise(self, item: Any, size: int) -> bool:
        """The rare cases of :meth:`put`: closed, delivering inline, or full."""
        if self._closed:
            self._drop_closed([item])
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
        self._call(self.on_failure, [item], error)

    def _drop_closed(self, items: List[Any]) -> None:
        with self._lock:
            self._dropped_caller += len(items)
        error = ClosedError(
            f"{len(items)} message{'s' if len(items) != 1 else ''} given after close(); not sent",
            count=len(items),
        )
        _report.warn(f"closed-{self._serial}", error.reason)
        self._call(self.on_failure, items, error)

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
        if self._spool_on:
            self._open_spool()
        while True:
            try:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                self._report_full()
                if self._spool_on:
                    self._store_queued()
                else:
                    self._drain()
                if self._closed and not self._queue:
                    self._report_full()
                    if self._spool is not None:
                        self._finish_spool()
                    self.transport.close()  # also when close() handed off (dictConfig)
                    return
            except Exception as exc:  # pragma: no cover - a dead worker would lose everything
                _report.warn(f"worker-{self._serial}", f"worker error {type(exc).__name__}: {exc}")

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

    def _prepare_one(self, item: Any) -> Optional[Tuple[Dict[str, Any], bytes]]:
        """The item's message and bytes; None (reported) when it cannot become one."""
        try:
            return self.prepare(item)
        except SegmentError as error:
            self._call(self.on_failure, [item], error)
        except Exception as exc:  # a bug or a hostile object: report, never stop
            reason = f"could not build the message: {type(exc).__name__}: {exc}"
            self._call(self.on_failure, [item], InvalidMessage(reason))
        return None

    def _process(self, items: List[Any]) -> None:
        """Prepare, encode, cut by bytes and deliver ``items``; settle each one."""
        messages: List[Dict[str, Any]] = []
        parts: List[bytes] = []
        size = 0
        dropped = 0
        for item in items:
            prepared = self._prepare_one(item)
            if prepared is None:
                dropped += 1
                continue
            message, data = prepared
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

    def _send(self, messages: List[Dict[str, Any]], parts: List[bytes]) -> None:
        outcomes = self._deliver(parts)
        # Callbacks first, counts second: once flush() returns, the callbacks have run.
        for start, end, outcome in outcomes:
            data = messages[start:end]
            retries = max(outcome.attempts - 1, 0)
            if isinstance(outcome, Response):
                self._call(self.on_success, data, outcome)
                self._settle(delivered=end - start, retries=retries)
            else:
                _report.warn(f"failed-{self._serial}", outcome.reason)
                self._call(self.on_failure, data, outcome)
                self._settle(failed=end - start, retries=retries)

    def _settle(
        self,
        *,
        delivered: int = 0,
        failed: int = 0,
        dropped: int = 0,
        retries: int = 0,
        recovered: int = 0,
        recovered_lost: int = 0,
        batch: bool = False,
    ) -> None:
        with self._lock:
            self._delivered += delivered
            self._failed += failed
            self._dropped_worker += dropped
            self._retried_requests += retries
            self._recovered += recovered
            self._recovered_lost += recovered_lost
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

    # ------------------------------------------------------------------ spool mode

    def _spool_do(self, call: Callable[[Spool], _T], *, reconcile: bool = True) -> _T:
        """Run ``call(spool)`` alone, then count and report what the spool dropped or lost.

        Which events a bound or a corrupt file took is not said by the spool, only
        how many: this process's own events are those missing from its own file
        (``Spool.own``) beyond what was removed after delivery, and the rest of
        what was reported came from orphans.
        """
        spool = self._spool
        assert spool is not None
        lost_own = 0
        losses: List[SpoolError] = []
        try:
            with self._spool_lock:
                try:
                    return call(spool)
                finally:
                    losses, self._losses = self._losses, []
                    if reconcile:
                        _, stored = spool.own()
                        lost_own = max(self._own_on_disk - stored, 0)
                        self._own_on_disk = stored
        finally:
            if losses or lost_own:
                self._report_losses(losses, lost_own)

    def _spool_dropped(self, count: int, reason: str) -> None:
        """The spool's ``on_drop``: runs inside a :meth:`_spool_do` call."""
        self._losses.append(SpoolError(reason, count=count, path=self._spool_directory()))

    def _spool_error(self, error: SpoolError) -> None:
        """The spool's ``on_error``: runs inside a :meth:`_spool_do` call."""
        self._losses.append(error)

    def _spool_directory(self) -> Optional[str]:
        return None if self._spool is None else self._spool.directory

    def _report_losses(self, losses: List[SpoolError], lost_own: int) -> None:
        for error in losses:
            _report.warn(f"spool-{self._serial}", f"spool: {error.reason}")
            self._call(self.on_failure, [], error)
        reported = sum(error.count for error in losses)
        self._settle(dropped=lost_own, recovered_lost=max(reported - lost_own, 0))

    def _open_spool(self) -> None:
        """On the worker: open the spool and claim orphans, or fall back to memory for good."""
        try:
            self._spool_do(lambda spool: spool.open())
        except SpoolError as error:
            self._spool_on = False
            self._spool_opened.set()  # before the callback, which may call flush()
            _report.warn(
                f"spool-open-{self._serial}",
                f"spool: {error.reason}; keeping events in memory",
            )
            self._call(self.on_failure, [], error)
            return
        finally:
            self._spool_opened.set()
        sender = threading.Thread(
            target=self._run_sender, name="segmentio-logging-sender", daemon=True
        )
        self._send_wake.set()  # orphans first, at once
        try:
            sender.start()
        except RuntimeError:  # interpreter shutdown: what is on disk waits for the next process
            self._spool_on = False
            self._close_spool()
            return
        self._sender = sender

    def _store_queued(self) -> None:
        """On the worker: move everything queued into the spool, one transaction per chunk."""
        while True:
            items = self._take(max(self.batch_size, SPOOL_CHUNK))
            if not items:
                return
            messages: List[Dict[str, Any]] = []
            parts: List[bytes] = []
            for item in items:
                prepared = self._prepare_one(item)
                if prepared is not None:
                    messages.append(prepared[0])
                    parts.append(prepared[1])
            if parts:
                try:
                    self._spool_do(functools.partial(self._append, parts=parts))
                except SpoolError as error:  # nothing was stored (disk full, I/O error)
                    _report.warn(
                        f"spool-write-{self._serial}",
                        f"spool: {error.reason}; sending these events from memory",
                    )
                    self._send_cut(messages, parts)
            dropped = len(items) - len(parts)
            with self._lock:
                self._stored += len(items)
                self._dropped_worker += dropped
                self._settled_cond.notify_all()
            self._send_wake.set()

    def _append(self, spool: Spool, parts: List[bytes]) -> int:
        keys = spool.append(parts)
        self._own_on_disk += len(keys)  # a bound may have dropped some: _spool_do counts them
        return len(keys)

    def _send_cut(self, messages: List[Dict[str, Any]], parts: List[bytes]) -> None:
        """Deliver from memory, cut by bytes (the spool could not take these)."""
        start, size = 0, 0
        for index, data in enumerate(parts):
            if index > start and size + len(data) + 1 > self._max_bytes:
                self._send(messages[start:index], parts[start:index])
                start, size = index, 0
            size += len(data) + 1
        if start < len(parts):
            self._send(messages[start:], parts[start:])

    def _finish_spool(self) -> None:
        """On the worker, at close: let the sender do what it can by the deadline."""
        self._writer_done = True
        self._send_wake.set()
        sender = self._sender
        if sender is not None:
            sender.join(max(self._deadline.at + CLOSE_GRACE / 2 - time.monotonic(), 0.0))
            if sender.is_alive():
                return  # still in a request: its files stay locked until the process ends
        self._close_spool()

    def _close_spool(self) -> None:
        """Release the spool; what it still holds is left for the next process."""
        spool = self._spool
        if spool is None:
            return
        with self._lock:
            if self._spool_closed:
                return
            self._spool_closed = True

        def close(spool: Spool) -> int:
            left = spool.pending()[0]
            spool.close()
            return left

        try:
            left = self._spool_do(close, reconcile=False)
        except SpoolError as error:  # pragma: no cover - close only releases files
            _report.warn(f"spool-close-{self._serial}", f"spool: {error.reason}")
            return
        if left:
            plural = "s" if left != 1 else ""
            _report.warn(
                f"spool-left-{self._serial}",
                f"{left} event{plural} left in the spool at {spool.directory} "
                "for the next process to deliver",
            )

    # ------------------------------------------------------------------ sender (spool mode)

    def _run_sender(self) -> None:
        with marked_busy():
            self._sender_loop()

    def _sender_loop(self) -> None:
        spool = self._spool
        assert spool is not None
        idle = max(self.flush_interval, spool.rescan_interval)  # orphans are looked for then
        while True:
            try:
                if self._outages:
                    wait = max(self._retry_at - time.monotonic(), 0.0)
                else:
                    wait = idle
                self._send_wake.wait(wait)
                self._send_wake.clear()
                closing = self._writer_done
                asked = self._flush_requests != self._flush_seen
                self._flush_seen = self._flush_requests
                if self._outages and not asked and time.monotonic() < self._retry_at:
                    if closing:
                        return  # a known outage: exit does not wait for it, the events are on disk
                    continue
                self._send_spooled()
                if closing:
                    return
            except Exception as exc:  # pragma: no cover - a dead sender would deliver nothing
                _report.warn(f"sender-{self._serial}", f"sender error {type(exc).__name__}: {exc}")
                if self._writer_done:
                    return
                self._note_outage(None, 0)

    def _send_spooled(self) -> None:
        """Send batches from the spool, oldest first, until it is empty or the receiver fails."""
        while True:
            try:
                rows, own = self._spool_do(self._read_batch)
            except SpoolError as error:
                _report.warn(f"spool-read-{self._serial}", f"spool: {error.reason}")
                self._note_outage(None, 0)
                return
            if not rows:
                return
            outcomes = self._deliver([data for _, data in rows])
            kept: Optional[DeliveryError] = None
            kept_count = 0
            settled_any = False
            for start, end, outcome in outcomes:
                if isinstance(outcome, DeliveryError) and not _refused_for_good(outcome):
                    kept, kept_count = outcome, kept_count + end - start
                    with self._lock:
                        self._retried_requests += max(outcome.attempts - 1, 0)
                    continue
                self._settle_spooled(rows[start:end], own, outcome)
                settled_any = True
            if settled_any:
                self._outages = 0
            if kept is not None:
                self._note_outage(kept, kept_count)
                return

    def _read_batch(self, spool: Spool) -> Tuple[List[Tuple[SpoolKey, bytes]], Optional[int]]:
        rows = spool.oldest(self.batch_size, self._max_bytes)
        return rows, spool.own()[0]

    def _settle_spooled(
        self,
        rows: Sequence[Tuple[SpoolKey, bytes]],
        own: Optional[int],
        outcome: Any,
    ) -> None:
        """Remove a delivered (or refused) slice from the spool, call back, then count."""
        own_keys = [key for key, _ in rows if key[0] == own]
        other_keys = [key for key, _ in rows if key[0] != own]

        def remove(spool: Spool) -> Tuple[int, int]:
            own_removed = spool.remove(own_keys) if own_keys else 0
            self._own_on_disk -= own_removed
            return own_removed, (spool.remove(other_keys) if other_keys else 0)

        try:
            own_removed, other_removed = self._spool_do(remove)
        except SpoolError as error:  # sent anyway; a resend is deduplicated on messageId
            _report.warn(f"spool-remove-{self._serial}", f"spool: {error.reason}")
            own_removed, other_removed = 0, 0
        # Events a bound dropped while this slice was in flight were already counted
        # as dropped by _spool_do; only the removed ones are counted here.
        retries = max(outcome.attempts - 1, 0)
        if isinstance(outcome, Response):
            if self.on_success is not None:
                self._call(self.on_success, _decode(rows), outcome)
            self._settle(
                delivered=own_removed, recovered=other_removed, retries=retries, batch=True
            )
        else:
            _report.warn(f"failed-{self._serial}", outcome.reason)
            if self.on_failure is not None:
                self._call(self.on_failure, _decode(rows), outcome)
            self._settle(
                failed=own_removed, recovered_lost=other_removed, retries=retries, batch=True
            )

    def _note_outage(self, error: Optional[DeliveryError], count: int) -> None:
        """Events stay on disk: try again after a backoff, so that an outage does not spin."""
        self._outages += 1
        delay = min(SPOOL_RETRY_CAP, self.flush_interval * 2 ** min(self._outages - 1, 16))
        delay *= random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        with self._lock:
            self._giveups += 1
            self._settled_cond.notify_all()
        if error is not None and not self._writer_done:
            plural = "s" if count != 1 else ""
            _report.warn(
                f"spool-outage-{self._serial}",
                f"{error.reason}; {count} message{plural} kept in the spool, "
                f"next attempt in {delay:.2f}s",
            )

    def _spool_ready(self, end: float) -> bool:
        """Wait (until ``end``) for the worker to open the spool; True when spool mode is on."""
        if self._spool is None or self._inline:
            return False
        if self._thread is None and not self._closed:
            self._start()
        if threading.get_ident() in busy_threads:  # the worker itself, or a callback: no waiting
            return self._spool_on and self._spool_opened.is_set()
        while not self._spool_opened.is_set():
            thread = self._thread
            if thread is None or not thread.is_alive():
                break
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            self._spool_opened.wait(min(remaining, 0.5))
        return self._spool_on and self._spool_opened.is_set()

    def _orphans_held(self) -> int:
        spool = self._spool
        if spool is None:
            return 0
        total, _ = spool.pending()
        return max(total - spool.own()[1], 0)

    # ------------------------------------------------------------------ flush, close

    def _settled(self) -> int:
        return self._delivered + self._failed + self._dropped_worker

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed.

        True when it all settled, False at the timeout. On the worker thread or
        while the logging lock is held (a handler closed by ``dictConfig``) it
        only wakes the worker: waiting there could deadlock. Once closed it never
        waits past the close deadline (``logging.shutdown`` flushes without a timeout).

        With a spool it also waits for the orphans' events this process holds,
        and events stay on disk during an outage: without a timeout it then
        returns False once a delivery attempt ended with events left on disk
        (within ``retry_budget``, as without a spool), with one at the timeout.
        """
        self._check_fork()
        end = math.inf if timeout is None else time.monotonic() + timeout
        if self._spool_ready(end):
            return self._flush_spool(timeout, end)
        with self._lock:
            goal = self._taken + len(self._queue)
            if self._settled() >= goal:
                return True
        if self._thread is None and not self._closed and not self._inline:
            self._start()
        self._wake.set()
        if threading.get_ident() in busy_threads or _logging_lock_held():
            with self._lock:
                return self._settled() >= goal
        end = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._settled() >= goal:
                    return True
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
            # No worker to wait for: deliver here (inline mode), or start one again.
            if inline_work:
                self._drain_here()
            else:
                self._start()

    def _flush_spool(self, timeout: Optional[float], end: float) -> bool:
        with self._lock:
            goal = self._taken + len(self._queue)
            giveups = self._giveups
            orphans_settled = self._recovered + self._recovered_lost
            self._flush_requests += 1  # one attempt now, even during an outage's backoff
        orphans = self._orphans_held()
        self._wake.set()
        self._send_wake.set()
        waiting = not (threading.get_ident() in busy_threads or _logging_lock_held())
        while True:
            # Outside self._lock: the spool's lock is never taken while holding it.
            orphans_left = self._orphans_held()
            with self._lock:
                done = self._settled() >= goal and (
                    orphans_left == 0
                    or self._recovered + self._recovered_lost - orphans_settled >= orphans
                )
                if done:
                    return True
                if not waiting:
                    return False
                if timeout is None and self._giveups > giveups:
                    return False  # an outage: the events wait on disk
                limit = min(end, self._deadline.at + CLOSE_GRACE) if self._closed else end
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    return False
                thread = self._thread
                if thread is not None and thread.is_alive():
                    self._settled_cond.wait(min(remaining, 0.5))
                    continue
                if self._closed:
                    return False  # no worker left; what is on disk is the next process's
            self._start()

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is in the spool (or settled).

        True then: the events survive the process being killed from now on. False
        at the timeout. Without a spool (or when it could not be opened) this is
        :meth:`flush`: nothing is safe before it was delivered.
        """
        self._check_fork()
        end = math.inf if timeout is None else time.monotonic() + timeout
        if not self._spool_ready(end):
            return self.flush(timeout)
        with self._lock:
            goal = self._taken + len(self._queue)
            if self._stored >= goal or self._settled() >= goal:
                return True
        self._wake.set()
        waiting = not (threading.get_ident() in busy_threads or _logging_lock_held())
        while True:
            with self._lock:
                if self._stored >= goal or self._settled() >= goal:
                    return True
                remaining = end - time.monotonic()
                if not waiting or remaining <= 0:
                    return False
                thread = self._thread
                if thread is None or not thread.is_alive():
                    if self._closed:
                        return False
                else:
                    self._settled_cond.wait(min(remaining, 0.5))
                    continue
            self._start()

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
        self._send_wake.set()

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
                swept = self._sweep_queue("still queued at the close deadline: not sent")
                with self._lock:
                    in_flight = self._taken - self._settled() - swept
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
        sender = self._sender
        if sender is None or not sender.is_alive():
            self._close_spool()  # the worker did, unless it never ran
        self.transport.close()
        with self._lock:
            return (
                self._failed == 0
                and self._dropped_worker == 0
                and not self._queue
                and self._own_on_disk == 0
            )

    def _sweep_after_close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._sweep_queue("still queued at close: not sent")

    def _sweep_queue(self, why: str) -> int:
        """Settle what is still queued as dropped, reported with ``why``; how many."""
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._taken += len(left)
        if left:
            plural = "s" if len(left) != 1 else ""
            error = ClosedError(f"{len(left)} message{plural} {why}", count=len(left))
            _report.warn(f"swept-{self._serial}", error.reason)
            self._call(self.on_failure, left, error)
            self._settle(dropped=len(left))
        return len(left)

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
        if self._spool is not None:
            # A file of its own: the parent's stay the parent's (the spool's fork
            # hook has usually done this already; it is idempotent).
            self._spool.reset_after_fork()

    def stats(self) -> Dict[str, int]:
        """Counters; ``enqueued == delivered + failed + dropped + pending`` always holds.

        With a spool, this process's events waiting on disk count as pending, and
        three more keys appear: ``spooled`` (events in the spool files this
        process holds, its own and orphans'), ``recovered`` (orphans' events
        delivered) and ``recovered_lost`` (orphans' events refused for good or
        dropped by a bound). Orphans' events are not part of ``enqueued``.
        """
        self._check_fork()
        spooled = None if self._spool is None else self._spool.pending()[0]
        with self._lock:
            queued = len(self._queue)
            in_flight = self._taken - self._delivered - self._failed - self._dropped_worker
            counts = {
                "enqueued": self._taken + queued + self._dropped_caller,
                "delivered": self._delivered,
                "failed": self._failed,
                "dropped": self._dropped_worker + self._dropped_caller,
                "pending": queued + in_flight,
                "queued": queued,
                "batches": self._batches,
                "retries": self._retried_requests,
            }
            if spooled is not None:
                counts["spooled"] = spooled
                counts["recovered"] = self._recovered
                counts["recovered_lost"] = self._recovered_lost
            return counts


def _refused_for_good(error: DeliveryError) -> bool:
    """A 4xx (or other non-retryable status): the receiver will never take these."""
    return error.status is not None and not is_retryable(error.status)


def _decode(rows: Sequence[Tuple[SpoolKey, bytes]]) -> List[Any]:
    """Stored bytes back to message dicts, for the callbacks."""
    out: List[Any] = []
    for _, data in rows:
        try:
            out.append(json.loads(data))
        except ValueError:  # pragma: no cover - the worker only stores what it encoded
            out.append(data.decode("utf-8", "replace"))
    return out


# Spool locks taken before a fork: no thread of ours is then inside SQLite, whose
# internal mutexes a child would otherwise inherit locked (and hang on).
_held_at_fork: List[threading.Lock] = []
FORK_WAIT = 2.0  # seconds a fork waits for a spool call in progress, at most


def _before_fork() -> None:
    pid = os.getpid()
    for pipeline in list(_live):
        if pipeline._spool is None or pipeline._pid != pid:
            continue
        lock = pipeline._spool_lock
        if lock.acquire(timeout=FORK_WAIT):
            _held_at_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


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
    _held_at_fork.clear()  # the child's pipelines get new locks
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
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
atexit.register(_close_all)
