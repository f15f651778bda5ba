"""What every layer agrees on: Segment's API limits and the handler's ``extra`` keys."""

from __future__ import annotations

import logging

__all__ = [
    "IDENTITY_ATTR",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_COUNT",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ID_LENGTH",
    "MESSAGE_TYPES",
    "RECORD_ATTR_COUNT",
    "RESERVED_FIELDS",
    "SESSION_ID",
    "STANDARD_RECORD_ATTRS",
]

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500_000
MAX_BATCH_COUNT = 2_500
MAX_MESSAGE_ID_LENGTH = 100

MESSAGE_TYPES = ("track", "identify", "group", "alias", "page", "screen")

# The ``extra`` keys a log record may carry; each can be renamed by option.
RESERVED_FIELDS = frozenset(
    {
        "user_id",
        "anonymous_id",
        "event",
        "properties",
        "traits",
        "context",
        "integrations",
        "timestamp",
        "message_id",
        "group_id",
        "previous_id",
        "category",
        "segment_type",
    }
)
SESSION_ID = "session_id"  # the original client's name for anonymous_id

# The record attribute BoundIdentityFilter sets: the identity where the record was made.
IDENTITY_ATTR = "_segment_identity"

# How many attributes LogRecord.__init__ sets: a record with just these and the fields a
# plain track reads has no other field (custom factories' additions make it longer).
RECORD_ATTR_COUNT = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)

# Attributes every LogRecord has: no reserved key may be one (logging raises KeyError
# for them in ``extra``), and with ``capture_extra`` the others become properties.
STANDARD_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
