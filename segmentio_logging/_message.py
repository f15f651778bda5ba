"""Calls and log records to Segment messages, and messages to JSON.

Pure: no I/O, no threads, no clocks except to stamp a message that has no
timestamp. This is what conformance tests aim at.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping
from decimal import Decimal
from itertools import count
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._errors import InvalidMessage, MessageTooLarge
from ._version import __version__

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_COUNT",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TYPES",
    "RESERVED_FIELDS",
    "RecordMapper",
    "build_message",
    "encode",
    "format_timestamp",
    "to_json_safe",
]

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500_000
MAX_BATCH_COUNT = 2_500
MAX_MESSAGE_ID_LENGTH = 100
MAX_DEPTH = 64

LIBRARY_NAME = "segmentio-logging"
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

# Attributes every LogRecord has; with ``capture_extra`` the others become properties.
_STANDARD_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


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
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.reset)


# --------------------------------------------------------------------------- time

_second_cache: Tuple[int, str] = (-1, "")


def format_timestamp(epoch: float) -> str:
    """ISO-8601 in UTC with milliseconds, as Segment writes it: ``2026-01-02T03:04:05.678Z``."""
    global _second_cache
    second = int(epoch // 1)
    millis = int((epoch - second) * 1000)
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = (_EPOCH + dt.timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{millis:03d}Z"


def _format_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)  # naive datetimes are taken as UTC
    value = value.astimezone(_UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def normalize_timestamp(value: Any) -> str:
    """A ``timestamp=`` value (datetime, date, ISO-8601 string or epoch seconds) as ISO-8601 UTC."""
    if isinstance(value, dt.datetime):
        return _format_datetime(value)
    if isinstance(value, dt.date):
        return _format_datetime(dt.datetime(value.year, value.month, value.day))
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds) or not -62_135_596_800 <= seconds < 253_402_300_800:
            raise InvalidMessage(f"timestamp {value!r} is not a valid number of epoch seconds")
        return format_timestamp(seconds)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidMessage(
                f"timestamp {_preview(value)} is not ISO-8601 (for example '2026-01-02T03:04:05Z')"
            ) from None
        return _format_datetime(parsed)
    raise InvalidMessage(
        f"timestamp must be a datetime, an ISO-8601 string or epoch seconds, "
        f"got {type(value).__name__}"
    )


# --------------------------------------------------------------------------- JSON


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__qualname__} object>"


def _preview(value: Any, limit: int = 60) -> str:
    text = _safe_str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _bytes_to_str(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def _default(value: Any) -> Any:
    """Convert one value that ``json`` cannot carry; the result may need converting again."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_UTC)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=lambda item: (type(item).__name__, _safe_str(item)))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_to_str(bytes(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    return _safe_str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float) and not math.isfinite(key):
        return _safe_str(key)
    if isinstance(key, (int, float)):
        return repr(key) if type(key) in (int, float) else _safe_str(key)
    converted = _default(key)
    return converted if isinstance(converted, str) else _safe_str(converted)


def to_json_safe(value: Any) -> Any:
    """A deterministic copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts.

    Never raises: cycles become ``"<cycle>"``, nesting deeper than 64 becomes
    ``"<too deep>"``, NaN and infinities become ``None``, and whatever has no
    JSON form becomes its ``str()``.
    """
    return _safe(value, set(), 0)


def _safe(value: Any, seen: set[int], depth: int) -> Any:
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (int, float)) and not isinstance(value, enum.Enum):
        number = float(value) if isinstance(value, float) else int(value)
        return number if not isinstance(number, float) or math.isfinite(number) else None
    if depth >= MAX_DEPTH:
        return "<too deep>"
    marker = id(value)
    if marker in seen:
        return "<cycle>"
    is_container = isinstance(value, (Mapping, list, tuple))
    if not is_container:
        converted = _default(value)
        if isinstance(converted, (str, int, float)) or converted is None:
            return _safe(converted, seen, depth)
        seen.add(marker)
        try:
            return _safe(converted, seen, depth + 1)
        finally:
            seen.discard(marker)
    seen.add(marker)
    try:
        if isinstance(value, Mapping):
            out: Dict[str, Any] = {}
            try:
                items = list(value.items())
            except Exception:
                return _safe_str(value)
            for key, item in items:
                out[_key(key)] = _safe(item, seen, depth + 1)
            return out
        return [_safe(item, seen, depth + 1) for item in value]
    finally:
        seen.discard(marker)


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
)
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON of any value; never raises (see :func:`to_json_safe`)."""
    try:
        return _encoder.encode(value)
    except (ValueError, TypeError, RecursionError):
        return _encoder.encode(to_json_safe(value))


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as UTF-8 JSON, checked against Segment's 32 KB limit.

    Raises :class:`MessageTooLarge` with the size in its reason.
    """
    text = dumps(message)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them instead
        data = _ascii_encoder.encode(json.loads(text)).encode("ascii")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"message is {len(data):,} bytes, over Segment's 32 KB limit "
            f"({MAX_MESSAGE_BYTES:,} bytes)",
            size=len(data),
        )
    return data


# --------------------------------------------------------------------------- messages


def _id(value: Any, name: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, (bytes, bytearray)):
        return _bytes_to_str(bytes(value)) or None
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        raise InvalidMessage(f"{name} must be a string or a number, got {type(value).__name__}")
    return _safe_str(value) or None


def _mapping(value: Any, name: str) -> Optional[Dict[Any, Any]]:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value if type(value) is dict else dict(value)
    raise InvalidMessage(f"{name} must be a dict, got {type(value).__name__}")


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
    if kind not in MESSAGE_TYPES:
        raise InvalidMessage(
            f"segment_type must be one of {', '.join(MESSAGE_TYPES)}, got {_preview(kind)}"
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

    if kind == "track":
        if event is None or event == "":
            raise InvalidMessage("track needs an event name")
        message["event"] = event if isinstance(event, str) else _safe_str(event)
        message["properties"] = _mapping(properties, "properties") or {}
    elif kind == "identify":
        message["traits"] = _mapping(traits, "traits") or {}
    elif kind == "group":
        group = _id(group_id, "group_id")
        if group is None:
            raise InvalidMessage("group needs a group_id")
        message["groupId"] = group
        message["traits"] = _mapping(traits, "traits") or {}
    elif kind in ("page", "screen"):
        if name is not None:
            message["name"] = name if isinstance(name, str) else _safe_str(name)
        if category is not None:
            message["category"] = category if isinstance(category, str) else _safe_str(category)
        message["properties"] = _mapping(properties, "properties") or {}

    user_context = _mapping(context, "context")
    message["context"] = (
        {**user_context, "library": _LIBRARY} if user_context else {"library": _LIBRARY}
    )
    if integrations is not None:
        message["integrations"] = _mapping(integrations, "integrations")
    if timestamp is not None:
        message["timestamp"] = normalize_timestamp(timestamp)
    else:
        message["timestamp"] = format_timestamp(
            created if created is not None else dt.datetime.now(_UTC).timestamp()
        )
    if message_id is None:
        message["messageId"] = new_message_id()
    else:
        mid = _safe_str(message_id)
        if not mid or len(mid) > MAX_MESSAGE_ID_LENGTH:
            raise InvalidMessage(
                f"message_id must be 1 to {MAX_MESSAGE_ID_LENGTH} characters, got {len(mid)}"
            )
        message["messageId"] = mid
    return message


_LIBRARY = {"name": LIBRARY_NAME, "version": __version__}


# --------------------------------------------------------------------------- records


def _snapshot(value: Any) -> Any:
    """Copy the containers a caller may mutate after logging; leave the rest as is."""
    kind = type(value)
    if kind is dict:
        return {key: _snapshot(item) for key, item in value.items()}
    if kind is list:
        return [_snapshot(item) for item in value]
    if kind is set:
        return set(value)
    return value


class RecordMapper:
    """Maps ``LogRecord`` objects to Segment messages, in two steps.

    :meth:`capture` runs on the logging thread: it reads the record's ids and
    reserved ``extra`` keys and copies the mutable ones, so that a caller that
    changes its ``properties`` dict after logging does not change what is sent.
    :meth:`build` runs on the worker and makes the message from that capture.
    """

    __slots__ = ("_aid", "_attrs", "_capture_extra", "_reserved_attrs", "_session_attr", "_uid")

    def __init__(
        self, field_names: Optional[Mapping[str, str]] = None, capture_extra: bool = False
    ):
        names = {key: key for key in RESERVED_FIELDS}
        names.update(field_names or {})
        self._uid = names["user_id"]
        self._aid = names["anonymous_id"]
        self._session_attr = SESSION_ID if names["anonymous_id"] == "anonymous_id" else None
        self._attrs: Tuple[Tuple[str, str], ...] = tuple(
            sorted(
                (key, attr) for key, attr in names.items() if key not in ("user_id", "anonymous_id")
            )
        )
        self._reserved_attrs = frozenset(names.values()) | {SESSION_ID}
        self._capture_extra = capture_extra
        clash = sorted(self._reserved_attrs & _STANDARD_RECORD_ATTRS)
        if clash:
            raise ValueError(
                f"field_names: {', '.join(clash)} is a LogRecord attribute and cannot carry "
                "a Segment field"
            )

    def capture(self, record: logging.LogRecord) -> Optional[Dict[str, Any]]:
        """What to keep of ``record``, or ``None`` when it carries no user or anonymous id."""
        attrs = record.__dict__
        uid = attrs.get(self._uid)
        aid = attrs.get(self._aid)
        if aid is None and self._session_attr is not None:
            aid = attrs.get(self._session_attr)
        if uid is None and aid is None:
            return None
        captured: Dict[str, Any] = {"user_id": uid, "anonymous_id": aid, "created": record.created}
        for key, attr in self._attrs:
            if attr in attrs:
                captured[key] = _snapshot(attrs[attr])
        if "event" not in captured or "segment_type" in captured:
            if record.args or type(record.msg) is not str:
                try:
                    captured["text"] = record.getMessage()
                except Exception:
                    captured["text"] = _safe_str(record.msg)
            else:
                captured["text"] = record.msg
        if self._capture_extra:
            reserved = self._reserved_attrs
            extra = {
                key: _snapshot(value)
                for key, value in attrs.items()
                if key not in _STANDARD_RECORD_ATTRS and key not in reserved and key[:1] != "_"
            }
            if extra:
                captured["extra"] = extra
        return captured

    @staticmethod
    def build(captured: Mapping[str, Any]) -> Dict[str, Any]:
        """The message for a capture; raises :class:`InvalidMessage`."""
        get = captured.get
        kind = get("segment_type")
        if kind is None:
            if get("previous_id") is not None:
                kind = "alias"
            elif get("group_id") is not None:
                kind = "group"
            elif get("traits") is not None and get("event") is None:
                kind = "identify"
            else:
                kind = "track"
        elif isinstance(kind, str):
            kind = kind.strip().lower()
        properties = get("properties")
        traits = get("traits")
        extra = get("extra")
        if extra:
            # Explicit properties or traits win over the record's other attributes.
            if kind in ("identify", "group"):
                traits = {**extra, **(_mapping(traits, "traits") or {})}
            elif kind != "alias":
                properties = {**extra, **(_mapping(properties, "properties") or {})}
        event = get("event")
        name = None
        if kind == "track" and event is None:
            event = get("text")
        elif kind in ("page", "screen"):
            name = get("text")
        return build_message(
            kind,
            user_id=get("user_id"),
            anonymous_id=get("anonymous_id"),
            event=event,
            name=name,
            category=get("category"),
            properties=properties,
            traits=traits,
            context=get("context"),
            integrations=get("integrations"),
            timestamp=get("timestamp"),
            message_id=get("message_id"),
            group_id=get("group_id"),
            previous_id=get("previous_id"),
            created=get("created"),
        )


def batch_envelope(write_key: Optional[str], sent_at: str) -> bytes:
    """The bytes that close a batch body after its messages."""
    tail: Dict[str, Any] = {"sentAt": sent_at}
    if write_key:
        tail["writeKey"] = write_key
    return b"]," + json.dumps(tail, separators=(",", ":"))[1:].encode("utf-8")


def batch_body(parts: List[bytes], write_key: Optional[str], sent_at: str) -> bytes:
    """``{"batch": [...], "sentAt": ..., "writeKey": ...}`` from encoded messages, in one pass."""
    return b'{"batch":[' + b",".join(parts) + batch_envelope(write_key, sent_at)


def envelope_size(write_key: Optional[str]) -> int:
    """Bytes a batch body adds to its messages (an upper bound)."""
    return len(b'{"batch":[') + len(batch_envelope(write_key, "2026-01-01T00:00:00.000Z"))
