"""The spool delivery: events wait on disk, not in memory, until delivered.

The pipeline's worker drains its queue into the spool every ``flush_interval``
(one transaction per chunk); a sender thread reads batches back, oldest first
(orphans left by dead processes before this process's own), posts them and
removes them once the receiver accepted them or refused them for good. During an
outage they stay on disk and the sender backs off. See docs/spool.md.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _report
from .._delivery import Host, outage_since_now
from .._errors import DeliveryError, SpoolError
from .._json import decode_json, error_text
from .._lifecycle import (
    CLOSE_GRACE,
    busy_threads,
    end_of,
    leave_signals_to_other_threads,
    marked_busy,
)
from .._transport import Response, is_retryable
from ._counted import CountedSpool
from ._store import Spool, SpoolKey

# Events per spool transaction, and the longest wait between two delivery
# attempts from the spool during an outage (the retry budget of each attempt
# comes on top).
SPOOL_CHUNK = 1_000
SPOOL_RETRY_CAP = 30.0


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


class SpoolDelivery:
    """A pipeline's delivery through a disk spool: the worker stores, a sender sends."""

    name = "spool"

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        # The delivery counts and reports what the spool drops or loses.
        self._counted = CountedSpool(spool, self._report_losses)
        self._host: Optional[Host] = None
        self._fresh_state()

    def __repr__(self) -> str:
        return f"<SpoolDelivery {self.spool.directory}>"

    def _fresh_state(self) -> None:
        # The spool's own state is reset by its fork hook.
        self._pid = os.getpid()
        self._spool_on = True  # False once the spool proved unusable
        self._spool_opened = threading.Event()
        self._sender: Optional[threading.Thread] = None
        self._send_wake = threading.Event()
        # Under the pipeline's ledger lock:
        self._writer_done = False  # the worker stored its last events (closing)
        self._stored = 0  # items taken and then stored (or settled) by the worker
        self._recovered = 0  # orphans' events delivered
        self._recovered_lost = 0  # orphans' events refused for good, or dropped
        self._giveups = 0  # attempts that ended with events left on disk, for flush()
        self._flush_requests = 0  # flush() calls, each worth an attempt during a backoff

    @property
    def host(self) -> Host:
        assert self._host is not None, "attach() first"
        return self._host

    def attach(self, pipeline: Host) -> None:
        if pipeline.sync_mode:
            raise ValueError(
                "spool_path cannot be combined with sync_mode=True: sync_mode delivers on the "
                "caller's thread, the spool is written by the worker thread"
            )
        self._host = pipeline
        # At once, not on the first event: events left by earlier processes are
        # delivered even if this one logs nothing.
        pipeline.start()

    def _settle(self, *, recovered: int = 0, recovered_lost: int = 0, **counts: Any) -> None:
        ledger = self.host.ledger
        if recovered or recovered_lost:
            with ledger.lock:  # before the counts below, whose notify wakes flush()
                self._recovered += recovered
                self._recovered_lost += recovered_lost
        ledger.settle(**counts)

    # ------------------------------------------------------------------ the spool

    def _report_losses(self, losses: List[SpoolError], lost_own: int) -> None:
        host = self.host
        for error in losses:
            _report.warn(f"spool-{host.serial}", f"spool: {error.reason}")
            host.callbacks.lost(error)
        reported = sum(error.count for error in losses)
        self._settle(dropped=lost_own, recovered_lost=max(reported - lost_own, 0))

    def _close_spool(self) -> None:
        """Release the spool; what it still holds is left for the next process."""
        host = self.host
        try:
            left = self._counted.close()
        except SpoolError as error:  # pragma: no cover - close only releases files
            _report.warn(f"spool-close-{host.serial}", f"spool: {error.reason}")
            return
        if left:
            plural = "s" if left != 1 else ""
            _report.warn(
                f"spool-left-{host.serial}",
                f"{left} event{plural} left in the spool at {self.spool.directory} "
                "for the next process to deliver",
            )

    # ------------------------------------------------------------------ worker side

    def begin(self) -> None:
        if self._spool_on and not self._spool_opened.is_set():
            self._open_spool()

    def work(self) -> None:
        if self._spool_on:
            self._store_queued()
        else:
            self.host.drain()

    def end(self) -> None:
        """At close: let the sender do what it can by the deadline."""
        host = self.host
        with host.ledger.lock:
            self._writer_done = True
        self._send_wake.set()
        sender = self._sender
        if sender is not None:
            sender.join(max(host.deadline.at + CLOSE_GRACE / 2 - time.monotonic(), 0.0))
            if sender.is_alive():
                return  # still in a request: its files stay locked until the process ends
        self._close_spool()
        host.transport.close()

    def _open_spool(self) -> None:
        """Open the spool and claim orphans, or fall back to memory for good."""
        host = self.host
        try:
            self._counted.do(lambda spool: spool.open())
        except SpoolError as error:
            self._spool_on = False
            self._spool_opened.set()  # before the callback, which may call flush()
            _report.warn(
                f"spool-open-{host.serial}",
                f"spool: {error.reason}; keeping events in memory",
            )
            host.callbacks.lost(error)
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
        host = self.host
        while True:
            items = host.take(max(host.batch_size, SPOOL_CHUNK))
            if not items:
                return
            batch = host.encode_all(items)
            if batch.parts:
                try:
                    self._counted.append(batch.parts)
                except SpoolError as error:  # nothing was stored (disk full, I/O error)
                    _report.warn(
                        f"spool-write-{host.serial}",
                        f"spool: {error.reason}; sending these events from memory",
                    )
                    host.send_cut(batch.messages, batch.parts)
            ledger = host.ledger
            with ledger.changing():
                self._stored += len(items)
                ledger.dropped_worker += batch.dropped
                ledger.filtered += batch.filtered
            self._send_wake.set()

    # ------------------------------------------------------------------ sender side

    def _run_sender(self) -> None:
        leave_signals_to_other_threads()
        with marked_busy():
            self._sender_loop()

    def _sender_loop(self) -> None:
        host = self.host
        idle = max(host.flush_interval, self.spool.rescan_interval)  # orphans are looked for then
        backoff = _Backoff()
        flush_seen = 0
        while True:
            try:
                wait = max(backoff.retry_at - time.monotonic(), 0.0) if backoff.outages else idle
                self._send_wake.wait(wait)
                self._send_wake.clear()
                with host.ledger.lock:
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
                _report.warn(f"sender-{host.serial}", f"sender error {error_text(exc)}")
                with host.ledger.lock:
                    if self._writer_done:
                        return
                self._note_outage(backoff, None, 0)

    def _send_spooled(self, backoff: _Backoff) -> None:
        """Send batches from the spool, oldest first, until it is empty or the receiver fails."""
        host = self.host
        while True:
            # Rows are read when they can be sent at once: a spool bound may delete them
            # while the pipeline waits out an outage.
            if not host.transport.backoff.wait_resumed(lambda: host.deadline.at):
                return
            try:
                rows, own = self._counted.do(self._read_batch)
            except SpoolError as error:
                _report.warn(f"spool-read-{host.serial}", f"spool: {error.reason}")
                self._note_outage(backoff, None, 0)
                return
            if not rows:
                return
            outcomes = host.deliver([data for _, data in rows])
            kept: Optional[DeliveryError] = None
            kept_count = 0
            stuck = 0
            for start, end, outcome in outcomes:
                if isinstance(outcome, DeliveryError) and not _refused_for_good(outcome):
                    kept, kept_count = outcome, kept_count + end - start
                    host.ledger.settle(retries=max(outcome.attempts - 1, 0))
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
                backoff.failed(host.flush_interval)
                return

    def _read_batch(self, spool: Spool) -> Tuple[List[Tuple[SpoolKey, bytes]], Optional[int]]:
        rows = spool.oldest(self.host.batch_size, self.host.max_bytes)
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
        these rows while they were in flight: the counted spool already counted
        and reported those as dropped, so only the rows removed here reach the
        callback and the counts, and no event is both dropped and delivered.
        """
        host = self.host
        try:
            removed = set(self._counted.remove([key for key, _ in rows], own))
        except SpoolError as error:  # the rows stay on disk: sent again, deduplicated on messageId
            _report.warn(f"spool-remove-{host.serial}", f"spool: {error.reason}")
            removed = set()
        settled = [row for row in rows if row[0] in removed]
        own_removed = sum(1 for key, _ in settled if key[0] == own)
        other_removed = len(settled) - own_removed
        retries = max(outcome.attempts - 1, 0)
        if settled:
            host.callbacks.sent(lambda: _decode(settled), outcome)
        elif not isinstance(outcome, Response):
            _report.warn(f"failed-{host.serial}", outcome.reason)
        if isinstance(outcome, Response):
            self._settle(
                delivered=own_removed, recovered=other_removed, retries=retries, batch=bool(settled)
            )
        else:
            self._settle(
                failed=own_removed,
                recovered_lost=other_removed,
                retries=retries,
                batch=bool(settled),
            )
        return len(rows) - len(settled)

    def _note_outage(self, backoff: _Backoff, error: Optional[DeliveryError], count: int) -> None:
        """Events stay on disk: try again after a backoff, so that an outage does not spin."""
        host = self.host
        delay = backoff.failed(host.flush_interval)
        with host.ledger.changing():
            self._giveups += 1
            closing = self._writer_done
        if error is not None and not closing:
            plural = "s" if count != 1 else ""
            _report.warn(
                f"spool-outage-{host.serial}",
                f"{error.reason}; {count} message{plural} kept in the spool, "
                f"next attempt in {delay:.2f}s",
            )

    # ------------------------------------------------------------------ caller side

    def _spool_ready(self, end: float) -> bool:
        """Wait (until ``end``) for the worker to open the spool; True when spool mode is on."""
        host = self.host
        if host.inline:
            return False
        if not host.closed:
            host.start()
        if threading.get_ident() in busy_threads:  # the worker itself, or a callback: no waiting
            return self._spool_on and self._spool_opened.is_set()
        while not self._spool_opened.is_set():
            if not host.worker_alive():
                break
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            self._spool_opened.wait(min(remaining, 0.5))
        return self._spool_on and self._spool_opened.is_set()

    def _orphans_held(self) -> int:
        total, _ = self.spool.pending()
        return max(total - self.spool.own()[1], 0)

    def flush(self, timeout: Optional[float]) -> bool:
        """Wait until everything queued before the call is delivered or failed.

        It also waits for the orphans' events this process holds, and events stay
        on disk during an outage: without a timeout it then returns False once a
        request failed for a retryable reason (as without a spool), with one at the
        timeout.
        """
        host = self.host
        end = end_of(timeout)
        if not self._spool_ready(end):
            return host.wait_settled(end)
        ledger = host.ledger
        with ledger.lock:
            goal = host.goal()
            giveups = self._giveups
            orphans_settled = self._recovered + self._recovered_lost
            self._flush_requests += 1  # one attempt now, even during an outage's backoff
        orphans = orphans_left = self._orphans_held()
        outage_seen = outage_since_now(host.transport)
        host.wake()
        self._send_wake.set()

        def probe() -> None:  # outside the ledger's lock: the spool's lock is never taken under it
            nonlocal orphans_left
            orphans_left = self._orphans_held()

        def done() -> bool:
            return ledger.settled_count() >= goal and (
                orphans_left == 0
                or self._recovered + self._recovered_lost - orphans_settled >= orphans
            )

        def outage() -> bool:  # without a timeout, flush does not wait out an outage
            return self._giveups > giveups or outage_seen()

        return host.wait(done, end, probe=probe, gave_up=outage if timeout is None else None)

    def persist(self, timeout: Optional[float]) -> bool:
        """Wait until everything queued before the call is in the spool (or settled).

        True then: the events survive the process being killed from now on. False
        at the timeout. When the spool could not be opened this is ``flush``.
        """
        host = self.host
        end = end_of(timeout)
        if not self._spool_ready(end):
            return host.wait_settled(end)
        ledger = host.ledger

        def done() -> bool:
            return self._stored >= goal or ledger.settled_count() >= goal

        with ledger.lock:
            goal = host.goal()
            if done():
                return True  # the worker is not woken: nothing to store
        host.wake()
        return host.wait(done, end)

    # ------------------------------------------------------------------ close, fork, stats

    def closing(self) -> None:
        self._send_wake.set()

    def release(self) -> None:
        sender = self._sender
        if sender is None or not sender.is_alive():
            self._close_spool()  # the worker did, unless it never ran

    def holds_nothing(self) -> bool:
        return self._counted.own_on_disk == 0

    def after_fork_in_child(self) -> None:
        if self._pid == os.getpid():
            return
        self._fresh_state()
        self._counted.after_fork_in_child()

    def stats(self) -> Dict[str, int]:
        """The spool's counts: ``spooled`` (events in the spool files this process holds,
        its own and orphans'), ``recovered`` (orphans' events delivered) and
        ``recovered_lost`` (orphans' events refused for good or dropped by a bound).
        This process's events waiting on disk count as pending; orphans' events are not
        part of ``enqueued``."""
        spooled = self.spool.pending()[0]
        with self.host.ledger.lock:
            return {
                "spooled": spooled,
                "recovered": self._recovered,
                "recovered_lost": self._recovered_lost,
            }


def _refused_for_good(error: DeliveryError) -> bool:
    """A 4xx (or other non-retryable status): the receiver will never take these."""
    return error.status is not None and not is_retryable(error.status)


def _decode(rows: Sequence[Tuple[SpoolKey, bytes]]) -> List[Any]:
    """Stored bytes back to message dicts, for the callbacks."""
    out: List[Any] = []
    for _, data in rows:
        try:
            out.append(decode_json(data))
        except ValueError:  # pragma: no cover - the worker only stores what it encoded
            out.append(data.decode("utf-8", "replace"))
    return out
