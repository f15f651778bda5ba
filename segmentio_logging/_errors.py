"""The exception tree. Every error that reaches ``on_failure`` is a ``SegmentError``."""

from __future__ import annotations

from typing import Optional


class SegmentError(Exception):
    """Base class of every error this package raises or reports.

    ``count`` is how many messages the error covers.
    """

    def __init__(self, reason: str, *, count: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.count = count

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, count={self.count})"


class InvalidMessage(SegmentError, ValueError):
    """A call or log record that cannot become a valid Segment message."""


class MessageTooLarge(InvalidMessage):
    """A message over Segment's 32 KB limit; it is never sent."""

    def __init__(self, reason: str, *, size: int) -> None:
        super().__init__(reason)
        self.size = size


class QueueFull(SegmentError):
    """Messages dropped because ``max_queue_size`` messages were already waiting."""


class ClosedError(SegmentError):
    """Messages given to a handler or client after it was closed."""


class DeliveryError(SegmentError):
    """A batch the receiver did not accept.

    ``status`` is the HTTP status (``None`` for a network error), ``body`` the
    response text, ``attempts`` how many requests were made for it.
    """

    def __init__(
        self,
        reason: str,
        *,
        count: int,
        status: Optional[int] = None,
        body: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(reason, count=count)
        self.status = status
        self.body = body
        self.attempts = attempts

    def __repr__(self) -> str:
        return (
            f"DeliveryError({self.reason!r}, count={self.count}, status={self.status}, "
            f"attempts={self.attempts})"
        )
