"""Helpers shared by the test suite: free and closed ports, a callback recorder."""

from __future__ import annotations

import socket
import threading
from typing import Any, List, Tuple


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: every connection is refused."""
    return free_port()


def closed_url() -> str:
    """The ``http://`` URL of a port nothing listens on."""
    return f"http://127.0.0.1:{closed_port()}"


class Recorder:
    """Collects callback calls (``on_success``, ``on_failure``) from the worker thread."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, Any]] = []
        self.event = threading.Event()

    def __call__(self, data: Any, arg: Any) -> None:
        self.calls.append((data, arg))
        self.event.set()
