"""A connection's bytes as the receiver reads them: under its two clocks (idle, and the
whole request) and the limit of a request's head."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import struct
import sys
import time
from typing import Any, Optional

from ._receiver_limits import MAX_HEAD_BYTES, Limits

# Socket timeouts set as options of the socket (a struct timeval of two longs).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux") or sys.platform == "darwin"


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
