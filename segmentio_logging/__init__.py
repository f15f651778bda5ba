"""Segment analytics for Python's standard ``logging``.

Add :class:`SegmentHandler` to a logger and every record that carries a
``user_id`` or ``anonymous_id`` in its ``extra`` becomes a Segment message,
delivered in batches by a background thread. The classic client calls
(``init``, ``identify``, ``track``...) ride the same pipeline.
"""

from __future__ import annotations

from ._classic import (
    alias,
    flush,
    group,
    identify,
    init,
    on_failure,
    on_success,
    page,
    persist,
    screen,
    shutdown,
    stats,
    track,
)
from ._client import Client
from ._connection import ClearTextWarning
from ._context import (
    BoundIdentityFilter,
    SegmentLoggerAdapter,
    bind,
    current_identity,
    identified,
    unbind,
)
from ._errors import (
    ClosedError,
    DeliveryError,
    InvalidMessage,
    MessageTooLarge,
    QueueFull,
    SegmentError,
    SpoolError,
)
from ._handler import SegmentHandler, SegmentQueueListener
from ._transport import Response
from ._version import __version__

__all__ = [
    "BoundIdentityFilter",
    "ClearTextWarning",
    "Client",
    "ClosedError",
    "DeliveryError",
    "InvalidMessage",
    "MessageTooLarge",
    "QueueFull",
    "Response",
    "SegmentError",
    "SegmentHandler",
    "SegmentLoggerAdapter",
    "SegmentQueueListener",
    "SpoolError",
    "__version__",
    "alias",
    "bind",
    "current_identity",
    "flush",
    "group",
    "identified",
    "identify",
    "init",
    "on_failure",
    "on_success",
    "page",
    "persist",
    "screen",
    "shutdown",
    "stats",
    "track",
    "unbind",
]
