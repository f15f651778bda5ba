"""What became of each message: the counters, and the user's callbacks.

The last step of the data flow. A pipeline and its delivery strategy both settle
items here: the :class:`Ledger` counts them under one lock (``flush`` waits on
its condition), :class:`Callbacks` tells ``on_success`` and ``on_failure``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

from . import _report
from ._errors import ClosedError, DeliveryError, QueueFull, SegmentError
from ._json import decode_json, error_text, safe_str
from ._lifecycle import marked_busy
from ._transport import Response

Callback = Callable[[Any, Any], Any]


def messages_of(messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> List[Any]:
    """The messages for a callback: those only encoded are decoded from their bytes."""
    return [
        message if message is not None else decode_json(data)
        for message, data in zip(messages, parts)
    ]


class Ledger:
    """The pipeline's counters. Every field is written under :attr:`lock`."""

    __slots__ = (
        "batches",
        "changed",
        "delivered",
        "dropped_caller",
        "dropped_worker",
        "failed",
        "filtered",
        "lock",
        "retries",
        "taken",
        "unreported_full",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified whenever a count moves
        self.taken = 0  # items the worker took off the queue (or swept)
        self.delivered = 0
        self.failed = 0
        self.dropped_worker = 0  # not encoded, swept at close, or own events a spool bound took
        self.dropped_caller = 0  # refused before they were queued (full, closed, invalid)
        self.filtered = 0  # before_send returned None: not sent, and no error
        self.unreported_full = 0  # full-queue drops not yet told to on_failure
        self.batches = 0
        self.retries = 0  # requests sent again

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the lock for a change that waits depend on, then wake the waiters."""
        with self.lock:
            yield
            self.changed.notify_all()

    def settle(
        self,
        *,
        delivered: int = 0,
        failed: int = 0,
        dropped: int = 0,
        filtered: int = 0,
        retries: int = 0,
        batch: bool = False,
    ) -> None:
        """Count items that reached their end (and requests retried), waking waiters."""
        with self.changing():
            self.delivered += delivered
            self.failed += failed
            self.dropped_worker += dropped
            self.filtered += filtered
            self.retries += retries
            if delivered or failed or batch:
                self.batches += 1

    def settled_count(self) -> int:
        """Under the lock: items that reached their end (delivered, failed, dropped, filtered)."""
        return self.delivered + self.failed + self.dropped_worker + self.filtered

    def counts(self, queued: int) -> Dict[str, int]:
        """Under the lock: the counters as ``stats()`` gives them, ``queued`` still queued."""
        in_flight = self.taken - self.settled_count()
        return {
            "enqueued": self.taken + queued + self.dropped_caller,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped_worker + self.dropped_caller,
            "filtered": self.filtered,
            "pending": queued + in_flight,
            "queued": queued,
            "batches": self.batches,
            "retries": self.retries,
        }


class Callbacks:
    """``on_success`` and ``on_failure`` of one pipeline, and the warnings beside them."""

    __slots__ = ("describe", "on_failure", "on_success", "serial")

    def __init__(
        self,
        serial: int,
        describe: Callable[[Any], Any],
        on_success: Optional[Callback],
        on_failure: Optional[Callback],
    ) -> None:
        self.serial = serial  # keys the rate-limited warnings of this pipeline
        self.describe = describe
        self.on_success = on_success
        self.on_failure = on_failure

    def sent(self, data: Callable[[], List[Any]], outcome: Any) -> None:
        """A request ended: ``outcome`` is a Response or a DeliveryError for ``data()``."""
        if isinstance(outcome, Response):
            if self.on_success is not None:
                call(self.on_success, data(), outcome)
            return
        _report.warn(f"failed-{self.serial}", outcome.reason)
        if self.on_failure is not None:
            call(self.on_failure, data(), outcome)

    def refused(self, items: List[Any], error: SegmentError) -> None:
        """Report items that will not be sent, as ``describe`` shows them to callbacks."""
        if self.on_failure is None:
            return
        try:
            data = [self.describe(item) for item in items]
        except Exception:  # describing must not lose the report
            data = list(items)
        call(self.on_failure, data, error)

    def full(self, count: int, max_queue_size: int) -> None:
        """Tell ``on_failure`` that a full queue dropped ``count`` items."""
        error = QueueFull(
            f"{count} message{'s' if count != 1 else ''} dropped: the queue already held "
            f"max_queue_size={max_queue_size} messages",
            count=count,
        )
        call(self.on_failure, [], error)

    def lost(self, error: SegmentError) -> None:
        """Tell ``on_failure`` of a failure outside any request: events a spool bound or a
        corrupt file took, or a spool that could not be opened (events then stay in memory)."""
        call(self.on_failure, [], error)


def call(callback: Optional[Callback], data: Any, arg: Any) -> None:
    """Run a user callback; what it raises is reported, never propagated."""
    if callback is None:
        return
    try:
        with marked_busy():  # what the callback logs is not fed back
            callback(data, arg)
    except Exception as exc:
        name = safe_str(getattr(callback, "__qualname__", None) or safe_str(callback))
        _report.warn(f"callback-{name}", f"callback {name} raised {error_text(exc)}")


def sweep(queue: Deque[Any], ledger: Ledger, callbacks: Callbacks, why: str) -> None:
    """Settle what is still in ``queue`` as dropped, reported with ``why`` (closing)."""
    with ledger.lock:
        left = list(queue)
        queue.clear()
        ledger.taken += len(left)
    if left:
        plural = "s" if len(left) != 1 else ""
        error = ClosedError(f"{len(left)} message{plural} {why}", count=len(left))
        _report.warn(f"swept-{callbacks.serial}", error.reason)
        callbacks.refused(left, error)
        ledger.settle(dropped=len(left))


def report_unanswered(ledger: Ledger, serial: int) -> None:
    """At the close deadline: say how many messages are in requests not yet answered."""
    with ledger.lock:  # what was swept is settled (dropped) by now
        in_flight = ledger.taken - ledger.settled_count()
    if in_flight > 0:
        _report.warn(
            f"in-flight-{serial}",
            f"{in_flight} message{'s' if in_flight != 1 else ''} in a request the "
            "receiver had not answered at the close deadline: outcome unknown",
        )


def transport_failure(count: int, exc: Exception) -> DeliveryError:
    """The outcome of a request whose transport raised (a bug): the batch fails, the worker
    goes on."""
    return DeliveryError(
        f"{count} message{'s' if count != 1 else ''} not delivered: "
        f"the transport raised {error_text(exc)}",
        count=count,
        attempts=0,
    )
