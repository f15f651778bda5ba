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


class SpoolError(SegmentError):
    """The disk spool could not be used, or lost events (a corrupt file, a failed write).

    ``path`` is the spool file or directory concerned; ``count`` is how many
    events were lost with it (0 when none were, or when that is unknown).
    """

    def __init__(self, reason: str, *, count: int = 0, path: Optional[str] = None) -> None:
        super().__init__(reason, count=count)
        self.path = path

    def __repr__(self) -> str:
        return f"SpoolError({self.reason!r}, count={self.count}, path={self.path!r})"


class Filtered(Exception):
    """Internal: ``before_send`` returned None. The message is not sent, and that is no
    error; the pipeline counts it as filtered. Never reaches the user."""
