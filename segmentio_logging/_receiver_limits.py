"""What one client may make the receiver hold (:class:`Limits`), and :class:`Refused`, the
answer the receiver gives itself to a request past them, whatever was scripted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

# Segment takes 500 KB per request and 32 KB per message; a client within them is never
# refused here, whatever its encoding.
MAX_REQUEST_BYTES = 1 << 20
MAX_DECODED_BYTES = 4 << 20
MAX_HEAD_BYTES = 64 << 10
IDLE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64


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
