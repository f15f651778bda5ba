"""Sending a pipeline's batches: encode, cut by bytes, POST, settle; and the extra senders.

The worker thread sends the batches it takes itself, so a quiet application
has one thread and one connection. While a backlog is queued it starts extra
sender threads, up to ``max_in_flight - 1`` of them, each taking full batches
off the queue while there are any (all of it for a flush or the close), then
ending: up to ``max_in_flight`` requests are in flight at once, and order
across concurrent batches is not kept (each message carries its timestamp).

Where no thread can run (uWSGI without threads) the threads that log send instead,
through :meth:`Sender.send_if_due`: one request per call, never a backoff sleep,
so that a receiver that is down or slow costs a log call one short request at most.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from . import _report, _threads
from ._delivery import Batch
from ._errors import DeliveryError, Filtered, InvalidMessage, SegmentError
from ._json import error_text
from ._lifecycle import leave_signals_to_other_threads, marked_busy
from ._message import Encode
from ._outcomes import Callbacks, Ledger, messages_of, transport_failure
from ._timestamps import format_timestamp
from ._transport import (
    BACKOFF_BASE,
    Deadline,
    Outcome,
    Response,
    Transport,
    batch_body,
    cut_by_bytes,
    is_retryable,
    retry_after,
)

# Without threads a log call sends on the request's thread: it waits at most this long
# for the receiver (or ``timeout``, when shorter) before the batch waits for a later call.
DEFERRED_TIMEOUT = 2.0


class Held:
    """Part of a batch sent from the caller's thread that the receiver has not taken yet:
    kept encoded (the same messages, ``messageId`` included, go again) with its attempts."""

    __slots__ = ("attempts", "messages", "parts", "since")

    def __init__(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None:
        self.messages = messages
        self.parts = parts
        self.attempts = 0
        self.since = 0.0  # monotonic time of the first attempt: retry_budget counts from it

    def __repr__(self) -> str:
        return f"<Held {len(self.parts)} messages, {self.attempts} attempts>"

    def halves(self) -> Tuple[Held, Held]:
        middle = len(self.parts) // 2
        first = Held(self.messages[:middle], self.parts[:middle])
        second = Held(self.messages[middle:], self.parts[middle:])
        for half in (first, second):
            half.attempts, half.since = self.attempts, self.since
        return first, second


class Sender:
    """Turns taken items into requests and settles each one, on any sending thread.

    :param take: takes the next batch off the queue (empty when there is none).
    :param more_due: whether another batch should go now (a full one is queued, or a
        flush or the close waits); the extra senders take only then.
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
        more_due: Callable[[], bool],
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
        self._more_due = more_due
        self._batch_size = batch_size
        self._extra_limit = max(max_in_flight - 1, 0)
        self._lock = threading.Lock()
        self._threads: List[_threads.WorkerThread] = []
        self._made_with = made_with  # the pipeline's wake-up Event: see _threads.worker_thread
        self.can_start = True  # False: the interpreter refuses new threads, the worker goes alone
        # Without threads (see send_if_due): taken, not accepted yet, oldest first; when the
        # next request is due; no request before the backoff's next probe; and one thread at
        # a time sending (reentrant for a callback that closes the pipeline).
        self.held: Deque[Held] = deque()
        self._interval = 0.0
        self._due = 0.0
        self._paused = 0.0
        self._sending_here = threading.RLock()

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
                items = self._take() if self._more_due() else []  # full batches only
                if not items:
                    return
                if self._more_due():  # the backlog grew while every sender was in a request
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
        """Encode, cut by bytes and deliver ``items``; settle each one.

        ``items`` is emptied once encoded: a batch that waits out an outage holds its
        messages' bytes, not the captures they were made of as well.
        """
        batch = self.encode_all(items)
        items.clear()
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
        self._send_outcomes(messages, parts, self.deliver(parts))

    def _send_outcomes(
        self,
        messages: List[Optional[Dict[str, Any]]],
        parts: List[bytes],
        outcomes: List[Outcome],
    ) -> None:
        # Callbacks first, counts second: once flush() returns, the callbacks have run.
        for start, end, outcome in outcomes:
            retries = max(outcome.attempts - 1, 0)
            data = functools.partial(messages_of, messages[start:end], parts[start:end])
            self.callbacks.sent(data, outcome)
            if isinstance(outcome, DeliveryError):
                self.ledger.settle(failed=end - start, retries=retries)
            else:
                self.ledger.settle(delivered=end - start, retries=retries)

    # ------------------------------------------------------------------ without threads

    def defer(self, flush_interval: float) -> None:
        """No thread can run: the threads that log send, through :meth:`send_if_due`."""
        self._interval = flush_interval
        self._due = time.monotonic() + flush_interval

    def send_if_due(self) -> None:
        """Send one request from this thread when a batch is full or ``flush_interval``
        passed, unless the receiver asked (or the backoff says) to wait.

        One request per call at most, with a short timeout and no backoff sleep:
        the thread that logs serves a request. What the receiver did not take stays
        held for a later call, and for the exit close.
        """
        now = time.monotonic()
        if now < self._due and (self._queued() < self._batch_size or now < self._paused):
            return
        if not self._sending_here.acquire(blocking=False):
            return  # another thread is sending: it sets the next due time
        try:
            with marked_busy():
                delay = self.send_one_here()
            now = time.monotonic()
            if delay is not None:  # the receiver did not take it: not before the backoff says
                self._due = self._paused = now + delay
            elif self.held:  # the rest of a batch split on 413 goes at the next call
                self._due, self._paused = now, 0.0
            else:  # the next batch when it is full, or at the interval
                self._due, self._paused = now + self._interval, 0.0
        finally:
            self._sending_here.release()

    def send_all_held(self) -> None:
        """Deliver every held slice on this thread with the transport's retries (flush, the
        exit close)."""
        with self._sending_here, marked_busy():
            while self.held:
                self.send_held()

    def send_one_here(self) -> Optional[float]:
        """One request on the caller's thread, for the oldest held slice or the next batch.

        Never sleeps out a backoff: a slice the receiver did not take (down, slow,
        asking to wait) stays held for a later call. None when the request was answered
        (or there was nothing to send); otherwise the seconds before the next one may go.
        """
        if not self.held and not self._hold(self._take()):
            return None
        held = self.held[0]
        transport = self.transport
        end = time.monotonic() + min(transport.timeout, DEFERRED_TIMEOUT)
        epoch = transport.backoff.wait_turn(lambda: min(end, self.deadline.at))
        if epoch is None:  # a probe of another thread is out: not this call's turn
            return BACKOFF_BASE
        if not held.attempts:
            held.since = time.monotonic()
        held.attempts += 1
        body = batch_body(held.parts, transport.write_key, format_timestamp(time.time()))
        try:
            answer = transport._post_once(body, max(end - time.monotonic(), 0.001))
        except Exception as exc:  # not a network failure: sending it again would not help
            transport.backoff.release(epoch)
            last = (None, f"{type(exc).__name__}: {exc}")
            reason = "the request could not be made"
            self._settle_held(transport._give_up(reason, len(held.parts), held.attempts, last))
            return None
        return self._answered_here(held, answer, epoch)

    def send_held(self) -> None:
        """Deliver the oldest held slice with the transport's retries (flush, exit close)."""
        held = self.held.popleft()
        if held.attempts:  # the requests made for it from the callers' threads
            self.ledger.settle(retries=held.attempts)
        self._send_outcomes(held.messages, held.parts, self.deliver(held.parts))

    def _hold(self, items: List[Any]) -> bool:
        """Encode taken ``items`` into held slices that each fit a request; False if none."""
        if not items:
            return False
        batch = self.encode_all(items)
        if batch.dropped or batch.filtered:
            self.ledger.settle(dropped=batch.dropped, filtered=batch.filtered)
        for start, end in cut_by_bytes(batch.parts, self.max_bytes):
            self.held.append(Held(batch.messages[start:end], batch.parts[start:end]))
        return bool(self.held)

    def _answered_here(
        self, held: Held, answer: Tuple[Optional[int], Dict[str, str], str], epoch: int
    ) -> Optional[float]:
        """Settle, split or keep the held slice after its request; as :meth:`send_one_here`."""
        transport = self.transport
        backoff = transport.backoff
        status, headers, text = answer
        if status is not None and (200 <= status < 300 or not is_retryable(status)):
            backoff.answered(epoch)
        if status is not None and 200 <= status < 300:
            self._settle_held(Response(status, headers, text, held.attempts))
            return None
        if status == 413 and len(held.parts) > 1:
            self.held.popleft()
            self.held.extendleft(reversed(held.halves()))
            return 0.0  # each half goes at the next call
        reason = transport._no_retry_reason(status, held.attempts)
        if reason is None:  # retryable, and max_retries not reached
            asked = retry_after(headers, cap=backoff.max_retry_after)
            delay = backoff.failed(epoch, BACKOFF_BASE, asked if status in (429, 503) else None)
            budget = transport.retry_budget
            if budget is None or time.monotonic() - held.since < budget:
                return delay
            reason = f"retry budget of {budget:g}s used up"
        last = (status, text)
        self._settle_held(
            transport._give_up(reason or "rejected", len(held.parts), held.attempts, last)
        )
        return None

    def _settle_held(self, outcome: Union[Response, DeliveryError]) -> None:
        """The oldest held slice ended as ``outcome``: tell the callbacks, then the ledger."""
        held = self.held.popleft()
        self._send_outcomes(held.messages, held.parts, [(0, len(held.parts), outcome)])
