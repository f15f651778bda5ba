"""What the handler's queue holds of a log record: the two layouts of a capture.

:mod:`segmentio_logging._capture` makes captures on the caller's thread and turns
them into messages on the worker; this module names the places of their fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Final, Literal, Optional, Tuple, Union

__all__ = [
    "GENERAL",
    "GENERAL_ANONYMOUS_ID",
    "GENERAL_BOUND",
    "GENERAL_COPIES",
    "GENERAL_CREATED",
    "GENERAL_EXTRA",
    "GENERAL_FIELDS",
    "GENERAL_TEXT",
    "GENERAL_USER_ID",
    "KIND",
    "TRACK_ANONYMOUS_ID",
    "TRACK_CREATED",
    "TRACK_EVENT",
    "TRACK_NAMED_BY_EVENT",
    "TRACK_NAMED_BY_TEXT",
    "TRACK_PROPERTIES",
    "TRACK_USER_ID",
    "Captured",
    "GeneralCapture",
    "TrackCapture",
    "TrackKind",
]

# A capture is a plain tuple whose first item, at KIND, says which of two layouts
# follows. Not a NamedTuple or a class with __slots__: those cost several times as
# much to build on the caller's thread, and the garbage collector untracks only
# exact tuples.
KIND: Final = 0

# A plain track record (string ids and event, a dict of properties or none, no other
# reserved field): (kind, user id, anonymous id, event, properties, record time). The
# kind also says what named the track: the record's ``event``, or its message text.
# Only strings and a float (the properties as a JSON string when orjson is there, else
# a copy): the garbage collector stops scanning such a tuple, however many are queued.
TRACK_NAMED_BY_EVENT: Final = "track named by event"
TRACK_NAMED_BY_TEXT: Final = "track named by text"
TrackKind = Literal["track named by event", "track named by text"]
TRACK_USER_ID: Final = 1
TRACK_ANONYMOUS_ID: Final = 2
TRACK_EVENT: Final = 3
TRACK_PROPERTIES: Final = 4
TRACK_CREATED: Final = 5
TrackCapture = Tuple[
    TrackKind,
    Optional[str],
    Optional[str],
    str,
    Union[str, Dict[str, Any], None],
    float,
]

# Any other record: (GENERAL, fields, user id, anonymous id, copies of the mutable
# fields, formatted text, other attributes, bound identity, record time).
GENERAL: Final = "general"
GENERAL_FIELDS: Final = 1
GENERAL_USER_ID: Final = 2
GENERAL_ANONYMOUS_ID: Final = 3
GENERAL_COPIES: Final = 4
GENERAL_TEXT: Final = 5
GENERAL_EXTRA: Final = 6
GENERAL_BOUND: Final = 7
GENERAL_CREATED: Final = 8
GeneralCapture = Tuple[
    Literal["general"],
    Mapping[str, Any],
    Any,
    Any,
    Optional[Dict[str, Any]],
    Optional[str],
    Optional[Dict[str, Any]],
    Optional[Mapping[str, Any]],
    float,
]

Captured = Union[GeneralCapture, TrackCapture]
