"""The pipeline: a bounded queue, a batching worker, flush, shutdown and fork.

Knows nothing of the Segment spec beyond sizes: items are turned into messages
by an ``encode`` function (on the worker), cut into batches by count and bytes,
and sent by a :class:`~segmentio_logging._senders.Sender` (the worker itself,
and extra threads while a backlog exists). The caller's side (:meth:`Pipeline.put`) takes no
lock: a ``deque`` append and a length check.

Where batches go is a strategy the pipeline holds, a :class:`Delivery`: in
memory (:class:`MemoryDelivery`, the default), or through a disk spool
(``segmentio_logging._spool.SpoolDelivery``; ``_assemble.make_pipeline``
chooses it when ``spool_path`` is set). A delivery drives the pipeline only
through the public methods of :class:`~segmentio_logging._delivery.Host` (most of them below
the "for the delivery" line).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from . import _lifecycle, _report, _threads
from ._delivery import Batch, Delivery, MemoryDelivery
from ._errors import ClosedError, SegmentError
from ._json import error_text
from ._lifecycle import CLOSE_GRACE, leave_signals_to_other_threads, marked_busy, may_wait
from ._message import Encode, Encoded
from ._outcomes import Callback, Callbacks, Ledger, report_unanswered, sweep
from ._senders import Sender
from ._transport import Deadline, Outcome, Transport

_getpid = os.getpid
_serials = itertools.count(1)


class _GateFlag:
    """A flag of the pipeline that put()'s gate depends on: setting it sets the gate again."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = "_" + name

    def __get__(self, pipeline: Pipeline, owner: Optional[type] = None) -> bool:
        return getattr(pipeline, self._attr)  # type: ignore[no-any-return]

    def __set__(self, pipeline: Pipeline, value: bool) -> None:
        setattr(pipeline, self._attr, value)
        pipeline._set_room()


def already_encoded(item: Any) -> Encoded:
    """The encode step of items queued as (message, bytes) already."""
    return item  # type: ignore[no-any-return]


def _as_is(item: Any) -> Any:
    return item


class Pipeline:
    """Queue, worker thread and counters for one handler or client."""

    def __init__(
        self,
        transport: Transport,
        *,
        delivery: Optional[Delivery] = None,
        encode: Encode = already_encoded,
        describe: Callable[[Any], Any] = _as_is,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        shutdown_timeout: float = 5.0,
        max_in_flight: int = 1,
        on_success: Optional[Callback] = None,
        on_failure: Optional[Callback] = None,
        sync_mode: bool = False,
        handle_sigterm: bool = False,
    ) -> None:
        self.transport = transport
        self.delivery: Delivery = MemoryDelivery() if delivery is None else delivery
        self.encode = encode
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.shutdown_timeout = shutdown_timeout
        self.max_in_flight = max_in_flight
        self.sync_mode = sync_mode
        self.max_bytes = transport.max_parts_bytes
        # The most a batch can hold: a queue smaller than batch_size is full before a batch is.
        self._full_batch = min(batch_size, max_queue_size)
        # Keys the rate-limited warnings; an id() can be reused by the next pipeline.
        self.serial = next(_serials)
        self.callbacks = Callbacks(self.serial, describe, on_success, on_failure)
        self._closed = False
        self._fresh_state()
        self.delivery.attach(self)  # may start the worker
        _lifecycle.register(self, handle_sigterm=handle_sigterm)

    def _fresh_state(self) -> None:
        self._pid = os.getpid()
        # Forks that run no Python fork hook (uWSGI's, from C) are seen only by comparing
        # pids, a system call: only then does every put make it (see _put_rarely).
        self._pid_watched = _lifecycle.forks_may_skip_hooks()
        self._queue: Deque[Any] = deque()
        self.ledger = Ledger()
        self._wake = threading.Event()
        # The queue length at which a put starts the worker (none yet: at once) or wakes
        # it for a full batch; once woken, a full batch further on, until the worker wakes.
        self._wake_at = -1
        self._flushes = 0  # flush() calls waiting for everything queued
        self.deadline = Deadline()
        self._sender = Sender(
            transport=self.transport,
            encode=self.encode,
            ledger=self.ledger,
            callbacks=self.callbacks,
            deadline=self.deadline,
            take=self.take,
            queued=self._queue.__len__,
            more_due=self.more_due,
            batch_size=self._full_batch,
            max_in_flight=self.max_in_flight,
            made_with=self._wake,
        )
        self._thread: Optional[_threads.WorkerThread] = None
        self._inline = self.sync_mode
        # No thread can run (uWSGI without threads): callers deliver when a batch is due.
        self._deferred = False
        self._set_room()

    # Whether the pipeline is closed, delivers on the caller's thread (sync_mode, or no
    # thread can start), or does so only when a batch is due. Each sets put()'s gate.
    closed = _GateFlag()
    inline = _GateFlag()
    deferred = _GateFlag()

    def _set_room(self) -> None:
        """put()'s gate: the queue length below which an item is just appended. Closed,
        inline, deferred or watching the pid, every put takes the rare path."""
        rare = self._closed or self._inline or self._deferred or self._pid_watched
        self._room = 0 if rare else self.max_queue_size

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<{type(self).__name__} {state} delivery={self.delivery.name} "
            f"queued={len(self._queue)} transport={self.transport!r}>"
        )

    # ------------------------------------------------------------------ caller side

    def put(self, item: Any) -> bool:
        """Queue one item without blocking; False when it was dropped (full or closed)."""
        queue = self._queue
        size = len(queue)
        if size >= self._room:
            return self._put_rarely(item, size)
        # From here on as _queue_item, inline: this is the caller's thread.
        if size >= self._wake_at:
            return self._put_and_wake(item)
        queue.append(item)
        if self._closed:  # closed while we appended: settle it here
            self._sweep_after_close()
        return True

    def _queue_item(self, item: Any, size: int) -> bool:
        """Queue ``item`` past put()'s gate, starting or waking the worker when due."""
        if size >= self._wake_at:
            return self._put_and_wake(item)
        self._queue.append(item)
        if self._closed:
            self._sweep_after_close()
        return True

    def _put_and_wake(self, item: Any) -> bool:
        """Queue ``item``, then start the worker (none yet) or wake it for a full batch."""
        if self._pid != _getpid():  # a fork no hook saw (outside uWSGI), noticed here
            self.check_fork()
            return self.put(item)
        queue = self._queue
        # Not past every length: a put a batch further on wakes it again, and so notices a
        # fork that no hook saw while the worker was busy (a long request, an outage).
        next_wake = len(queue) + self._full_batch
        queue.append(item)
        if self._thread is None:
            self.start()
        else:
            self._wake_at = next_wake
            self._wake.set()
        if self._closed:
            self._sweep_after_close()
        return True

    def _put_rarely(self, item: Any, size: int) -> bool:
        """The rare cases of :meth:`put`: a new pid, closed, full, or delivering inline."""
        if self._pid != _getpid():
            self.check_fork()
            return self.put(item)  # the fresh state's gate decides
        ledger = self.ledger
        if self.closed:
            with ledger.lock:
                ledger.dropped_caller += 1
            error = ClosedError("1 message given after close(); not sent", count=1)
            _report.warn(f"closed-{self.serial}", error.reason)
            self.callbacks.refused([item], error)
            return False
        if size >= self.max_queue_size:
            with ledger.lock:
                ledger.dropped_caller += 1
                ledger.unreported_full += 1
            _report.warn(
                f"full-{self.serial}",
                f"queue full (max_queue_size={self.max_queue_size}): dropping messages; "
                "the receiver may be down or too slow",
            )
            if self._thread is not None:
                self._wake.set()
            return False
        if self.deferred:
            self._put_deferred(item)
            return True
        if not self.inline:  # only the pid was to be checked
            return self._queue_item(item, size)
        with ledger.lock:
            ledger.taken += 1
        self._process_here([item])
        return True

    def _put_deferred(self, item: Any) -> None:
        """Queue ``item``; a batch that is due goes from this thread (see Sender.send_if_due)."""
        self._queue.append(item)
        self._sender.send_if_due()

    def reject(self, item: Any, error: SegmentError, *, warn: bool = True) -> None:
        """Count and report an item refused before it was queued (too large, invalid).

        ``warn=False`` when the caller reports it on stderr itself (the handler's
        ``handleError``); ``on_failure`` hears of it either way.
        """
        with self.ledger.lock:
            self.ledger.dropped_caller += 1
        self._refuse(item, error, warn=warn)

    def _refuse(self, item: Any, error: SegmentError, *, warn: bool = True) -> None:
        self._sender.refuse(item, error, warn=warn)

    # ------------------------------------------------------------------ worker side

    def start(self) -> None:
        """Start the worker unless it runs or the pipeline is closed; inline if it cannot."""
        ledger = self.ledger
        with ledger.lock:
            current = self._thread
            if self.closed or (current is not None and current.is_alive()):
                return
            if not _threads.threads_run():
                self.inline = self.deferred = True
                self._sender.defer(self.flush_interval)
                return
            thread = _threads.worker_thread(
                self._run, "segmentio-logging-worker", made_with=self._wake
            )
            try:
                thread.start()
                self._thread = thread
                self._wake_at = self._full_batch - 1
                return
            except RuntimeError:
                # Interpreter shutdown: no new threads. Deliver on the caller's thread.
                self.inline = True
                pending = list(self._queue)
                self._queue.clear()
                ledger.taken += len(pending)
        self._process_here(pending)

    def worker_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wake(self) -> None:
        """Wake the worker now instead of at the next ``flush_interval``."""
        self._wake.set()

    def _process_here(self, items: List[Any]) -> None:
        """Deliver on the calling thread, marked like the worker so its logging is ignored."""
        with marked_busy():
            self._process(items)

    def _run(self) -> None:
        leave_signals_to_other_threads()
        with marked_busy():
            self._loop()

    def _loop(self) -> None:
        delivery = self.delivery
        delivery.begin()
        while True:
            try:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                # After the clear: a put's wake in between is kept, not lost.
                self._wake_at = self._full_batch - 1
                self.report_full()
                delivery.work()
                if self.closed and not self._queue:
                    # The extra senders finish their requests (bounded by the close deadline).
                    self._sender.join(self.deadline.at + CLOSE_GRACE / 2)
                    self.report_full()
                    delivery.end()
                    return
            except Exception as exc:  # pragma: no cover - a dead worker would lose everything
                _report.warn(f"worker-{self.serial}", f"worker error {error_text(exc)}")

    # ------------------------------------------------------------------ for the delivery

    def take(self, limit: Optional[int] = None) -> List[Any]:
        """Take up to ``limit`` (default ``batch_size``) items off the queue, oldest first."""
        queue = self._queue
        ledger = self.ledger
        with ledger.lock:
            n = min(len(queue), self.batch_size if limit is None else limit)
            items = [queue.popleft() for _ in range(n)]
            ledger.taken += n
        return items

    def drain(self) -> None:
        """Deliver what is queued, a batch at a time; under a backlog, several at once.

        After the first batch of a wake, only full ones go on (and all of it for a flush
        or the close): what came in meanwhile waits for the next wake, a full batch or
        ``flush_interval`` away, so that under load each request carries a full batch.
        """
        first = True
        while True:
            self._sender.wait_resumed()
            if not (first or self.more_due()):
                return
            first = False
            items = self.take()
            if not items:
                return
            if self.more_due():
                self._sender.help_with_backlog()
            self._process(items)
            self.report_full()  # between batches: a slow receiver must not delay the report

    def more_due(self) -> bool:
        """Whether another batch should go now: a full one is queued, or a flush or the
        close waits for everything queued."""
        return len(self._queue) >= self._full_batch or self.closed or self._flushes > 0

    # Sending is the sender's job (_senders.py); these are what the delivery may use of it.
    def encode_all(self, items: List[Any]) -> Batch:
        return self._sender.encode_all(items)

    def _process(self, items: List[Any]) -> None:
        self._sender.process(items)

    def send_cut(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        self._sender.send_cut(messages, parts)

    def deliver(self, parts: List[bytes]) -> List[Outcome]:
        return self._sender.deliver(parts)

    def report_full(self) -> None:
        """Tell ``on_failure`` how many items a full queue dropped since the last report."""
        ledger = self.ledger
        with ledger.lock:
            count, ledger.unreported_full = ledger.unreported_full, 0
        if count:
            self.callbacks.full(count, self.max_queue_size)

    def goal(self) -> int:
        """Under the lock: the settled count at which everything queued until now is done."""
        return self.ledger.taken + len(self._queue)

    def wait_settled(self, end: float, *, gave_up: Optional[Callable[[], bool]] = None) -> bool:
        """Wait (until ``end``, or ``gave_up()``) until everything queued before the call
        is settled."""
        ledger = self.ledger
        with ledger.lock:
            goal = self.goal()
            if ledger.settled_count() >= goal:
                return True
            self._flushes += 1  # the worker sends partial batches too meanwhile
        try:
            if self._thread is None and not self.closed and not self.inline:
                self.start()
            self._wake.set()
            return self.wait(lambda: ledger.settled_count() >= goal, end, gave_up=gave_up)
        finally:
            with ledger.lock:
                self._flushes -= 1

    def wait(
        self,
        done: Callable[[], bool],
        end: float,
        *,
        probe: Optional[Callable[[], object]] = None,
        gave_up: Optional[Callable[[], bool]] = None,
    ) -> bool:
        """Wait until ``done()`` holds (True), keeping a worker alive to get there.

        ``done`` and ``gave_up`` run under the ledger's lock, ``probe`` just before
        without it (for what needs another lock). False at ``end``, once closed at the
        close deadline plus :data:`CLOSE_GRACE`, when ``gave_up()``, and at once on
        the worker or under the logging lock, where waiting could deadlock. With no
        worker left it delivers here (inline mode) or starts one again.
        """
        waiting = may_wait()
        ledger = self.ledger
        while True:
            if probe is not None:
                probe()
            with ledger.lock:
                if done():
                    return True
                if not waiting or (gave_up is not None and gave_up()):
                    return False
                limit = min(end, self.deadline.at + CLOSE_GRACE) if self.closed else end
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    return False
                inline_work = self.inline and bool(self._queue or self._sender.held)
                if not inline_work:
                    if self.worker_alive() or self.inline:
                        # Bounded: a worker that dies or a close is noticed without a notify.
                        ledger.changed.wait(min(remaining, 0.5))
                        continue
                    if self.closed:
                        return False  # no worker left; close() settles the rest
            if inline_work:
                self._drain_here()
            else:
                self.start()

    def _drain_here(self) -> None:
        """Deliver what is held and queued on this thread, with the transport's retries."""
        self._sender.send_all_held()
        while True:
            items = self.take()
            if not items:
                return
            self._process_here(items)

    # ------------------------------------------------------------------ flush, close

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed.

        True when it all settled, False at the timeout. On the worker thread or
        while the logging lock is held (a handler closed by ``dictConfig``) it
        only wakes the worker: waiting there could deadlock. Once closed it never
        waits past the close deadline (``logging.shutdown`` flushes without a timeout).
        """
        self.check_fork()
        return self.delivery.flush(timeout)

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is safe from a killed process.

        In memory that means delivered (:meth:`flush`); through a spool, on disk.
        False at the timeout.
        """
        self.check_fork()
        return self.delivery.persist(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Deliver what can be delivered within ``timeout`` (default ``shutdown_timeout``).

        Safe to call twice. True when nothing was left undelivered.
        """
        self.begin_close(timeout)
        return self.wait_closed()

    def begin_close(self, timeout: Optional[float] = None) -> None:
        """Stop taking items and set the close deadline; :meth:`wait_closed` waits for it."""
        self.check_fork()
        limit = self.shutdown_timeout if timeout is None else timeout
        with self.ledger.lock:
            self.closed = True
        self.deadline.set(time.monotonic() + limit)
        self.transport.backoff.poke()  # senders waiting out an outage look at the deadline
        self._wake.set()
        self.delivery.closing()

    def wait_closed(self) -> bool:
        """Wait for the worker until the close deadline, plus a grace; True when all was sent."""
        self.check_fork()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            if _lifecycle.logging_lock_held():
                return False  # the worker finishes in the background; exit waits for it
            # A little past the deadline, so the worker can report what failed. The end is
            # absolute: a second close() (logging.shutdown after atexit) does not wait again.
            thread.join(max(self.deadline.at + CLOSE_GRACE - time.monotonic(), 0.0))
            if thread.is_alive():
                self._report_stuck()
                return False
        elif thread is None and (self._queue or self._sender.held):
            self._drain_here()  # never started (or cannot start): deliver on this thread
        self._sweep_after_close()
        self.delivery.release()
        self.transport.close()
        ledger = self.ledger
        with ledger.lock:
            return (
                ledger.failed == 0
                and ledger.dropped_worker == 0
                and not self._queue
                and not self._sender.held
                and self.delivery.holds_nothing()
            )

    def _report_stuck(self) -> None:
        """The worker is stuck in a request the receiver does not answer: what is still
        queued will not be sent before exit. Say so now rather than never."""
        self._sweep_queue("still queued at the close deadline: not sent")
        report_unanswered(self.ledger, self.serial)

    def _sweep_after_close(self) -> None:
        if not self.worker_alive():
            self._sweep_queue("still queued at close: not sent")

    def _sweep_queue(self, why: str) -> None:
        sweep(self._queue, self.ledger, self.callbacks, why)

    # ------------------------------------------------------------------ fork, stats

    def check_fork(self) -> None:
        """A fork that skipped the fork hooks (some servers fork from C): reset now."""
        if self._pid != os.getpid():
            _lifecycle.after_fork_in_child()
            self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """The child starts empty: what the parent held is the parent's to deliver."""
        if self._pid == os.getpid():
            return
        self._fresh_state()
        self.transport.reset_after_fork()
        self.delivery.after_fork_in_child()

    def stats(self) -> Dict[str, int]:
        """Counters; ``enqueued == delivered + failed + dropped + filtered + pending``."""
        self.check_fork()
        extra = self.delivery.stats()
        with self.ledger.lock:
            counts = self.ledger.counts(len(self._queue))
        counts.update(extra)
        return counts
