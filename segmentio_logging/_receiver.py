"""The side of :class:`~segmentio_logging.testing.LocalCollector` that faces its clients.

``segmentio-logging collect`` may listen where anyone can reach it, so what
one client can make the receiver hold is bounded:

* a body as sent: ``max_request_bytes`` (Content-Length, or the sum of the
  chunks of a chunked body); a larger declared length is answered 413 before
  one byte of the body is read, and the connection closes;
* a body decompressed: ``max_decoded_bytes``, checked while gzip is undone
  piece by piece, never after;
* a request's head: :data:`MAX_HEAD_BYTES` of header lines (431 past it);
* time: ``idle_timeout`` without a byte (a keep-alive connection waiting for
  its next request, or a client that stalls), ``request_timeout`` to read one
  request from its first byte to its last, however the bytes trickle in;
* threads: ``max_connections`` connections are served at once, one thread
  each; the others wait in the listen backlog until a thread is free;
* memory across connections: bodies of at most 16 x ``max_request_bytes`` are
  read at once (a 503 past it), and two requests are decoded at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import math
import re
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, Iterator, Optional, Tuple, Type

from ._lifecycle import leave_signals_to_other_threads

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_DECODED_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_REQUEST_BYTES",
    "REQUEST_TIMEOUT",
    "Limits",
    "ReceiverServer",
    "Refused",
    "RequestStream",
    "body_length",
    "decoded_body",
    "linger",
    "read_body",
    "refusal_bytes",
]

# Segment takes 500 KB per request and 32 KB per message; a client within them is never
# refused here, whatever its encoding.
MAX_REQUEST_BYTES = 1 << 20
MAX_DECODED_BYTES = 4 << 20
MAX_HEAD_BYTES = 64 << 10
IDLE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

# Requests decoded (and parsed) at once: the GIL runs one at a time anyway, so more would
# add memory, not speed.
_DECODING_AT_ONCE = 2
# How many bodies of the largest size may be read at once (the budget of bytes being read).
_BODIES_AT_ONCE = 16
# How long a connection closed after a refusal keeps reading (and discarding) what its client
# still sends, so that the client reads the answer instead of a reset.
_LINGER_SECONDS = 1.0
_CHUNK_LINE = 4096  # a chunk-size line, extensions included
_MAX_TRAILERS = 100
_DIGITS = re.compile(r"[0-9]{1,18}")
# Socket timeouts set as options of the socket (a struct timeval of two longs).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux") or sys.platform == "darwin"
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


@dataclass(frozen=True)
class Limits:
    """What one client may make the receiver hold; every value above 0."""

    max_request_bytes: int = MAX_REQUEST_BYTES
    max_decoded_bytes: int = MAX_DECODED_BYTES
    idle_timeout: float = IDLE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_decoded_bytes", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number above 0, got {value!r}")
        for name in ("idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")


class Refused(Exception):
    """A request the receiver answers itself with ``status``, whatever was scripted.

    ``close``: the body was not read (or its framing is broken), so the
    connection cannot carry another request and closes after the answer.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        close: bool = True,
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------- reading


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class _SocketReader(io.RawIOBase):
    """A socket's bytes under two clocks: ``idle`` between bytes, ``total`` per request.

    The request's clock starts at its first byte, so that a keep-alive
    connection may wait ``idle`` for its next request and then still have
    ``total`` to send it. Sends have ``idle`` too.

    Where the system has them (Linux, macOS) the clocks are the socket's own
    receive and send timeouts: Python's socket timeouts would poll before each
    call and hand the GIL over twice, a tenth of the receiver's speed.
    """

    def __init__(self, sock: socket.socket, idle: float, total: float) -> None:
        super().__init__()
        self._sock = sock
        self._idle = idle
        self._total = total
        self._applied: Optional[float] = None
        self.deadline: Optional[float] = None
        self.timed_out = False
        if _KERNEL_TIMEOUTS:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(idle))

    def readable(self) -> bool:
        return True

    def before_answer(self) -> None:
        """Give the answer's sends the idle timeout (reads may have left the socket less)."""
        if not _KERNEL_TIMEOUTS:
            self._sock.settimeout(self._idle)

    def readinto(self, buffer: Any) -> int:
        timeout = self._idle
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                raise socket.timeout("the request took too long to arrive")
            timeout = min(timeout, left)
        if timeout != self._applied:
            self._applied = timeout
            if _KERNEL_TIMEOUTS:
                tv = _timeval(max(timeout, 0.001))  # a zero timeval would mean no timeout
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            else:
                self._sock.settimeout(timeout)
        try:
            count = self._sock.recv_into(buffer)
        # BlockingIOError (SSLWantReadError under TLS): the system's timeout ran out.
        except (socket.timeout, BlockingIOError, ssl.SSLWantReadError):
            self.timed_out = True
            raise socket.timeout("the client sent nothing for too long") from None
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self._total
        return count


class RequestStream(io.BufferedReader):
    """What a connection's client sends, read under the receiver's clocks and head limit.

    The handler calls :meth:`next_request` before each request and
    :meth:`end_head` once its head is parsed; in between, header lines past
    :data:`MAX_HEAD_BYTES` in all make the head's parser answer 431.
    """

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self._reader = _SocketReader(sock, limits.idle_timeout, limits.request_timeout)
        super().__init__(self._reader)
        self._head_left: Optional[int] = None
        self._request_line = True

    def next_request(self) -> None:
        """A new request begins: its clock starts at its first byte."""
        self._reader.deadline = None
        self._reader.timed_out = False
        self._head_left = MAX_HEAD_BYTES
        self._request_line = True

    def end_head(self) -> None:
        self._head_left = None

    def before_answer(self) -> None:
        """The answer is about to go out: its sends get the idle timeout."""
        self._reader.before_answer()

    @property
    def started(self) -> bool:
        """Whether a byte of the current request arrived (else the connection was idle)."""
        return self._reader.deadline is not None

    @property
    def timed_out(self) -> bool:
        return self._reader.timed_out

    def readline(self, size: Optional[int] = -1) -> bytes:
        left = self._head_left
        if left is None or self._request_line:
            # The request line has the parser's own limit (414 past 64 KB).
            self._request_line = False
            return super().readline(size)
        if left <= 0:
            raise http.client.LineTooLong(f"header lines over {MAX_HEAD_BYTES:,} bytes in all")
        cap = left + 1 if size is None or size < 0 else min(size, left + 1)
        line = super().readline(cap)
        self._head_left = left - len(line)
        return line


def body_length(headers: Message, limits: Limits) -> Optional[int]:
    """The length a request's head declares for its body; None for a chunked body.

    :class:`Refused` when the body cannot be taken: its length is missing
    (411), malformed or ambiguous (400), over ``max_request_bytes`` (413), or
    its transfer coding unknown (501).
    """
    coding = headers.get("Transfer-Encoding")
    lengths = headers.get_all("Content-Length") or []
    if coding is not None:
        if lengths:
            raise Refused(400, "a request may not carry both Transfer-Encoding and Content-Length")
        if coding.strip().lower() != "chunked":
            raise Refused(501, f"Transfer-Encoding {coding!r} is not supported; send chunked")
        return None
    if not lengths:
        raise Refused(411, "a POST needs a Content-Length (or Transfer-Encoding: chunked)")
    values = {value.strip() for value in lengths}
    value = values.pop()
    if values:
        raise Refused(400, "the request declares more than one Content-Length")
    if not value.isdigit() or not value.isascii():
        raise Refused(400, f"Content-Length {value[:40]!r} is not a number of bytes")
    limit = limits.max_request_bytes
    if not _DIGITS.fullmatch(value) or int(value) > limit:
        raise Refused(413, f"a body of {value} bytes is over this receiver's {limit:,}")
    return int(value)


def read_body(stream: RequestStream, length: Optional[int], limit: int) -> bytes:
    """The body :func:`body_length` declared: ``length`` bytes, or the chunks of a chunked one."""
    if length is None:
        return _read_chunked(stream, limit)
    data = stream.read(length) if length else b""
    if len(data) < length:
        raise Refused(400, f"the body ended after {len(data):,} of {length:,} bytes")
    return data


def _read_chunked(stream: RequestStream, limit: int) -> bytes:
    """A chunked body, its chunks joined; never more than ``limit`` bytes of them."""
    parts = []
    total = 0
    while True:
        line = stream.readline(_CHUNK_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
            raise Refused(400, "a chunk's size line is malformed, too long, or missing")
        size = int(size_text, 16)
        if not size:
            break
        total += size
        if total > limit:
            raise Refused(413, f"the chunks add up to more than this receiver's {limit:,} bytes")
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(3).strip():
            raise Refused(400, "a chunk ended before its size, or without its line end")
        parts.append(chunk)
    for _ in range(_MAX_TRAILERS):
        line = stream.readline(_CHUNK_LINE + 1)
        if not line.strip():
            return b"".join(parts)
    raise Refused(400, f"more than {_MAX_TRAILERS} trailer lines after the chunks")


# --------------------------------------------------------------------------- decoding


def decoded_body(headers: Dict[str, str], raw: bytes, limit: int) -> Optional[bytes]:
    """``raw`` undone from its Content-Encoding, at most ``limit`` bytes; None when a gzip
    body is not valid gzip. :class:`Refused` (413) past ``limit``, found while decoding.

    ``headers`` have lower-case names. Any encoding but gzip is left as it is.
    """
    if headers.get("content-encoding", "").strip().lower() != "gzip":
        if len(raw) > limit:
            raise Refused(
                413, f"a body of {len(raw):,} bytes is over this receiver's {limit:,}", close=False
            )
        return raw
    try:
        return _gunzip(raw, limit)
    except zlib.error:
        return None


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Every gzip member of ``raw``, decompressed piece by piece up to ``limit`` bytes.

    The same members (and the zero padding after them) that ``gzip.decompress``
    takes, so that a check reading the body again gets what was counted here.
    """
    parts = []
    size = 0
    data = raw
    while True:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        part = member.decompress(data, limit - size + 1)
        size += len(part)
        if size > limit:
            raise Refused(
                413,
                f"the body decompresses to more than this receiver's {limit:,} bytes",
                close=False,
            )
        if not member.eof:
            raise zlib.error("the gzip stream ends early")
        parts.append(part)
        data = member.unused_data.lstrip(b"\x00")
        if not data:
            return b"".join(parts)


# --------------------------------------------------------------------------- answering


def refusal_bytes(status: int, message: str) -> bytes:
    """A whole answer that closes the connection, for when no request was parsed."""
    body = json.dumps({"success": False, "error": message}).encode("utf-8")
    reason = http.client.responses.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def linger(sock: socket.socket) -> None:
    """Close the sending side, then read and drop what the client still sends, a while.

    Closed at once with unread bytes, the connection would send a reset, and
    the client, still sending its body, might never read the answer.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + _LINGER_SECONDS
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            if not sock.recv(65536):
                return


class _ReadBudget:
    """The bytes of bodies being read at once, across connections."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes while the body is read and handled; a 503 when none are left."""
        with self._lock:
            if size > self._left:
                raise Refused(
                    503, "too many large bodies at once; retry", headers={"Retry-After": "1"}
                )
            self._left -= size
        try:
            yield
        finally:
            with self._lock:
                self._left += size


class ReceiverServer(HTTPServer):
    """An HTTP server that serves at most ``limits.max_connections`` connections at once.

    One thread per connection, as ``ThreadingHTTPServer``, but a connection
    past the bound waits, unaccepted, in the listen backlog until a thread is
    free. ``stopping`` set: a connection waiting for a thread is closed.
    With ``ssl_context`` (a server-side context) every connection speaks TLS,
    its handshake made on the connection's own thread.
    """

    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog (the system may cap it lower)

    def __init__(
        self,
        address: Tuple[str, int],
        handler: Type[BaseHTTPRequestHandler],
        limits: Limits,
        stopping: threading.Event,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.limits = limits
        self.stopping = stopping
        self.ssl_context = ssl_context
        self.decoding = threading.BoundedSemaphore(_DECODING_AT_ONCE)
        self.budget = _ReadBudget(_BODIES_AT_ONCE * limits.max_request_bytes)
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)
        self.thread_name = f"segmentio-logging-collector:{self.server_address[1]}"
        """The name of each thread serving a connection."""

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self._slots.acquire(timeout=0.05):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        thread = threading.Thread(
            target=self._serve,
            args=(request, client_address),
            name=self.thread_name,
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            self._slots.release()
            raise

    def _serve(self, request: Any, client_address: Any) -> None:
        leave_signals_to_other_threads()  # Ctrl-C reaches the main thread of ``collect``
        try:
            if self.ssl_context is not None:
                request = self._handshake(request, self.ssl_context)
            if request is not None:
                self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            if request is not None:
                self.shutdown_request(request)
            self._slots.release()

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> Optional[ssl.SSLSocket]:
        """``sock`` under TLS; None (the connection closed) when the handshake fails.

        After a failure the connection lingers a while, so that the client reads
        the alert that says why instead of a reset.
        """
        sock.settimeout(self.limits.idle_timeout)
        try:
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            sock.close()
            return None
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            linger(tls)
            tls.close()
            return None
        return tls

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes, resets or stalls its connection is what this server expects.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)
