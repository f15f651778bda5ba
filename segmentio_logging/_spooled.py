"""The pipeline's spool mode: events wait on disk, not in memory, until delivered.

With a disk spool (``spool_path``) the work is split over two threads so that
a slow or absent receiver never keeps events in memory: the worker drains the
queue into the spool every ``flush_interval`` (one transaction per chunk), and
a sender thread reads batches back from the spool, oldest first (orphans left
by dead processes before this process's own), posts them and removes them once
the receiver accepted them or refused them for good (4xx). A batch still
failing when its retry budget is spent stays on disk; the sender tries again
after a backoff (``flush_interval`` doubling up to ``SPOOL_RETRY_CAP``), and
what is still there at exit is left for the next process.

Why a subclass: the spool mode shares the caller's side (:meth:`Pipeline.put`,
whose cost must not change), the counters, the lock, the close deadline and the
fork handling with the in-memory pipeline, and differs in what the worker does
each time it wakes and in what ``flush``, ``persist``, ``close`` and ``stats``
wait for or report. :class:`SpooledPipeline` overrides those steps (the hooks
named in :mod:`segmentio_logging._worker`); ``make_pipeline`` builds one
when ``spool_path`` is set.
"""

from __future__ import annotations

import functools
import json
import os
import random
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

from . import _report, _worker
from ._errors import DeliveryError, SpoolError
from ._transport import Response, Transport, is_retryable
from ._worker import CLOSE_GRACE, Pipeline, busy_threads, end_of, marked_busy

if TYPE_CHECKING:
    from ._spool import Spool, SpoolKey

# Events per spool transaction, and the longest wait between two delivery
# attempts from the spool during an outage (the retry budget of each attempt
# comes on top).
SPOOL_CHUNK = 1_000
SPOOL_RETRY_CAP = 30.0

_T = TypeVar("_T")


class _Backoff:
    """The sender's outage state. Only the sender thread creates, reads and writes one."""

    __slots__ = ("outages", "retry_at")

    def __init__(self) -> None:
        self.outages = 0  # consecutive attempts that ended with events left on disk
        self.retry_at = 0.0

    def failed(self, base: float) -> float:
        """One more failed attempt: the delay before the next one, jittered."""
        self.outages += 1
        delay: float = min(SPOOL_RETRY_CAP, base * 2 ** min(self.outages - 1, 16))
        delay *= random.uniform(0.5, 1.0)
        self.retry_at = time.monotonic() + delay
        return delay


class SpooledPipeline(Pipeline):
    """A :class:`~segmentio_logging._worker.Pipeline` whose events go through a disk spool."""

    def __init__(
        self,
        transport: Transport,
        *,
        spool: Optional[Spool] = None,
        sync_mode: bool = False,
        **options: Any,
    ) -> None:
        if spool is None:
            raise TypeError("SpooledPipeline needs a spool")
        if sync_mode:
            raise ValueError(
                "spool_path cannot be combined with sync_mode=True: sync_mode delivers on the "
                "caller's thread, the spool is written by the worker thread"
            )
        self._spool = spool
        # The pipeline counts and reports what the spool drops or loses.
        spool.on_drop = self._spool_dropped
        spool.on_error = self._spool_error
        super().__init__(transport, **options)
        # At once, not on the first event: events left by earlier processes are
        # delivered even if this one logs nothing.
        self._start()

    def _fresh_state(self) -> None:
        super()._fresh_state()
        # The spool's own state is reset by its fork hook.
        self._spool_on = True  # False once the spool proved unusable
        self._spool_lock = threading.Lock()  # one spool call and its bookkeeping at a time
        self._spool_opened = threading.Event()
        self._spool_closed = False
        self._sender: Optional[threading.Thread] = None
        self._send_wake = threading.Event()
        # Under self._lock:
        self._writer_done = False  # the worker stored its last events (closing)
        self._stored = 0  # items taken and then stored (or settled) by the worker
        self._recovered = 0  # orphans' events delivered
        self._recovered_lost = 0  # orphans' events refused for good, or dropped
        self._giveups = 0  # attempts that ended with events left on disk, for flush()
        self._flush_requests = 0  # flush() calls, each worth an attempt during a backoff
        # Under self._spool_lock:
        self._own_on_disk = 0  # own events in the spool
        self._losses: List[SpoolError] = []  # reported by the spool during a call

    def _settle(self, *, recovered: int = 0, recovered_lost: int = 0, **counts: Any) -> None:
        if recovered or recovered_lost:
            with self._lock:  # before the counts below, whose notify wakes flush()
                self._recovered += recovered
                self._recovered_lost += recovered_lost
        super()._settle(**counts)

    # ------------------------------------------------------------------ the spool

    def _spool_do(self, call: Callable[[Spool], _T], *, reconcile: bool = True) -> _T:
        """Run ``call(spool)`` alone, then count and report what the spool dropped or lost.

        Which events a bound or a corrupt file took is not said by the spool, only
        how many: this process's own events are those missing from its own file
        (``Spool.own``) beyond what was removed after delivery, and the rest of
        what was reported came from orphans.
        """
        spool = self._spool
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
        self._losses.append(SpoolError(reason, count=count, path=self._spool.directory))

    def _spool_error(self, error: SpoolError) -> None:
        """The spool's ``on_error``: runs inside a :meth:`_spool_do` call."""
        self._losses.append(error)

    def _report_losses(self, losses: List[SpoolError], lost_own: int) -> None:
        for error in losses:
            _report.warn(f"spool-{self._serial}", f"spool: {error.reason}")
            self._call(self.on_failure, [], error)
        reported = sum(error.count for error in losses)
        self._settle(dropped=lost_own, recovered_lost=max(reported - lost_own, 0))

    def _close_spool(self) -> None:
        """Release the spool; what it still holds is left for the next process."""
        spool = self._spool
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

    # ------------------------------------------------------------------ worker side

    def _begin_work(self) -> None:
        if self._spool_on and not self._spool_opened.is_set():
            self._open_spool()

    def _work(self) -> None:
        if self._spool_on:
            self._store_queued()
        else:
            self._drain()

    def _end_work(self) -> None:
        """At close: let the sender do what it can by the deadline."""
        with self._lock:
            self._writer_done = True
        self._send_wake.set()
        sender = self._sender
        if sender is not None:
            sender.join(max(self._deadline.at + CLOSE_GRACE / 2 - time.monotonic(), 0.0))
            if sender.is_alive():
                return  # still in a request: its files stay locked until the process ends
        self._close_spool()
        self.transport.close()

    def _open_spool(self) -> None:
        """Open the spool and claim orphans, or fall back to memory for good."""
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
        """Move everything queued into the spool, one transaction per chunk."""
        while True:
            items = self._take(max(self.batch_size, SPOOL_CHUNK))
            if not items:
                return
            messages: List[Optional[Dict[str, Any]]] = []
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

    def _send_cut(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        """Deliver from memory, cut by bytes (the spool could not take these)."""
        start, size = 0, 0
        for index, data in enumerate(parts):
            if index > start and size + len(data) + 1 > self._max_bytes:
                self._send(messages[start:index], parts[start:index])
                start, size = index, 0
            size += len(data) + 1
        if start < len(parts):
            self._send(messages[start:], parts[start:])

    # ------------------------------------------------------------------ sender side

    def _run_sender(self) -> None:
        with marked_busy():
            self._sender_loop()

    def _sender_loop(self) -> None:
        idle = max(self.flush_interval, self._spool.rescan_interval)  # orphans are looked for then
        backoff = _Backoff()
        flush_seen = 0
        while True:
            try:
                wait = max(backoff.retry_at - time.monotonic(), 0.0) if backoff.outages else idle
                self._send_wake.wait(wait)
                self._send_wake.clear()
                with self._lock:
                    closing = self._writer_done
                    asked = self._flush_requests != flush_seen
                    flush_seen = self._flush_requests
                if backoff.outages and not asked and time.monotonic() < backoff.retry_at:
                    if closing:
                        return  # a known outage: exit does not wait for it, the events are on disk
                    continue
                self._send_spooled(backoff)
                if closing:
                    return
            except Exception as exc:  # pragma: no cover - a dead sender would deliver nothing
                _report.warn(f"sender-{self._serial}", f"sender error {type(exc).__name__}: {exc}")
                with self._lock:
                    if self._writer_done:
                        return
                self._note_outage(backoff, None, 0)

    def _send_spooled(self, backoff: _Backoff) -> None:
        """Send batches from the spool, oldest first, until it is empty or the receiver fails."""
        while True:
            try:
                rows, own = self._spool_do(self._read_batch)
            except SpoolError as error:
                _report.warn(f"spool-read-{self._serial}", f"spool: {error.reason}")
                self._note_outage(backoff, None, 0)
                return
            if not rows:
                return
            outcomes = self._deliver([data for _, data in rows])
            kept: Optional[DeliveryError] = None
            kept_count = 0
            stuck = 0
            for start, end, outcome in outcomes:
                if isinstance(outcome, DeliveryError) and not _refused_for_good(outcome):
                    kept, kept_count = outcome, kept_count + end - start
                    with self._lock:
                        self._retried_requests += max(outcome.attempts - 1, 0)
                    continue
                left = self._settle_spooled(rows[start:end], own, outcome)
                stuck += left
                if not left:
                    backoff.outages = 0
            if kept is not None:
                self._note_outage(backoff, kept, kept_count)
                return
            if stuck:
                # Rows sent but not removed: a bound deleted them meanwhile (harmless), or
                # the spool failed to delete them and they would be read and sent again at
                # once. Either way wait a backoff before the next read, so it cannot spin.
                backoff.failed(self.flush_interval)
                return

    def _read_batch(self, spool: Spool) -> Tuple[List[Tuple[SpoolKey, bytes]], Optional[int]]:
        rows = spool.oldest(self.batch_size, self._max_bytes)
        return rows, spool.own()[0]

    def _settle_spooled(
        self,
        rows: Sequence[Tuple[SpoolKey, bytes]],
        own: Optional[int],
        outcome: Any,
    ) -> int:
        """Remove a delivered (or refused) slice from the spool, call back, then count;
        how many of its rows could not be removed.

        A bound (``spool_max_bytes``, ``spool_max_age``) may have deleted some of
        these rows while they were in flight: :meth:`_spool_do` already counted
        and reported those as dropped, so only the rows removed here reach the
        callback and the counts, and no event is both dropped and delivered.
        """

        def remove(spool: Spool) -> List[SpoolKey]:
            removed = spool.remove([key for key, _ in rows])
            self._own_on_disk -= sum(1 for key in removed if key[0] == own)
            return removed

        try:
            removed = set(self._spool_do(remove))
        except SpoolError as error:  # the rows stay on disk: sent again, deduplicated on messageId
            _report.warn(f"spool-remove-{self._serial}", f"spool: {error.reason}")
            removed = set()
        settled = [row for row in rows if row[0] in removed]
        own_removed = sum(1 for key, _ in settled if key[0] == own)
        other_removed = len(settled) - own_removed
        retries = max(outcome.attempts - 1, 0)
        if isinstance(outcome, Response):
            if settled and self.on_success is not None:
                self._call(self.on_success, _decode(settled), outcome)
            self._settle(
                delivered=own_removed, recovered=other_removed, retries=retries, batch=bool(settled)
            )
        else:
            _report.warn(f"failed-{self._serial}", outcome.reason)
            if settled and self.on_failure is not None:
                self._call(self.on_failure, _decode(settled), outcome)
            self._settle(
                failed=own_removed,
                recovered_lost=other_removed,
                retries=retries,
                batch=bool(settled),
            )
        return len(rows) - len(settled)

    def _note_outage(self, backoff: _Backoff, error: Optional[DeliveryError], count: int) -> None:
        """Events stay on disk: try again after a backoff, so that an outage does not spin."""
        delay = backoff.failed(self.flush_interval)
        with self._lock:
            self._giveups += 1
            self._settled_cond.notify_all()
            closing = self._writer_done
        if error is not None and not closing:
            plural = "s" if count != 1 else ""
            _report.warn(
                f"spool-outage-{self._serial}",
                f"{error.reason}; {count} message{plural} kept in the spool, "
                f"next attempt in {delay:.2f}s",
            )

    # ------------------------------------------------------------------ caller side

    def _spool_ready(self, end: float) -> bool:
        """Wait (until ``end``) for the worker to open the spool; True when spool mode is on."""
        if self._inline:
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
        total, _ = self._spool.pending()
        return max(total - self._spool.own()[1], 0)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed.

        As :meth:`Pipeline.flush`; it also waits for the orphans' events this
        process holds, and events stay on disk during an outage: without a
        timeout it then returns False once a delivery attempt ended with events
        left on disk (within ``retry_budget``, as without a spool), with one at
        the timeout.
        """
        self._check_fork()
        end = end_of(timeout)
        if not self._spool_ready(end):
            return self._flush_memory(end)
        with self._lock:
            goal = self._taken + len(self._queue)
            giveups = self._giveups
            orphans_settled = self._recovered + self._recovered_lost
            self._flush_requests += 1  # one attempt now, even during an outage's backoff
        orphans = orphans_left = self._orphans_held()
        self._wake.set()
        self._send_wake.set()

        def probe() -> None:  # outside self._lock: the spool's lock is never taken under it
            nonlocal orphans_left
            orphans_left = self._orphans_held()

        def done() -> bool:
            return self._settled() >= goal and (
                orphans_left == 0
                or self._recovered + self._recovered_lost - orphans_settled >= orphans
            )

        def outage() -> bool:  # without a timeout, flush does not wait out an outage
            return self._giveups > giveups

        return self._wait(done, end, probe=probe, gave_up=outage if timeout is None else None)

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is in the spool (or settled).

        True then: the events survive the process being killed from now on. False
        at the timeout. When the spool could not be opened this is :meth:`flush`.
        """
        self._check_fork()
        end = end_of(timeout)
        if not self._spool_ready(end):
            return self._flush_memory(end)

        def done() -> bool:
            return self._stored >= goal or self._settled() >= goal

        with self._lock:
            goal = self._taken + len(self._queue)
            if done():
                return True  # the worker is not woken: nothing to store
        self._wake.set()
        return self._wait(done, end)

    def begin_close(self, timeout: Optional[float] = None) -> None:
        super().begin_close(timeout)
        self._send_wake.set()

    def _release(self) -> None:
        sender = self._sender
        if sender is None or not sender.is_alive():
            self._close_spool()  # the worker did, unless it never ran

    def _nothing_left(self) -> bool:
        return super()._nothing_left() and self._own_on_disk == 0

    def _after_fork_in_child(self) -> None:
        if self._pid == os.getpid():
            return
        super()._after_fork_in_child()
        # A file of its own: the parent's stay the parent's (the spool's fork hook
        # has usually done this already; it is idempotent).
        self._spool.reset_after_fork()

    def stats(self) -> Dict[str, int]:
        """As :meth:`Pipeline.stats`, with the spool's counts.

        This process's events waiting on disk count as pending, and three more
        keys appear: ``spooled`` (events in the spool files this process holds,
        its own and orphans'), ``recovered`` (orphans' events delivered) and
        ``recovered_lost`` (orphans' events refused for good or dropped by a
        bound). Orphans' events are not part of ``enqueued``.
        """
        self._check_fork()
        spooled = self._spool.pending()[0]
        counts = super().stats()
        with self._lock:
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
    for pipeline in list(_worker._live):
        if isinstance(pipeline, SpooledPipeline) and pipeline._pid == pid:
            lock = pipeline._spool_lock
            if lock.acquire(timeout=FORK_WAIT):
                _held_at_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_at_fork.clear()  # the child's pipelines get new locks


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
