"""HTTP delivery of encoded batches: ``POST {host}/v1/batch`` over one urllib3 pool.

Knows nothing of logging. Retries 5xx (but 501 and 505), 408, 429 and network
errors for as long as the receiver is down, through the pipeline-wide
:class:`~segmentio_logging._backoff.Backoff` (one probe at a time, exponential
and jittered; ``Retry-After`` on 429 and 503 pauses every sender), splits a
batch on 413, and never waits past its deadline.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import encodings.idna  # noqa: F401  (imported lazily by socket code; a fork mid-import breaks it)
import json
import math
import platform
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import urllib3
from urllib3.exceptions import HTTPError

from ._backoff import DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRY_AFTER, Backoff
from ._connection import Route, refusal, route_for, route_from_options
from ._errors import DeliveryError
from ._options import Options
from ._segment import MAX_BATCH_BYTES
from ._timestamps import format_timestamp
from ._version import __version__

BATCH_PATH = "/v1/batch"
GZIP_LEVEL = 1  # JSON batches: level 6 costs four times the CPU for a few % smaller bodies
BACKOFF_BASE = 0.5  # seconds before the first probe, at most; doubles each time
# With sync_mode a call delivers on the caller's thread: unless retry_budget is set, it
# waits this long for a receiver that is down, then the batch fails (reported).
SYNC_RETRY_BUDGET = 60.0
MAX_BODY_TEXT = 2_000

USER_AGENT = (
    f"segmentio-logging/{__version__} (python {platform.python_version()}; "
    f"urllib3 {getattr(urllib3, '__version__', '?')})"
)


class Response:
    """What ``on_success`` receives: the receiver's answer to one batch."""

    __slots__ = ("attempts", "headers", "status", "text")

    def __init__(self, status: int, headers: Mapping[str, str], text: str, attempts: int) -> None:
        self.status = status
        self.headers = dict(headers)
        self.text = text
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"Response(status={self.status}, attempts={self.attempts}, text={self.text[:80]!r})"


# One settled slice of a batch: [start, end) and how it ended.
Outcome = Tuple[int, int, Union[Response, DeliveryError]]


class Deadline:
    """A time limit that another thread may bring forward (shutdown), waking waiters."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._at = math.inf
        self._also: List[Callable[[], None]] = []  # other waits that end at this deadline

    @property
    def at(self) -> float:
        return self._at

    def also_wake(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` too when the deadline is brought forward (a backoff's waiters)."""
        with self._cond:
            if wake not in self._also:
                self._also.append(wake)

    def set(self, at: float) -> None:
        with self._cond:
            self._at = min(self._at, at)
            self._cond.notify_all()
            also = list(self._also)
        for wake in also:
            wake()

    def sleep_until(self, wake_at: float, limit: Callable[[], float]) -> bool:
        """Sleep until ``wake_at``; False as soon as ``wake_at`` falls past ``limit()``."""
        with self._cond:
            while True:
                now = time.monotonic()
                if wake_at > limit():
                    return False
                if now >= wake_at:
                    return True
                self._cond.wait(wake_at - now)


def is_retryable(status: Optional[int]) -> bool:
    """Network errors, 408, 429 and 5xx other than 501 and 505."""
    if status is None:
        return True
    if status in (408, 429):
        return True
    return 500 <= status <= 599 and status not in (501, 505)


def retry_after(
    headers: Mapping[str, str],
    now: Optional[float] = None,
    *,
    cap: float = DEFAULT_MAX_RETRY_AFTER,
) -> Optional[float]:
    """Seconds a ``Retry-After`` header asks for (delta seconds or HTTP date), at most ``cap``."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def batch_envelope(write_key: Optional[str], sent_at: str) -> bytes:
    """The bytes that close a batch body after its messages."""
    tail: Dict[str, Any] = {"sentAt": sent_at}
    if write_key:
        tail["writeKey"] = write_key
    return b"]," + json.dumps(tail, separators=(",", ":"))[1:].encode("utf-8")


def batch_body(parts: List[bytes], write_key: Optional[str], sent_at: str) -> bytes:
    """``{"batch": [...], "sentAt": ..., "writeKey": ...}`` from encoded messages, in one pass."""
    return b'{"batch":[' + b",".join(parts) + batch_envelope(write_key, sent_at)


def envelope_size(write_key: Optional[str]) -> int:
    """Bytes a batch body adds to its messages (an upper bound)."""
    return len(b'{"batch":[') + len(batch_envelope(write_key, "2026-01-01T00:00:00.000Z"))


def cut_by_bytes(parts: List[bytes], max_bytes: int) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` slices of ``parts`` whose bodies (one comma apiece) fit ``max_bytes``.

    A part larger than ``max_bytes`` alone is a slice of its own: the transport
    reports what the receiver says of it.
    """
    start, size = 0, 0
    for index, data in enumerate(parts):
        if index > start and size + len(data) + 1 > max_bytes:
            yield start, index
            start, size = index, 0
        size += len(data) + 1
    if start < len(parts):
        yield start, len(parts)


class Transport:
    """Sends batches of encoded messages to one Segment-compatible host.

    Several threads may call :meth:`deliver` at once (up to ``max_in_flight``
    keep their connection); they share one :class:`~segmentio_logging._backoff.Backoff`,
    so that while the receiver is down a single probe is in flight.
    """

    def __init__(
        self,
        *,
        host: str,
        write_key: Optional[str],
        gzip: bool = True,
        timeout: float = 15.0,
        max_retries: Optional[int] = None,
        retry_budget: Optional[float] = None,
        max_in_flight: int = 1,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        route: Optional[Route] = None,
    ) -> None:
        self.url = host.rstrip("/") + BATCH_PATH
        # Proxy and TLS (the environment's when not given), decided once: see _connection.
        self.route = route if route is not None else route_for(self.url)
        self.write_key = write_key
        self.gzip = gzip
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_budget = retry_budget
        self.max_in_flight = max_in_flight
        self.backoff = Backoff(max_backoff, max_retry_after)
        # What the messages of one request may take, once the envelope is counted.
        self.max_parts_bytes = MAX_BATCH_BYTES - envelope_size(write_key)
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Authorization": "Basic "
            + base64.b64encode(f"{write_key or ''}:".encode()).decode("ascii"),
        }
        if gzip:
            self.headers["Content-Encoding"] = "gzip"
        self._path = urllib3.util.parse_url(self.url).request_uri
        self._pool = self._new_pool()

    def __repr__(self) -> str:
        return f"Transport(url={self.url!r}, gzip={self.gzip})"

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        # One keep-alive pool for the one host, through its proxy if it has one: a PoolManager
        # would parse the URL and look the pool up again on every request (about 70 us each).
        # It keeps a connection for each request that may be in flight at once.
        return self.route.new_pool(maxsize=max(self.max_in_flight, 1))

    def reset_after_fork(self) -> None:
        """A child must not share the parent's sockets, nor its outage."""
        self._pool = self._new_pool()
        self.backoff = Backoff(self.backoff.max_backoff, self.backoff.max_retry_after)

    def close(self) -> None:
        """Close idle connections; a later request opens a new one."""
        old, self._pool = self._pool, self._new_pool()
        old.close()

    def post(self, body: bytes, timeout: float) -> Tuple[int, Dict[str, str], str]:
        """One request; raises urllib3's errors for network failures."""
        if self.gzip:
            body = _gzip(body)
        response = self._pool.urlopen(
            "POST",
            self._path,
            body=body,
            headers=self.headers,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            retries=False,
            redirect=False,
            preload_content=True,
        )
        text = response.data[:MAX_BODY_TEXT].decode("utf-8", "replace")
        return response.status, dict(response.headers), text

    def deliver(self, parts: List[bytes], deadline: Optional[Deadline] = None) -> List[Outcome]:
        """Send ``parts`` (encoded messages) and say how each slice of them ended.

        Blocks while the receiver is down, for as long as it takes, but never past
        ``deadline`` (shutdown) nor, when set, past ``max_retries`` retries or
        ``retry_budget`` seconds (shared by the halves of a batch split on 413).
        Never raises: every slice ends as a :class:`Response` or a
        :class:`DeliveryError`, each reported once.
        """
        outcomes: List[Outcome] = []
        if not parts:
            return outcomes
        budget = math.inf if self.retry_budget is None else self.retry_budget
        deadline = deadline or Deadline()
        deadline.also_wake(self.backoff.poke)  # a sender waiting out an outage sees it move
        attempt = _Attempt(self, deadline, time.monotonic() + budget)
        attempt.deliver_range(parts, 0, len(parts), outcomes)
        return outcomes

    def _post_once(
        self, body: bytes, remaining: float
    ) -> Tuple[Optional[int], Dict[str, str], str]:
        """One request within ``remaining`` seconds; a network failure is status None and its text.

        Any other error is raised: the request could not be made (a
        :class:`~segmentio_logging._connection.Refusal` among them: a TLS or proxy refusal).
        """
        try:
            return self.post(body, min(self.timeout, remaining))
        except (HTTPError, OSError) as exc:
            # A certificate that does not verify, a refused client certificate, a proxy that
            # refuses the tunnel: retrying cannot mend them, so they are raised, not retried.
            refused = refusal(exc, self.route)
            if refused is not None:
                raise refused from exc
            return None, {}, f"{type(exc).__name__}: {exc}"

    def _no_retry_reason(self, status: Optional[int], attempts: int) -> Optional[str]:
        """Why a failed request is not tried again (413 here: a single message), or None."""
        if not is_retryable(status) or status == 413:
            return "rejected"
        if self.max_retries is not None and attempts > self.max_retries:
            tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
            return f"gave up after {tries} (max_retries={self.max_retries})"
        return None

    @staticmethod
    def _give_up(
        reason: str, count: int, attempts: int, last: Optional[Tuple[Optional[int], str]]
    ) -> DeliveryError:
        status, text = last if last is not None else (None, "")
        detail = f"HTTP {status}" if status is not None else (text or "not sent")
        return DeliveryError(
            f"{count} message{'s' if count != 1 else ''} not delivered: {reason} ({detail})",
            count=count,
            status=status,
            body=text,
            attempts=attempts,
        )


class _Attempt:
    """The delivery of one batch (and of its halves after a 413): its limits and retries."""

    __slots__ = ("budget_end", "deadline", "transport")

    def __init__(self, transport: Transport, deadline: Deadline, budget_end: float) -> None:
        self.transport = transport
        self.deadline = deadline
        self.budget_end = budget_end

    def limit(self) -> float:
        return min(self.budget_end, self.deadline.at)

    def why_stopped(self) -> str:
        if self.deadline.at <= self.budget_end:
            return "shutdown deadline reached"
        return f"retry budget of {self.transport.retry_budget:g}s used up"

    def deliver_range(self, parts: List[bytes], start: int, end: int, out: List[Outcome]) -> None:
        """Send ``parts[start:end]`` until it is accepted, refused, or a limit is reached."""
        transport = self.transport
        count = end - start
        attempts = 0
        last: Optional[Tuple[Optional[int], str]] = None
        while True:
            epoch = transport.backoff.wait_turn(self.limit)
            remaining = self.limit() - time.monotonic()
            if epoch is None or remaining <= 0:
                if epoch is not None:
                    transport.backoff.release(epoch)  # a probe that does not go: let another
                out.append(
                    (start, end, transport._give_up(self.why_stopped(), count, attempts, last))
                )
                return
            attempts += 1
            try:
                # The body made here is not kept: a batch waiting out an outage holds its parts.
                sent_at = format_timestamp(time.time())
                status, headers, text = transport._post_once(
                    batch_body(parts[start:end], transport.write_key, sent_at), remaining
                )
            except Exception as exc:  # not a network failure: retrying would not help
                transport.backoff.release(epoch)
                reason, last = (
                    "the request could not be made",
                    (None, f"{type(exc).__name__}: {exc}"),
                )
                out.append((start, end, transport._give_up(reason, count, attempts, last)))
                return
            last = (status, text)
            if self._settled(parts, start, end, (status, headers, text), attempts, epoch, out):
                return

    def _settled(
        self,
        parts: List[bytes],
        start: int,
        end: int,
        answer: Tuple[Optional[int], Dict[str, str], str],
        attempts: int,
        epoch: int,
        out: List[Outcome],
    ) -> bool:
        """Act on one answer; False when the slice is to be sent again."""
        transport = self.transport
        status, headers, text = answer
        if status is not None and (200 <= status < 300 or not is_retryable(status)):
            transport.backoff.answered(epoch)  # the receiver is up, whatever it thought of this
        if status is not None and 200 <= status < 300:
            out.append((start, end, Response(status, headers, text, attempts)))
            return True
        count = end - start
        if status == 413 and count > 1:
            middle = start + count // 2
            self.deliver_range(parts, start, middle, out)
            self.deliver_range(parts, middle, end, out)
            return True
        if not is_retryable(status) or status == 413:  # 413 here: one message, too large
            out.append(
                (start, end, transport._give_up("rejected", count, attempts, (status, text)))
            )
            return True
        asked = retry_after(headers, cap=transport.backoff.max_retry_after)
        transport.backoff.failed(epoch, BACKOFF_BASE, asked if status in (429, 503) else None)
        refusal = transport._no_retry_reason(status, attempts)
        if refusal is None:
            return False
        out.append((start, end, transport._give_up(refusal, count, attempts, (status, text))))
        return True


class NullTransport(Transport):
    """For ``send=False``: accepts every batch without a network."""

    def deliver(self, parts: List[bytes], deadline: Optional[Deadline] = None) -> List[Outcome]:
        return [(0, len(parts), Response(0, {}, "", 0))] if parts else []


def transport_for(options: Options) -> Transport:
    """The HTTP transport ``options`` describe (with ``send=False``, one that sends nothing)."""
    transport_class = Transport if options.send else NullTransport
    budget = options.retry_budget
    if budget is None and options.sync_mode:
        budget = SYNC_RETRY_BUDGET  # the caller's own thread waits: not forever
    return transport_class(
        host=options.host,
        write_key=options.write_key,
        gzip=options.gzip,
        timeout=options.timeout,
        max_retries=options.max_retries,
        retry_budget=budget,
        max_in_flight=options.max_in_flight,
        max_backoff=options.max_backoff,
        max_retry_after=options.max_retry_after,
        route=route_from_options(options),
    )
