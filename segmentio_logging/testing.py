"""``LocalCollector``: a Segment-compatible receiver on 127.0.0.1 for tests and demos.

It is a real HTTP server in a background thread. It records every request
(path, headers, decoded body) and answers as scripted: a status, a delay, a
``Retry-After`` header, a connection reset, or a hang that never answers.
Given a ``check`` (``segmentio-logging collect`` gives one that holds each
request to Segment's spec), it answers a request no scripted reply answers as
the check decides.

    with LocalCollector() as collector:
        handler = SegmentHandler("key", host=collector.url)
        ...
        collector.wait_for_messages(3)
        assert collector.messages[0]["event"] == "Played a Song"
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from ._collector_handler import CollectorHandler, CollectorServer
from ._collector_requests import Reply, Request, RequestCheck
from ._lifecycle import leave_signals_to_other_threads
from ._receiver import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_DECODED_BYTES,
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    Limits,
    Refused,
    decoded_body,
)
from ._spec import Verdict

__all__ = ["LocalCollector", "Reply", "Request"]


class LocalCollector:
    """A scriptable Segment-compatible receiver on 127.0.0.1 (port 0 picks a free port).

    ``max_body_bytes`` makes it answer 413 to any request whose decoded body is
    larger, as Segment does past 500 KB, without using up a scripted reply.
    ``check`` (a :class:`RequestCheck`) sees every request, and its verdict
    answers each one that neither the script nor ``max_body_bytes`` answers.

    Whoever can reach it gets no more than these, whatever was scripted: a
    body of ``max_request_bytes`` as sent (a larger Content-Length is answered
    413 before the body is read, and the connection closes; no length, 411) and
    ``max_decoded_bytes`` once gzip is undone (413, found while decompressing);
    ``idle_timeout`` seconds without a byte and ``request_timeout`` to send a
    whole request (408, and the connection closes); ``max_connections``
    connections served at once, each by a thread, the others waiting to be
    accepted. Requests it refuses are recorded with their status.

    With ``ssl_context`` (a server-side ``ssl.SSLContext`` holding its
    certificate, and the CAs of the client certificates it requires, if any)
    it speaks HTTPS, and :attr:`url` starts with ``https://``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: Optional[int] = None,
        check: Optional[RequestCheck] = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.check = check
        self.limits = Limits(
            max_request_bytes, max_decoded_bytes, idle_timeout, request_timeout, max_connections
        )
        self._stopping = threading.Event()
        self._server = CollectorServer(
            (host, port), CollectorHandler, self.limits, self._stopping, ssl_context=ssl_context
        )
        self._server.collector = self
        self._server.connection_ids = itertools.count(1)
        self._cond = threading.Condition()
        self._requests: List[Request] = []
        self._script: Deque[Reply] = deque()
        self.default = Reply()
        self._hangs: List[threading.Event] = []
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ life

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "http" if self._server.ssl_context is None else "https"
        return f"{scheme}://{host!s}:{port}"

    def start(self) -> LocalCollector:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve_forever,
                name="segmentio-logging-collector",
                daemon=True,
            )
            self._thread.start()
        return self

    def _serve_forever(self) -> None:
        leave_signals_to_other_threads()  # a signal to the process reaches its main thread
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self._stopping.set()
        self.release_hangs()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LocalCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalCollector {self.url} requests={len(self._requests)}>"

    # ------------------------------------------------------------------ script

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order; then with ``default``."""
        with self._cond:
            self._script.extend(replies)

    def release_hangs(self) -> None:
        """Let requests held by ``Reply(hang=True)`` go (their connections close unanswered).

        Only the requests held now: a later ``hang`` reply hangs again.
        """
        with self._cond:
            held, self._hangs = self._hangs, []
        for event in held:
            event.set()

    def reset(self) -> None:
        """Forget every request, drop the script, restore the default reply, release hangs."""
        with self._cond:
            self._requests.clear()
            self._script.clear()
            self.default = Reply()
        self.release_hangs()

    @property
    def pending_replies(self) -> int:
        """How many scripted replies are still to be used."""
        with self._cond:
            return len(self._script)

    def _hang(self) -> None:
        event = threading.Event()
        with self._cond:
            if self._stopping.is_set():
                return
            self._hangs.append(event)
        event.wait(300)

    def _read(self, request: Request) -> Tuple[int, Optional[Verdict]]:
        """Decode ``request``'s body and check it: the size of the decoded body, the verdict.

        :class:`Refused` when it decodes to more than ``max_decoded_bytes``.
        """
        check = self.check
        data = decoded_body(request.headers, request.raw, self.limits.max_decoded_bytes)
        if data is None:  # not gzip after all: a check must not try to undo it again
            invalid = Verdict(400, "body is not valid gzip (Content-Encoding: gzip)")
            return len(request.raw), None if check is None else invalid
        if data and (check is None or check.keep):
            try:
                request.body = json.loads(data.decode("utf-8"))
            except Exception:  # not JSON, not UTF-8, nested too deeply
                request.body = None
        return len(data), None if check is None else check.inspect(request)

    def _choose(self, request: Request, size: int, verdict: Optional[Verdict]) -> Reply:
        """Choose ``request``'s reply, and record it with the status it gets.

        ``size`` is the length of its decoded body; ``verdict`` the check's.
        """
        limit = self.max_body_bytes
        if limit is not None and size > limit:
            reply = Reply(413, f'{{"error":"body of {size} bytes is over {limit}"}}')
        else:
            with self._cond:
                scripted = self._script.popleft() if self._script else None
                default = self.default
            if scripted is not None:
                reply = scripted
            elif verdict is not None:
                reply = Reply(verdict.status, verdict.body)
            else:
                reply = default
        self._record(request, None if (reply.reset or reply.hang) else reply.status, verdict)
        return reply

    def _refused(self, request: Request, refused: Refused) -> Reply:
        """Record ``request``, which the receiver answers itself; the reply that says why."""
        verdict = Verdict(refused.status, refused.message)
        self._record(request, refused.status, None if self.check is None else verdict)
        return Reply(refused.status, verdict.body, headers=dict(refused.headers))

    def _record(self, request: Request, status: Optional[int], verdict: Optional[Verdict]) -> None:
        request.status = status
        check = self.check
        if check is not None and verdict is not None:
            check.record(request, verdict)
        with self._cond:
            if check is None or check.keep:
                self._requests.append(request)
            self._cond.notify_all()

    def _answered(self, request: Request) -> None:
        if self.check is not None:
            self.check.answered(request)
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ results

    @property
    def requests(self) -> List[Request]:
        """Every request received, in order."""
        with self._cond:
            return list(self._requests)

    @property
    def accepted(self) -> List[Request]:
        """The requests answered with a 2xx status."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    @property
    def messages(self) -> List[Dict[str, Any]]:
        """The messages of accepted requests, in the order received."""
        return [m for r in self.accepted for m in r.messages]

    def clear(self) -> None:
        with self._cond:
            self._requests.clear()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(collector)`` is true; False at the timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages were accepted."""
        return self.wait_for(
            lambda c: sum(len(r.messages) for r in c._accepted_unlocked()) >= count, timeout
        )

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` requests arrived (whatever the answer)."""
        return self.wait_for(lambda c: len(c._requests) >= count, timeout)

    def _accepted_unlocked(self) -> Iterable[Request]:
        return (r for r in self._requests if r.status is not None and 200 <= r.status < 300)
