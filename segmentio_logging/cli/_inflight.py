"""Batches of a command sent several at once, checkpointed in order.

``import`` reads and cuts batches on its own thread and hands each to
:class:`InFlight`, which keeps up to ``max_in_flight`` requests going (the
same option, and the same pipeline-wide backoff of the transport, as the
library's pipeline). Batches are accepted in any order; what may be
checkpointed is the end of the longest run of accepted batches from the start,
so that a rerun never skips a line that was not accepted.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

from .._transport import Transport
from ._common import deliver

# What a batch ends with, for its checkpoint: the line it ends at, and whatever
# else the caller needs to write the state (the hash of the lines up to it).
Mark = Any


class InFlight:
    """Up to ``limit`` batches in flight; ``on_accepted(mark, sent)`` for each new prefix.

    ``on_accepted`` runs under the window's lock (one at a time), on whichever
    thread saw the prefix grow; ``sent`` counts the messages of the prefix.
    """

    def __init__(
        self,
        transport: Transport,
        limit: int,
        on_accepted: Callable[[Mark, int], None],
    ) -> None:
        self.transport = transport
        self.limit = max(limit, 1)
        self._on_accepted = on_accepted
        self._pool = ThreadPoolExecutor(self.limit, thread_name_prefix="segmentio-logging-import")
        self._slots = threading.BoundedSemaphore(self.limit)
        self._lock = threading.Lock()
        self._next = 0  # sequence number of the next batch submitted
        self._prefix = 0  # batches [0, _prefix) were all accepted
        self._done: Dict[int, Tuple[int, Mark]] = {}  # accepted past the prefix: size, mark
        self.sent = 0  # messages accepted, in any order
        self.prefix_sent = 0  # messages of the accepted prefix
        self.failed = 0  # messages of refused batches
        self.failure: Optional[str] = None  # why the first refused batch was refused

    def submit(self, parts: List[bytes], mark: Mark) -> bool:
        """Send ``parts`` when a request slot is free; False once a batch was refused."""
        self._slots.acquire()
        with self._lock:
            if self.failure is not None:
                self._slots.release()
                return False
            sequence = self._next
            self._next += 1
        try:
            self._pool.submit(self._send, sequence, parts, mark)
        except RuntimeError:  # the interpreter is shutting down: send it here
            self._send(sequence, parts, mark)
        return True

    def _send(self, sequence: int, parts: List[bytes], mark: Mark) -> None:
        try:
            accepted, detail = deliver(self.transport, parts)
        except Exception as exc:  # a bug must not leave the window waiting
            accepted, detail = False, f"{type(exc).__name__}: {exc}"
        try:
            with self._lock:
                if not accepted:
                    self.failed += len(parts)
                    if self.failure is None:
                        self.failure = detail
                    return
                self.sent += len(parts)
                self._done[sequence] = (len(parts), mark)
                self._advance()
        finally:
            self._slots.release()

    def _advance(self) -> None:
        """Under the lock: move the prefix over every batch accepted right after it."""
        last: Optional[Mark] = None
        while self._prefix in self._done:
            size, last = self._done.pop(self._prefix)
            self._prefix += 1
            self.prefix_sent += size
        if last is not None:
            self._on_accepted(last, self.prefix_sent)

    def wait(self) -> None:
        """Wait until every batch submitted has been answered."""
        for _ in range(self.limit):
            self._slots.acquire()
        for _ in range(self.limit):
            self._slots.release()

    def close(self) -> None:
        """Wait for what is in flight, then end the sending threads."""
        self._pool.shutdown(wait=True)
