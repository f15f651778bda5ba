"""A fast Segment-compatible receiver for the benchmarks, meant to run in its own process.

A raw-socket HTTP/1.1 server with keep-alive and one thread per connection:
``POST /v1/batch`` (gzip or not) answers 200 and counts the messages in the
batch; ``GET /count`` answers ``{"count": N, "requests": R, "last": T}``.
When started by :func:`start` the count, the request count and the
``time.monotonic()`` of the last batch (one clock for every process on Linux
and macOS) are also kept in shared memory, so the benchmark reads them without
a request of its own.

Run it alone with ``python benchmarks/receiver.py [--port N]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import threading
import time
import zlib
from typing import Any, Callable, NamedTuple, Optional, Tuple

try:  # about five times faster than json.loads on a batch: the receiver keeps up
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the bench extra installs it
    _fast_loads = None
_fast: Optional[Callable[[bytes], Any]] = _fast_loads


def loads(body: bytes) -> Any:
    """Parse a batch; json's parser for what orjson refuses (lone surrogates, big ints)."""
    if _fast is not None:
        try:
            return _fast(body)
        except ValueError:
            pass
    return json.loads(body)


OK_BODY = b'{"success":true}'
OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(OK_BODY)).encode()
    + b"\r\n\r\n"
    + OK_BODY
)


class Counters:
    """Where the receiver writes what it got: shared memory, or plain attributes."""

    def __init__(self, shared: Optional[Tuple[Any, Any, Any]] = None) -> None:
        self.shared = shared
        self.lock = threading.Lock()
        self.count = 0
        self.requests = 0
        self.last = 0.0

    def add(self, messages: int, at: float) -> None:
        with self.lock:
            self.count += messages
            self.requests += 1
            self.last = at
            if self.shared is not None:
                count, requests, last = self.shared
                count.value = self.count
                requests.value = self.requests
                last.value = at


def _reply(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _BadBatch(Exception):
    """A batch that does not decode; ``reply`` is the 400 that says why."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class _Head(NamedTuple):
    """What the receiver reads from a request's head."""

    method: bytes
    path: bytes
    length: int
    gzipped: bool
    close: bool


class _Stream:
    """The bytes of one connection, read ahead into a buffer across requests."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def read_head(self) -> Optional[bytes]:
        """The next request's head, without its blank line; None when the client closed."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.conn.recv(262_144)
            if not chunk:
                return None
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def read_body(self, length: int) -> Optional[bytes]:
        """The next ``length`` bytes; None when the client closed first."""
        while len(self.buffer) < length:
            chunk = self.conn.recv(max(262_144, length - len(self.buffer)))
            if not chunk:
                return None
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body


def _parse_head(head: bytes) -> _Head:
    """Method, path, and the three headers the receiver reads; ValueError when malformed."""
    lines = head.split(b"\r\n")
    method, path = lines[0].split(b" ")[:2]
    length = 0
    gzipped = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"content-encoding":
            gzipped = b"gzip" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    return _Head(method, path, length, gzipped, close)


def _decoded_batch(body: bytes, gzipped: bool) -> Any:
    """The ``batch`` list of a request body; :class:`_BadBatch` when it does not decode."""
    try:
        if gzipped:
            body = zlib.decompress(body, 47)  # gzip or zlib header
        return loads(body)["batch"]
    except Exception as exc:
        raise _BadBatch(_reply("400 Bad Request", json.dumps(str(exc)).encode())) from exc


def _answer(head: _Head, body: bytes, arrived: float, counters: Counters) -> bytes:
    """The reply to one request: count a batch, report the counts, or 404."""
    if head.method == b"POST" and head.path.startswith(b"/v1/batch"):
        batch = _decoded_batch(body, head.gzipped)
        counters.add(len(batch), arrived)
        return OK
    if head.method == b"GET" and head.path.startswith(b"/count"):
        with counters.lock:
            state = {
                "count": counters.count,
                "requests": counters.requests,
                "last": counters.last,
            }
        return _reply("200 OK", json.dumps(state).encode())
    return _reply("404 Not Found", b'{"error":"not found"}')


def _serve_connection(conn: socket.socket, counters: Counters) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = _Stream(conn)
    try:
        while True:
            raw_head = stream.read_head()
            if raw_head is None:
                return
            head = _parse_head(raw_head)
            body = stream.read_body(head.length)
            if body is None:
                return
            arrived = time.monotonic()
            try:
                conn.sendall(_answer(head, body, arrived, counters))
            except _BadBatch as bad:
                conn.sendall(bad.reply)
                continue  # the connection stays open after a 400, whatever the client asked
            if head.close:
                return
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def serve(
    port: int = 0,
    shared: Optional[Tuple[Any, Any, Any]] = None,
    port_out: Any = None,
    ready: Any = None,
) -> None:
    """Accept connections forever on 127.0.0.1:``port``; write the bound port to ``port_out``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    bound = listener.getsockname()[1]
    counters = Counters(shared)
    if port_out is not None:
        port_out.value = bound
    if ready is not None:
        ready.set()
    else:
        print(f"receiver listening on http://127.0.0.1:{bound}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn, counters), daemon=True).start()


class Receiver:
    """The receiver in a separate process (``spawn``), so that it shares no GIL with the sender."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._count = ctx.RawValue("q", 0)
        self._requests = ctx.RawValue("q", 0)
        self._last = ctx.RawValue("d", 0.0)
        self._port = ctx.RawValue("i", 0)
        ready = ctx.Event()
        self._process = ctx.Process(
            target=serve,
            args=(0, (self._count, self._requests, self._last), self._port, ready),
            name="benchmark-receiver",
            daemon=True,
        )
        self._process.start()
        if not ready.wait(30):
            self._process.kill()
            raise RuntimeError("the receiver did not start within 30 s")
        self.port = self._port.value
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        return int(self._count.value)

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    @property
    def last_arrival(self) -> float:
        """``time.monotonic()`` in the receiver when the last batch was read."""
        return float(self._last.value)

    def wait_for(self, count: int, timeout: float, poll: float = 0.001) -> bool:
        """Wait until the receiver has counted at least ``count`` messages."""
        end = time.monotonic() + timeout
        while self._count.value < count:
            if time.monotonic() > end:
                return False
            time.sleep(poll)
        return True

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        serve(args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
