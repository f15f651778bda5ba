"""Hostile clients for the receiver's tests: raw sockets, a gzip bomb, a client that trickles.

Everything talks to 127.0.0.1 only, and every wait has a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

HAS_PROC = os.path.exists("/proc/self/status")
needs_proc = pytest.mark.skipif(not HAS_PROC, reason="reads /proc/PID/status (Linux)")

Answer = Tuple[int, Dict[str, str], bytes]


def gzip_bomb(mib: int) -> bytes:
    """``mib`` MiB of zero bytes as gzip: about a thousandth of that on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(mib)), packer.flush()])


def batch_body(*ids: str) -> bytes:
    """A well-formed batch of one track message per id."""
    messages = [{"type": "track", "event": "E", "userId": "u", "messageId": i} for i in ids]
    return json.dumps({"batch": messages, "writeKey": "key"}).encode()


def address(url: str) -> Tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def raw_connection(url: str, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to the receiver at ``url``."""
    return socket.create_connection(address(url), timeout=timeout)


def request_head(
    length: Optional[int] = None, path: str = "/v1/batch", headers: Iterable[str] = ()
) -> bytes:
    """A POST's head: with ``Content-Length: length`` when given, and ``headers`` lines."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> Answer:
    """The status, lower-cased headers and body of the next answer on ``sock``."""
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    try:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        response.close()


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Wait until the receiver closes ``sock`` (EOF or a reset); False at the timeout.

    Whatever arrives before the close is read and dropped.
    """
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except OSError:  # a reset is a close too
            return True


def trickle(sock: socket.socket, every: float, timeout: float) -> bytes:
    """Send one byte each ``every`` seconds until the receiver answers or closes.

    What the receiver sent (b"" for a plain close); AssertionError when it kept
    listening for ``timeout`` seconds.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                return sock.recv(65536)
            except OSError:
                return b""
        try:
            sock.sendall(b"x")
        except OSError:
            return b""
    raise AssertionError(f"the receiver was still reading after {timeout} s")


def post(url: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> int:
    """POST ``body`` to ``url`` on a connection of its own; the status of the answer."""
    host, port = address(url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", urlsplit(url).path or "/v1/batch", body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def at_once(count: int, call: Callable[[int], Any], timeout: float = 120.0) -> List[Any]:
    """Run ``call(i)`` for ``count`` values of i in as many threads let go together.

    The result of each call (or the exception it raised), in order.
    """
    results: List[Any] = [None] * count
    gate = threading.Barrier(count, timeout=timeout)

    def run(i: int) -> None:
        try:
            gate.wait()
            results[i] = call(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(end - time.monotonic(), 0))
    assert not any(t.is_alive() for t in threads), f"clients still waiting after {timeout} s"
    return results


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds; False at the timeout."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def threads_named(name: str) -> int:
    """How many threads of this process have ``name``."""
    return sum(1 for thread in threading.enumerate() if thread.name == name)


class Peak:
    """The highest value ``measure()`` took while the block ran, sampled every few ms."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.value = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            try:
                self.value = max(self.value, self.measure())
            except OSError:  # the process it reads has ended
                return

    def __enter__(self) -> Peak:
        self.value = self.measure()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


def proc_status(pid: int) -> Dict[str, int]:
    """The numbers of /proc/PID/status: VmHWM (peak resident kB), VmRSS, Threads, ..."""
    numbers: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            first = value.split()[:1]
            if first and first[0].isdigit():
                numbers[name] = int(first[0])
    return numbers
