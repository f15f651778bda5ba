"""What a :class:`~segmentio_logging.testing.LocalCollector` records and how it answers:
:class:`Request` (one request received), :class:`Reply` (a scripted answer) and
:class:`RequestCheck` (what a ``check`` runs on each request)."""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol

from ._spec import SINGLE_CALL_PATHS, Verdict, basic_auth_user
from ._transport import BATCH_PATH


@dataclass(frozen=True)
class Reply:
    """How the collector answers one request.

    ``body`` defaults to ``{"success":true}`` for a 2xx status and to an error
    object naming the status otherwise. ``delay`` waits before answering;
    ``reset`` closes the connection with a TCP reset instead of answering;
    ``hang`` keeps it open without an answer until the collector stops (or
    :meth:`LocalCollector.release_hangs`).
    """

    status: int = 200
    body: Optional[str] = None
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    hang: bool = False

    @property
    def text(self) -> str:
        """The body sent: ``body``, or the default for the status."""
        if self.body is not None:
            return self.body
        if 200 <= self.status < 300:
            return '{"success":true}'
        return json.dumps({"error": f"HTTP {self.status}"}, separators=(",", ":"))

    @classmethod
    def retry_after(cls, seconds: float, status: int = 429, *, http_date: bool = False) -> Reply:
        """A ``status`` reply whose ``Retry-After`` asks for ``seconds``.

        With ``http_date`` the header is an HTTP date at least ``seconds`` from
        now (HTTP dates have whole seconds, so it is rounded up).
        """
        if http_date:
            value = email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
        else:
            value = f"{seconds:g}"
        return cls(status=status, body='{"error":"rate limited"}', headers={"Retry-After": value})


@dataclass
class Request:
    """One request the collector received."""

    method: str
    path: str
    headers: Dict[str, str]
    raw: bytes
    body: Any
    status: Optional[int]
    received_at: float
    connection: int = 0
    """Which TCP connection carried it (1, 2, ... in order of arrival): shows keep-alive."""

    @property
    def write_key(self) -> Optional[str]:
        """The user name of the Basic auth header (Segment's write key), if any."""
        return basic_auth_user(self.headers)

    @property
    def messages(self) -> List[Dict[str, Any]]:
        """The messages the request carried (the batch, or the one single-call message)."""
        if not isinstance(self.body, dict):
            return []
        if self.path.rstrip("/") == BATCH_PATH:
            batch = self.body.get("batch")
            return [m for m in batch if isinstance(m, dict)] if isinstance(batch, list) else []
        kind = SINGLE_CALL_PATHS.get(self.path.rstrip("/"))
        if kind is not None:
            return [{"type": kind, **self.body}]
        return []


class RequestCheck(Protocol):
    """What a :class:`LocalCollector` given a ``check`` runs on every request it reads.

    ``segmentio-logging collect`` gives one that holds each request to
    Segment's spec. The calls run on the thread serving the request, in order:
    :meth:`inspect` once the request was read, :meth:`record` once its answer
    is chosen, :meth:`answered` once that answer went out. A request the
    receiver refuses itself (over a limit, a body it cannot frame, gzip that
    does not decompress) skips :meth:`inspect`: :meth:`record` gets the
    receiver's verdict.
    """

    keep: bool
    """Whether the collector keeps the requests too (False: a long run does not grow, and
    the collector does not decode the JSON of a body for itself: ``Request.body`` is None)."""

    def inspect(self, request: Request) -> Verdict:
        """The verdict on ``request``; its status and body answer a request nothing scripted."""

    def record(self, request: Request, verdict: Verdict) -> None:
        """``request``, with the status it is answered with (None: a reset or a hang)."""

    def answered(self, request: Request) -> None:
        """The answer to ``request`` went out (or its client had gone); never after a reset
        or a hang, which send none."""
