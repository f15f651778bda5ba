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

This module serves the connections (:class:`ReceiverServer`) and answers what
it refuses; the limits are in ``_receiver_limits``, a connection read under
its clocks in ``_receiver_stream``, a body's framing and gzip in ``_receiver_body``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator, Optional, Tuple, Type

from ._lifecycle import leave_signals_to_other_threads
from ._receiver_body import body_length, decoded_body, read_body
from ._receiver_limits import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_DECODED_BYTES,
    MAX_HEAD_BYTES,
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    Limits,
    Refused,
)
from ._receiver_stream import RequestStream

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

# Requests decoded (and parsed) at once: the GIL runs one at a time anyway, so more would
# add memory, not speed.
_DECODING_AT_ONCE = 2
# How many bodies of the largest size may be read at once (the budget of bytes being read).
_BODIES_AT_ONCE = 16
# How long a connection closed after a refusal keeps reading (and discarding) what its client
# still sends, so that the client reads the answer instead of a reset.
_LINGER_SECONDS = 1.0


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
