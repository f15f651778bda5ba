"""Sending a pipeline's batches: encode, cut by bytes, POST, settle; and the extra senders.

The worker thread sends the batches it takes itself, so a quiet application
has one thread and one connection. While a backlog is queued it starts extra
sender threads, up to ``max_in_flight - 1`` of them, each taking full batches
off the queue until it is empty, then ending: up to ``max_in_flight``
requests are in flight at once, and order across concurrent batches is not
kept (each message carries its timestamp).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from . import _report, _threads
from ._delivery import Batch
from ._errors import DeliveryError, Filtered, InvalidMessage, SegmentError
from ._json import error_text
from ._lifecycle import leave_signals_to_other_threads, marked_busy
from ._message import Encode
from ._outcomes import Callbacks, Ledger, messages_of, transport_failure
from ._transport import Deadline, Outcome, Transport, cut_by_bytes


class Sender:
    """Turns taken items into requests and settles each one, on any sending thread.

    :param take: takes the next batch off the queue (empty when there is none).
    :param max_in_flight: requests at once while a backlog exists.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        encode: Encode,
        ledger: Ledger,
        callbacks: Callbacks,
        deadline: Deadline,
        take: Callable[[], List[Any]],
        queued: Callable[[], int],
        batch_size: int,
        max_in_flight: int,
        made_with: object = None,
    ) -> None:
        self.transport = transport
        self.encode = encode
        self.ledger = ledger
        self.callbacks = callbacks
        self.deadline = deadline
        self.max_bytes = transport.max_parts_bytes
        self._take = take
        self._queued = queued
        self._batch_size = batch_size
        self._extra_limit = max(max_in_flight - 1, 0)
        self._lock = threading.Lock()
        self._threads: List[_threads.WorkerThread] = []
        self._made_with = made_with  # the pipeline's wake-up Event: see _threads.worker_thread
        self.can_start = True  # False: the interpreter refuses new threads, the worker goes alone

    # ------------------------------------------------------------------ extra senders

    def help_with_backlog(self) -> None:
        """Something is still queued after a take: start a sender thread for each batch of
        it, up to ``max_in_flight - 1`` running."""
        if not self._extra_limit or not self.can_start or not _threads.threads_run():
            return
        backlog = -(-self._queued() // self._batch_size)  # batches, rounded up
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            wanted = min(backlog, self._extra_limit - len(self._threads))
            for _ in range(wanted):
                thread = _threads.worker_thread(
                    self._run, "segmentio-logging-sender", made_with=self._made_with
                )
                try:
                    thread.start()
                except RuntimeError:  # interpreter shutdown: the worker sends alone
                    self.can_start = False
                    return
                self._threads.append(thread)

    def in_flight_threads(self) -> int:
        """Extra sender threads still running."""
        with self._lock:
            return sum(1 for thread in self._threads if thread.is_alive())

    def join(self, end: float) -> bool:
        """Wait (until ``end``) for the extra senders to finish; True when none is left."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(end - time.monotonic(), 0.0))
        return not any(thread.is_alive() for thread in threads)

    def _run(self) -> None:
        leave_signals_to_other_threads()
        with marked_busy():
            while True:
                self.wait_resumed()
                items = self._take()
                if not items:
                    return
                if self._queued():  # the backlog grew while every sender was in a request
                    self.help_with_backlog()
                try:
                    self.process(items)
                except Exception as exc:  # pragma: no cover - a bug must not lose the rest
                    _report.warn(
                        f"sender-{self.callbacks.serial}", f"sender error {error_text(exc)}"
                    )

    def wait_resumed(self) -> None:
        """While the receiver is down, leave the events queued until a request may go:
        a full queue then drops what is logged (counted, reported) instead of senders
        holding batch after batch. At the close deadline it waits no more: what is left
        is then given up by the transport, reported."""
        self.transport.backoff.wait_resumed(lambda: self.deadline.at)

    # ------------------------------------------------------------------ one batch

    def encode_all(self, items: List[Any]) -> Batch:
        """Encode ``items``; those that cannot become a message are reported, not counted."""
        messages: List[Optional[Dict[str, Any]]] = []
        parts: List[bytes] = []
        dropped = filtered = 0
        encode = self.encode
        for item in items:
            try:
                message, data = encode(item)
            except Filtered:
                filtered += 1
                continue
            except Exception as exc:
                if not isinstance(exc, SegmentError):  # a bug or a hostile object: report
                    reason = f"could not build the message: {error_text(exc)}"
                    exc = InvalidMessage(reason)
                self.refuse(item, exc)
                dropped += 1
                continue
            messages.append(message)
            parts.append(data)
        return Batch(messages, parts, dropped, filtered)

    def refuse(self, item: Any, error: SegmentError, *, warn: bool = True) -> None:
        """Report an item that will not be sent: on stderr (rate-limited) and to on_failure."""
        if warn:
            _report.warn(f"refused-{self.callbacks.serial}", f"message not sent: {error.reason}")
        self.callbacks.refused([item], error)

    def process(self, items: List[Any]) -> None:
        """Encode, cut by bytes and deliver ``items``; settle each one."""
        batch = self.encode_all(items)
        self.send_cut(batch.messages, batch.parts)
        # Counted last: flush() compares counts, and counting these early would let
        # it return before the earlier items of this batch were sent.
        if batch.dropped or batch.filtered:
            self.ledger.settle(dropped=batch.dropped, filtered=batch.filtered)

    def send_cut(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        """Deliver ``parts`` in requests that each fit the request size; settle them."""
        for start, end in cut_by_bytes(parts, self.max_bytes):
            self._send(messages[start:end], parts[start:end])

    def deliver(self, parts: List[bytes]) -> List[Outcome]:
        """POST ``parts`` through the transport; a transport bug becomes a failed outcome."""
        try:
            return self.transport.deliver(parts, self.deadline)
        except Exception as exc:  # a transport bug must settle the batch, not kill the worker
            return [(0, len(parts), transport_failure(len(parts), exc))]

    def _send(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        # Callbacks first, counts second: once flush() returns, the callbacks have run.
        for start, end, outcome in self.deliver(parts):
            retries = max(outcome.attempts - 1, 0)
            data = functools.partial(messages_of, messages[start:end], parts[start:end])
            self.callbacks.sent(data, outcome)
            if isinstance(outcome, DeliveryError):
                self.ledger.settle(failed=end - start, retries=retries)
            else:
                self.ledger.settle(delivered=end - start, retries=retries)
