"""Segment messages: building and checking them, their ids, their size limits.

Pure: no I/O, no threads, no clocks except to stamp a message that has no
timestamp. This is what conformance tests aim at.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from itertools import count
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from . import _lifecycle
from ._errors import InvalidMessage, MessageTooLarge
from ._json import bytes_to_str, encode_json, error_text, preview, safe_str
from ._segment import MAX_MESSAGE_BYTES, MAX_MESSAGE_ID_LENGTH, MESSAGE_TYPES
from ._timestamps import format_timestamp, normalize_timestamp
from ._version import __version__

__all__ = [
    "LIBRARY_NAME",
    "Encode",
    "Encoded",
    "build_message",
    "checked_size",
    "dict_field",
    "encode",
    "new_message_id",
    "plain_track",
    "plain_track_json",
    "reset_message_ids",
    "unreadable",
]

LIBRARY_NAME = "segmentio-logging"

# A queued item becomes its message and the message's encoded bytes. The message may be
# None when only the bytes were made; callbacks then get it decoded from the bytes.
Encoded = Tuple[Optional[Dict[str, Any]], bytes]
Encode = Callable[[Any], Encoded]


# --------------------------------------------------------------------------- ids


class _MessageIds:
    """Unique message ids: a random per-process prefix and a counter.

    Cheaper than a uuid4 per message and just as unique; the prefix is drawn
    again in a forked child so that parent and child never collide.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = uuid.uuid4().hex
        self._counter: Iterator[int] = count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


_ids = _MessageIds()
new_message_id = _ids.next
reset_message_ids = _ids.reset
# Or parent and child would send the same messageIds.
_lifecycle.on_fork_in_child(reset_message_ids)


# --------------------------------------------------------------------------- messages


def _text(value: Any) -> str:
    """``value`` as text: a str (its subclasses by the text they hold), else its ``str()``."""
    if type(value) is str:
        return value
    return str.__str__(value) if isinstance(value, str) else safe_str(value)


def _id(value: Any, name: str) -> Optional[str]:
    if value is None:
        return None
    if type(value) is str:
        return value or None
    if isinstance(value, str):
        return str.__str__(value) or None
    if isinstance(value, (bytes, bytearray)):
        return bytes_to_str(bytes(value)) or None
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        raise InvalidMessage(f"{name} must be a string or a number, got {type(value).__name__}")
    return safe_str(value) or None


def dict_field(value: Any, name: str) -> Optional[Dict[Any, Any]]:
    """Field ``name`` of a message as a dict (or ``None``); raises :class:`InvalidMessage`,
    also for a mapping that raises when it is read (through its own ``items()``)."""
    if value is None or type(value) is dict:
        return value
    if isinstance(value, Mapping):
        try:
            return dict(value.items())
        except Exception as exc:
            raise unreadable(name, exc) from exc
    raise InvalidMessage(f"{name} must be a dict, got {type(value).__name__}")


def unreadable(name: str, exc: Exception) -> InvalidMessage:
    """The error for field ``name``, whose value raised ``exc`` when it was read."""
    return InvalidMessage(f"{name} could not be read: {error_text(exc)}")


def build_message(
    kind: str,
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    event: Any = None,
    name: Any = None,
    category: Any = None,
    properties: Any = None,
    traits: Any = None,
    context: Any = None,
    integrations: Any = None,
    timestamp: Any = None,
    message_id: Any = None,
    group_id: Any = None,
    previous_id: Any = None,
    created: Optional[float] = None,
) -> Dict[str, Any]:
    """A Segment message of type ``kind``, validated.

    ``timestamp`` wins over ``created`` (epoch seconds, a log record's time);
    with neither, the message is stamped now. Raises :class:`InvalidMessage`
    with a reason a person can act on.
    """
    if type(kind) is not str and isinstance(kind, str):
        kind = str.__str__(kind)  # compared as the text it holds, not by its own __eq__
    if type(kind) is not str or kind not in MESSAGE_TYPES:
        raise InvalidMessage(
            f"segment_type must be one of {', '.join(MESSAGE_TYPES)}, got {preview(kind)}"
        )
    uid = _id(user_id, "user_id")
    aid = _id(anonymous_id, "anonymous_id")
    message: Dict[str, Any] = {"type": kind}
    if kind == "alias":
        previous = _id(previous_id, "previous_id")
        if previous is None or uid is None:
            raise InvalidMessage("alias needs both previous_id and user_id")
        message["previousId"] = previous
    elif uid is None and aid is None:
        raise InvalidMessage(f"{kind} needs a user_id or an anonymous_id (session_id)")
    if uid is not None:
        message["userId"] = uid
    if aid is not None:
        message["anonymousId"] = aid

    _add_fields_of_kind(message, kind, event, name, category, properties, traits, group_id)

    user_context = dict_field(context, "context")
    # A fresh library dict each time: a callback that edits one message edits no other.
    library = {"name": LIBRARY_NAME, "version": __version__}
    message["context"] = (
        {**user_context, "library": library} if user_context else {"library": library}
    )
    if integrations is not None:
        message["integrations"] = dict_field(integrations, "integrations")
    if timestamp is not None:
        message["timestamp"] = normalize_timestamp(timestamp)
    else:
        message["timestamp"] = format_timestamp(
            created if created is not None else dt.datetime.now(dt.timezone.utc).timestamp()
        )
    message["messageId"] = (
        new_message_id() if message_id is None else _checked_message_id(message_id)
    )
    return message


def _add_fields_of_kind(
    message: Dict[str, Any],
    kind: str,
    event: Any,
    name: Any,
    category: Any,
    properties: Any,
    traits: Any,
    group_id: Any,
) -> None:
    """The fields of a message of type ``kind`` beyond its ids (an alias has none);
    raises :class:`InvalidMessage`."""
    if kind == "track":
        text = event if type(event) is str else None if event is None else _text(event)
        if not text:
            raise InvalidMessage("track needs an event name")
        message["event"] = text
        message["properties"] = dict_field(properties, "properties") or {}
    elif kind == "identify":
        message["traits"] = dict_field(traits, "traits") or {}
    elif kind == "group":
        group = _id(group_id, "group_id")
        if group is None:
            raise InvalidMessage("group needs a group_id")
        message["groupId"] = group
        message["traits"] = dict_field(traits, "traits") or {}
    elif kind in ("page", "screen"):
        if name is not None:
            message["name"] = _text(name)
        if category is not None:
            message["category"] = _text(category)
        message["properties"] = dict_field(properties, "properties") or {}


def _checked_message_id(message_id: Any) -> str:
    """A message id given by the caller, as text; raises :class:`InvalidMessage` when it
    is empty or too long."""
    mid = _text(message_id)
    if not mid or len(mid) > MAX_MESSAGE_ID_LENGTH:
        raise InvalidMessage(
            f"message_id must be 1 to {MAX_MESSAGE_ID_LENGTH} characters, got {len(mid)}"
        )
    return mid


def checked_size(data: bytes) -> bytes:
    """``data``, one encoded message, if it is within Segment's 32 KB limit.

    Raises :class:`MessageTooLarge` with the size in its reason.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"message is {len(data):,} bytes, over Segment's 32 KB limit "
            f"({MAX_MESSAGE_BYTES:,} bytes)",
            size=len(data),
        )
    return data


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as UTF-8 JSON, checked against Segment's 32 KB limit.

    Uses orjson when it is installed (``pip install 'segmentio-logging[fast]'``),
    falling back to the standard library for anything orjson refuses; both give
    the same JSON values. Raises :class:`MessageTooLarge` with the size in its reason.
    """
    return checked_size(encode_json(message))


# --------------------------------------------------------------------------- plain tracks


def plain_track(
    uid: Any, aid: Any, event: Any, properties: Any, created: float
) -> Optional[Dict[str, Any]]:
    """The common case built directly: string ids and event, a dict of properties or none.

    The same message as :func:`build_message` makes, key for key; ``None`` when the
    values need the general path (which also gives the errors).
    """
    if (uid is not None and type(uid) is not str) or (aid is not None and type(aid) is not str):
        return None
    if (
        type(event) is not str
        or not event
        or (properties is not None and type(properties) is not dict)
    ):
        return None
    message: Dict[str, Any] = {"type": "track"}
    if uid:
        message["userId"] = uid
    if aid:
        message["anonymousId"] = aid
    message["event"] = event
    message["properties"] = {} if properties is None else properties
    message["context"] = {"library": {"name": LIBRARY_NAME, "version": __version__}}
    message["timestamp"] = format_timestamp(created)
    message["messageId"] = new_message_id()
    return message


_quote = json.encoder.encode_basestring  # a JSON string, quoted; non-ASCII kept as is
# What follows "properties" in every plain track message, up to the timestamp's value.
_TRACK_CONTEXT = (
    ',"context":{"library":'
    + json.dumps({"name": LIBRARY_NAME, "version": __version__}, separators=(",", ":"))
    + '},"timestamp":"'
)


def plain_track_json(
    uid: Optional[str], aid: Optional[str], event: str, properties: str, created: float
) -> Optional[bytes]:
    """The JSON of the message :func:`plain_track` builds, key for key, spliced around
    ``properties`` already in JSON; ``None`` when a string holds lone surrogates (the
    general encoder escapes them). Not checked against the 32 KB limit."""
    head = '{"type":"track"'
    if uid:
        head += ',"userId":' + _quote(uid)
    if aid:
        head += ',"anonymousId":' + _quote(aid)
    # The timestamp and messageId need no escaping: ASCII digits, letters and punctuation.
    text = (
        f'{head},"event":{_quote(event)},"properties":{properties}{_TRACK_CONTEXT}'
        f'{format_timestamp(created)}","messageId":"{new_message_id()}"}}'
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None
