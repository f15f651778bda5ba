"""The HTTP side of :class:`~segmentio_logging.testing.LocalCollector`: the handler that
serves its connections on the receiver's server, and what it asks of the collector."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, Optional, Protocol, Tuple

from ._collector_requests import Reply, Request
from ._receiver import (
    ReceiverServer,
    Refused,
    RequestStream,
    body_length,
    linger,
    read_body,
    refusal_bytes,
)
from ._spec import Verdict


class Answering(Protocol):
    """The collector as its handler sees it: what decides, records and holds each answer."""

    _stopping: threading.Event

    def _read(self, request: Request) -> Tuple[int, Optional[Verdict]]: ...

    def _choose(self, request: Request, size: int, verdict: Optional[Verdict]) -> Reply: ...

    def _refused(self, request: Request, refused: Refused) -> Reply: ...

    def _answered(self, request: Request) -> None: ...

    def _hang(self) -> None: ...


class CollectorHandler(BaseHTTPRequestHandler):
    """Serves one connection: each request read under the receiver's clocks and limits,
    then answered with the reply its collector chooses, refused, delayed, reset or held."""

    protocol_version = "HTTP/1.1"
    # The status line and headers go out in one send, the body in another: with Nagle's
    # algorithm on, the body waits for the client's delayed ACK, 40 ms per request.
    disable_nagle_algorithm = True
    server: CollectorServer
    connection_id = 0
    stream: RequestStream

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a stream that keeps the receiver's clocks and limits
        self.stream = RequestStream(self.connection, self.server.limits)
        self.rfile = self.stream
        self.connection_id = next(self.server.connection_ids)

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def handle_one_request(self) -> None:
        self.stream.next_request()
        super().handle_one_request()  # a read past a clock ends it, the connection to close
        if self.stream.timed_out and self.stream.started:
            # Part of a request came, too slowly: say so (an idle connection just closes).
            with contextlib.suppress(OSError):
                self.connection.settimeout(1.0)
                self.connection.sendall(refusal_bytes(408, "the request took too long to arrive"))
            linger(self.connection)

    def handle_expect_100(self) -> bool:
        """A body that will be refused is refused before the client sends it."""
        if self.command == "POST":
            try:
                body_length(self.headers, self.server.limits)
            except Refused as refused:
                self._refuse(refused)
                return False
        return super().handle_expect_100()

    def do_POST(self) -> None:
        server = self.server
        limits = server.limits
        self.stream.end_head()
        request = self._request()
        try:
            length = body_length(self.headers, limits)
            with server.budget.hold(limits.max_request_bytes if length is None else length):
                request.raw = read_body(self.stream, length, limits.max_request_bytes)
                with server.decoding:
                    size, verdict = server.collector._read(request)
        except Refused as refused:
            self._refuse(refused, request)
            return
        self._answer(request, server.collector._choose(request, size, verdict))

    def _request(self) -> Request:
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request("POST", self.path, headers, b"", None, None, time.time(), self.connection_id)

    def _refuse(self, refused: Refused, request: Optional[Request] = None) -> None:
        """Answer ``refused``; when its body is left unread, close the connection after it."""
        self.stream.end_head()
        if request is None:
            request = self._request()
        reply = self.server.collector._refused(request, refused)
        if refused.close:
            reply.headers["Connection"] = "close"
        self._answer(request, reply)
        if refused.close:
            linger(self.connection)

    def _answer(self, request: Request, reply: Reply) -> None:
        collector = self.server.collector
        if reply.delay:
            collector._stopping.wait(reply.delay)
        if reply.hang:
            collector._hang()
            self.close_connection = True
            return
        if reply.reset:
            self._reset()
            return
        payload = reply.text.encode("utf-8")
        try:
            self.stream.before_answer()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting (its timeout) and closed the socket
            self.close_connection = True
        collector._answered(request)

    def _reset(self) -> None:
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True


class CollectorServer(ReceiverServer):
    """The receiver's server, with the collector its handlers answer for."""

    collector: Answering
    connection_ids: Iterator[int]
