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
import uuid
from collections.abc import Mapping
from decimal import Decimal
from itertools import count
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from ._errors import InvalidMessage, MessageTooLarge
from ._version import __version__

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_COUNT",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TYPES",
    "RESERVED_FIELDS",
    "RecordMapper",
    "batch_body",
    "build_message",
    "dumps",
    "encode",
    "envelope_size",
    "format_timestamp",
    "normalize_timestamp",
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
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


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
reset_message_ids = _ids.reset  # the pipeline registers it to run in a forked child


# --------------------------------------------------------------------------- time

_second_cache: Tuple[int, str] = (-1, "")

# Epoch seconds of 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z: the years ISO-8601 can write.
_MIN_EPOCH = -62_135_596_800
_MAX_EPOCH = 253_402_300_800


def _second_prefix(value: dt.datetime) -> str:
    # Not strftime: on some platforms "%Y" does not pad years below 1000 to four digits.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )


def format_timestamp(epoch: float) -> str:
    """ISO-8601 in UTC with milliseconds, as Segment writes it: ``2026-01-02T03:04:05.678Z``.

    Raises :class:`InvalidMessage` for a value that is not finite or outside years 1 to 9999.
    """
    global _second_cache
    if type(epoch) is float and 0.0 <= epoch < _MAX_EPOCH:
        # The common case, a LogRecord's time within the cached second.
        fast = round(epoch * 1_000_000)
        second = fast // 1_000_000
        cached_second, prefix = _second_cache
        if cached_second == second:
            return prefix + _MILLIS[(fast - second * 1_000_000) // 1000]
    micros: Optional[int]
    try:
        # Round to microseconds first, as datetime does: 1.123 is 1.12299999... as a float.
        micros = round(epoch * 1_000_000)
    except (TypeError, ValueError, OverflowError):
        micros = None
    if micros is None or not _MIN_EPOCH * 1_000_000 <= micros < _MAX_EPOCH * 1_000_000:
        raise InvalidMessage(f"timestamp {epoch!r} is not a valid number of epoch seconds")
    second, rest = divmod(micros, 1_000_000)
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = _second_prefix(_EPOCH_NAIVE + dt.timedelta(seconds=second))
        _second_cache = (second, prefix)
    return f"{prefix}.{rest // 1000:03d}Z"


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def _format_datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        try:
            value = value.astimezone(_UTC)
        except (OverflowError, ValueError):
            raise InvalidMessage(
                f"timestamp {_preview(value)} is outside the years ISO-8601 can write in UTC"
            ) from None
    # naive datetimes are taken as UTC
    return f"{_second_prefix(value)}.{value.microsecond // 1000:03d}Z"


def normalize_timestamp(value: Any) -> str:
    """A ``timestamp=`` value (datetime, date, ISO-8601 string or epoch seconds) as ISO-8601 UTC.

    Naive datetimes and ISO strings without an offset are taken as UTC. Raises
    :class:`InvalidMessage` saying what was wrong with ``value``.
    """
    if isinstance(value, dt.datetime):
        return _format_datetime(value)
    if isinstance(value, dt.date):
        return _format_datetime(dt.datetime(value.year, value.month, value.day))
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except (ValueError, OverflowError):  # signaling NaN, ints beyond a float
            seconds = math.nan
        if not math.isfinite(seconds) or not _MIN_EPOCH <= seconds < _MAX_EPOCH:
            raise InvalidMessage(
                f"timestamp {_preview(value)} is not a valid number of epoch seconds"
            )
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


def _sorted_items(value: Any) -> List[Any]:
    try:
        return sorted(value)
    except Exception:  # mixed or unorderable items: order by type, then text
        return sorted(value, key=lambda item: (type(item).__name__, _safe_str(item)))


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
        return _sorted_items(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_to_str(bytes(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    return _safe_str(value)


def _convert(value: Any) -> Any:
    """:func:`_default` that never raises: whatever fails to convert becomes its ``str()``."""
    try:
        return _default(value)
    except Exception:
        return _safe_str(value)


def _int(value: int) -> Optional[int]:
    # Python 3.11+ refuses to write ints of more than 4,300 digits (sys.set_int_max_str_digits);
    # such a number is beyond any float as well, so it goes the way of infinity: null.
    if value.bit_length() < 2_000:
        return value
    try:
        int.__repr__(value)
    except ValueError:
        return None
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    # As json writes them: int and float subclasses (IntEnum...) by their number.
    if isinstance(key, int):
        try:
            return int.__repr__(key)
        except ValueError:  # too many digits
            return _safe_str(key)
    if isinstance(key, float):
        return float.__repr__(key) if math.isfinite(key) else _safe_str(key)
    converted = _convert(key)
    return converted if isinstance(converted, str) else _safe_str(converted)


def to_json_safe(value: Any) -> Any:
    """A deterministic copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts.

    Never raises: cycles become ``"<cycle>"``, nesting deeper than 64 becomes
    ``"<too deep>"``, NaN and infinities become ``None``, and whatever has no
    JSON form becomes its ``str()`` (``repr()``, or a placeholder, if that raises).
    """
    return _safe(value, set(), 0)


def _safe(value: Any, seen: set[int], depth: int) -> Any:
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return _int(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (int, float)) and not isinstance(value, enum.Enum):
        # As json writes subclasses: by the number they hold, not their own __int__/__float__.
        if isinstance(value, int):
            return _int(int.__int__(value))
        number = float.__float__(value)
        return number if math.isfinite(number) else None
    if depth >= MAX_DEPTH:
        return "<too deep>"
    marker = id(value)
    if marker in seen:
        return "<cycle>"
    is_container = isinstance(value, (Mapping, list, tuple))
    if not is_container:
        converted = _convert(value)
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
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_convert
)


def dumps(value: Any) -> str:
    """Compact JSON of any value; never raises (see :func:`to_json_safe`).

    The result may hold lone surrogates; :func:`encode` escapes them.
    """
    try:
        return _encoder.encode(value)
    except Exception:  # NaN, cycles, deep nesting, keys json refuses, huge ints...
        return _encoder.encode(to_json_safe(value))


try:  # the ``fast`` extra: about eight times faster than the standard library here
    import orjson

    def _fast_encode(message: Mapping[str, Any]) -> Optional[bytes]:
        try:
            return orjson.dumps(message, default=_convert, option=_ORJSON_OPTIONS)
        except Exception:  # big ints, non-str keys, lone surrogates, cycles: the stdlib path
            return None

    # Datetimes and dataclasses go through _convert, as on the standard library path.
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    FAST_JSON: Optional[Callable[[Mapping[str, Any]], Optional[bytes]]] = _fast_encode
    # Without a ``default``: raises on anything but JSON's own types, and so never calls
    # user code. The handler snapshots plain properties with it on the caller's thread.
    PLAIN_JSON: Optional[Callable[..., bytes]] = orjson.dumps
    # Subclasses of dict, list, str and int refused too: a copy reads them through their
    # own items() and __iter__, which orjson would not call.
    _PLAIN_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_PASSTHROUGH_SUBCLASS
except ImportError:  # pragma: no cover - depends on the environment
    FAST_JSON = None
    PLAIN_JSON = None
    _ORJSON_OPTIONS = _PLAIN_OPTIONS = 0


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as UTF-8 JSON, checked against Segment's 32 KB limit.

    Uses orjson when it is installed (``pip install 'segmentio-logging[fast]'``),
    falling back to the standard library for anything orjson refuses; both give
    the same JSON values. Raises :class:`MessageTooLarge` with the size in its reason.
    """
    data = FAST_JSON(message) if FAST_JSON is not None else None
    if data is None:
        text = dumps(message)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates, which UTF-8 cannot carry; they only occur inside JSON strings,
            # where backslashreplace writes exactly the JSON escape: \ud800.
            data = text.encode("utf-8", "backslashreplace")
    return _checked_size(data)


def _checked_size(data: bytes) -> bytes:
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
    if value is None or type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
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
    # A fresh library dict each time: a callback that edits one message edits no other.
    library = {"name": LIBRARY_NAME, "version": __version__}
    message["context"] = (
        {**user_context, "library": library} if user_context else {"library": library}
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


# --------------------------------------------------------------------------- records


def _snapshot(value: Any) -> Any:
    """Copy the containers a caller may mutate after logging; leave the rest as is.

    Dicts (and their subclasses) become dicts, lists lists, sets sets, tuples are
    rebuilt around copied items; other mappings and dataclass instances become
    dicts, as JSON will show them. Shared and self-referential containers stay
    shared and self-referential in the copy, so that the JSON made from it is the
    JSON the original would have made; nesting deeper than 64 becomes ``"<too deep>"``.
    Other objects are kept as they are and read when the message is encoded.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if not isinstance(value, _CONTAINERS):
        # A mapping is copied into a dict; other objects (a dataclass given as
        # ``properties``, say) are left for validation to refuse.
        return _copy_leaf(value, {}, 0) if isinstance(value, Mapping) else value
    if kind is dict and isinstance(value, dict):
        for item in value.values():
            if type(item) not in _SCALARS:
                break
        else:
            return value.copy()  # the common case: a flat dict of scalars, copied in one call
    return _copy_tree(value, {}, 0)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = (dict, list, tuple, set, bytearray)
# Leaves known to be immutable: kept without further checks.
_IMMUTABLE = frozenset(
    {dt.datetime, dt.date, dt.time, dt.timedelta, Decimal, uuid.UUID, bytes, complex, frozenset}
)


def _copy_leaf(value: Any, memo: Dict[int, Any], depth: int) -> Any:
    """A value that is not a scalar: containers are copied, mappings and dataclasses
    become dicts (copied), anything else is kept."""
    if isinstance(value, _CONTAINERS):
        return _copy_tree(value, memo, depth)
    if type(value) in _IMMUTABLE or isinstance(value, enum.Enum):
        return value
    done = memo.get(id(value))  # keyed by the original, which lives through the copy
    if done is not None:
        return done
    try:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            pairs = [(f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value)]
        else:
            return value
    except Exception:  # a mapping that fails to iterate: left for the encoder to convert
        return value
    if depth >= MAX_DEPTH:
        return "<too deep>"
    mapping: Dict[Any, Any] = {}
    memo[id(value)] = mapping
    for key, item in pairs:
        mapping[key] = item if type(item) in _SCALARS else _copy_leaf(item, memo, depth + 1)
    return mapping


def _copy_tree(value: Any, memo: Dict[int, Any], depth: int) -> Any:
    # ``value`` is one of _CONTAINERS; runs on the logging thread, so leaves are
    # tested inline rather than by a call each.
    done = memo.get(id(value))
    if done is not None:
        return done
    if depth >= MAX_DEPTH:
        return "<too deep>"
    depth += 1
    if isinstance(value, dict):
        mapping: Dict[Any, Any] = {}
        memo[id(value)] = mapping
        for key, item in value.items():
            mapping[key] = item if type(item) in _SCALARS else _copy_leaf(item, memo, depth)
        return mapping
    if isinstance(value, list):
        items: List[Any] = []
        memo[id(value)] = items
        for item in value:
            items.append(item if type(item) in _SCALARS else _copy_leaf(item, memo, depth))
        return items
    if isinstance(value, tuple):
        # Registered once built (it is immutable); a cycle through a tuple ends at MAX_DEPTH.
        copied = tuple(
            item if type(item) in _SCALARS else _copy_leaf(item, memo, depth) for item in value
        )
        memo[id(value)] = copied
        return copied
    if isinstance(value, set):
        return set(value)
    return bytes(value)  # bytearray


# A capture with only these keys is most likely a plain track call: see _plain_track.
_PLAIN_TRACK_KEYS = frozenset({"user_id", "anonymous_id", "created", "text", "event", "properties"})


def _plain_track(
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


def _plain_track_json(
    uid: Optional[str], aid: Optional[str], event: str, properties: str, created: float
) -> Optional[bytes]:
    """The JSON of the message :func:`_plain_track` builds, key for key, spliced around
    ``properties`` already in JSON; ``None`` when a string holds lone surrogates (the
    general encoder escapes them)."""
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


def _absent(value: Any) -> bool:
    """No id: ``None`` or an empty string (0 is an id)."""
    return value is None or (isinstance(value, str) and not value)


# What capture() keeps of most records: (fields, user id, anonymous id, copies of the
# mutable fields, formatted text, other attributes, bound identity, record time).
GeneralCapture = Tuple[
    Mapping[str, Any],
    Any,
    Any,
    Optional[Dict[str, Any]],
    Optional[str],
    Optional[Dict[str, Any]],
    Optional[Mapping[str, Any]],
    float,
]
# ... and of a plain track: (user id, anonymous id, event, properties, record time, whether
# the event was named rather than the message text), the properties as a JSON string when
# orjson is there (else a copy). Only strings, a float and a bool: the garbage collector
# stops scanning such a tuple, however many are queued.
TrackCapture = Tuple[
    Optional[str], Optional[str], str, Union[str, Dict[str, Any], None], float, bool
]
Captured = Union[GeneralCapture, TrackCapture]


def _track_properties(properties: Union[str, Dict[str, Any], None]) -> Any:
    """A plain track capture's properties as a dict again (or None)."""
    return json.loads(properties) if type(properties) is str else properties


def _plain_track_of(item: TrackCapture) -> Optional[Dict[str, Any]]:
    uid, aid, event, properties, created, _ = item
    return _plain_track(uid, aid, event, _track_properties(properties), created)


def _formatted(record: logging.LogRecord) -> str:
    """The record's message with its arguments; its bare ``msg`` when formatting fails."""
    try:
        return record.getMessage()
    except Exception:
        return _safe_str(record.msg)


# Fields whose values are usually containers the caller may go on mutating.
_MUTABLE_FIELDS = ("properties", "traits", "context", "integrations")


class RecordMapper:
    """Maps ``LogRecord`` objects to Segment messages, in two steps.

    :meth:`capture` runs on the logging thread and does only what cannot wait:
    it reads the ids (a record without one is skipped), copies the mutable
    fields (``properties``, ``traits``...) so that a caller that changes its
    dict after logging does not change what is sent, and formats the message
    when it has arguments. :meth:`build` runs on the worker and makes the
    message from that capture.
    """

    __slots__ = (
        "_aid",
        "_attrs",
        "_capture_extra",
        "_event_attr",
        "_general_attrs",
        "_mutable_attrs",
        "_properties_attr",
        "_reserved_attrs",
        "_session_attr",
        "_uid",
    )

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
        self._mutable_attrs = tuple(names[key] for key in _MUTABLE_FIELDS)
        self._event_attr = names["event"]
        self._properties_attr = names["properties"]
        # Any of these on a record takes it off the plain-track path of build().
        self._general_attrs = frozenset(
            attr
            for key, attr in names.items()
            if key not in ("user_id", "anonymous_id", "event", "properties")
        )
        self._reserved_attrs = frozenset(names.values()) | {SESSION_ID}
        self._capture_extra = capture_extra
        clash = sorted(self._reserved_attrs & _STANDARD_RECORD_ATTRS)
        if clash:
            raise ValueError(
                f"field_names: {', '.join(clash)} is a LogRecord attribute and cannot carry "
                "a Segment field"
            )

    def capture(
        self, record: logging.LogRecord, bound: Optional[Mapping[str, Any]] = None
    ) -> Optional[Captured]:
        """What to keep of ``record``, or ``None`` when it carries no user or anonymous id.

        An id of ``None`` or ``""`` counts as none: such a record is skipped, not an error.
        ``bound`` is the identity bound to the caller's context (``user_id``,
        ``anonymous_id``, ``context``, ``integrations``): it fills what the record
        does not say itself.
        """
        attrs = record.__dict__
        uid = attrs.get(self._uid)
        aid = attrs.get(self._aid)
        # Inline tests of "no id" (None or ""): this runs on the caller's thread.
        if (aid is None or aid == "") and self._session_attr is not None:
            aid = attrs.get(self._session_attr)
        if bound:
            if uid is None or uid == "":
                uid = bound.get("user_id")
            if aid is None or aid == "":
                aid = bound.get("anonymous_id")
        if (uid is None or uid == "") and (aid is None or aid == ""):
            return None
        if bound is None and not self._capture_extra:
            track = self._capture_track(record, attrs, uid, aid)
            if track is not None:
                return track
        copies: Optional[Dict[str, Any]] = None
        for attr in self._mutable_attrs:
            value = attrs.get(attr)
            if value is None or type(value) in _SCALARS:
                continue
            if copies is None:
                copies = {}
            if type(value) is dict:  # _snapshot's common case, without the call
                for item in value.values():
                    if type(item) not in _SCALARS:
                        copies[attr] = _copy_tree(value, {}, 0)
                        break
                else:
                    copies[attr] = value.copy()
            else:
                copies[attr] = _snapshot(value)
        text: Optional[str] = None
        if record.args or type(record.msg) is not str:
            text = _formatted(record)
        extra: Optional[Dict[str, Any]] = None
        if self._capture_extra:
            reserved = self._reserved_attrs
            extra = {
                key: _snapshot(value)
                for key, value in attrs.items()
                if key not in _STANDARD_RECORD_ATTRS and key not in reserved and key[:1] != "_"
            }
        fields: Mapping[str, Any] = attrs
        if record.exc_info or record.stack_info:
            # Do not keep a traceback (and its frames) alive in the queue.
            kept = {attr: attrs[attr] for attr in self._reserved_attrs if attr in attrs}
            kept["msg"] = record.msg
            fields = kept
        return (fields, uid, aid, copies, text, extra or None, bound, record.created)

    def _capture_track(
        self, record: logging.LogRecord, attrs: Dict[str, Any], uid: Any, aid: Any
    ) -> Optional[TrackCapture]:
        """The capture of a plain track record (string ids and event, a dict of properties
        or none, no other reserved field), else ``None``. Snapshots the properties as JSON
        when they hold only JSON's own types: one call, and nothing the collector scans."""
        if (uid is not None and type(uid) is not str) or (aid is not None and type(aid) is not str):
            return None
        if not attrs.keys().isdisjoint(self._general_attrs):
            return None
        event = attrs.get(self._event_attr)
        named = event is not None
        if not named:
            event = record.msg
            if record.args or type(event) is not str:
                event = _formatted(record)
        if type(event) is not str or not event:
            return None
        properties = attrs.get(self._properties_attr)
        kept: Union[str, Dict[str, Any], None] = None
        if type(properties) is dict:
            if PLAIN_JSON is None:
                kept = _snapshot(properties)
            else:
                try:
                    # As str: orjson's bytes keep a 4 KB buffer each, which a queue would hold.
                    kept = PLAIN_JSON(properties, option=_PLAIN_OPTIONS).decode()
                except Exception:  # not only JSON's own types: the general path converts them
                    return None
                if len(kept) > 2 * MAX_DEPTH and kept.count("{") + kept.count("[") > MAX_DEPTH:
                    return None  # perhaps nested deeper than the general path's cut
        elif properties is not None:
            return None
        return (uid, aid, event, kept, record.created, named)

    def prepare(self, item: Captured) -> Tuple[Optional[Dict[str, Any]], bytes]:
        """The message for a capture and its JSON, checked against the 32 KB limit.

        The message is always ``None``: a plain track is spliced as bytes without a
        dict, and callbacks get every record's message decoded from what was sent,
        whichever path made it. Raises :class:`InvalidMessage` (or
        :class:`MessageTooLarge`).
        """
        if len(item) == 6:
            uid, aid, event, properties, created, _ = item
            if properties is None or type(properties) is str:
                data = _plain_track_json(uid, aid, event, properties or "{}", created)
                if data is not None:
                    return None, data if len(data) <= MAX_MESSAGE_BYTES else _checked_size(data)
        return None, encode(self.build(item))

    def build(self, item: Captured) -> Dict[str, Any]:
        """The message for a capture; raises :class:`InvalidMessage`."""
        if len(item) == 6:
            message = _plain_track_of(item)
            return message if message is not None else self.build_captured(self.describe(item))
        fields, uid, aid, copies, text, extra, bound, created = item
        if bound is None and extra is None and fields.keys().isdisjoint(self._general_attrs):
            # A plain track (the common case): built without the general path's dict.
            event = fields.get(self._event_attr)
            if event is None:
                event = text if text is not None else fields.get("msg")
            properties = copies.get(self._properties_attr) if copies else None
            if properties is None:
                properties = fields.get(self._properties_attr)
            message = _plain_track(uid, aid, event, properties, created)
            if message is not None:
                return message
        return self.build_captured(self.describe(item))

    def describe(self, item: Captured) -> Dict[str, Any]:
        """A capture's fields by their reserved names (``user_id``, ``event``, ``properties``...),
        plus ``created`` and the formatted ``text``: what callbacks see of a record that
        could not become a message."""
        if len(item) == 6:
            uid, aid, event, properties, created, named = item
            described: Dict[str, Any] = {"user_id": uid, "anonymous_id": aid, "created": created}
            if named:
                described["event"] = event
            if properties is not None:
                described["properties"] = _track_properties(properties)
            if not named:
                described["text"] = event
            return described
        fields, uid, aid, copies, text, extra, bound, created = item
        captured: Dict[str, Any] = {"user_id": uid, "anonymous_id": aid, "created": created}
        for key, attr in self._attrs:
            if attr in fields:
                captured[key] = fields[attr]
        if copies:
            for key, attr in zip(_MUTABLE_FIELDS, self._mutable_attrs):
                if attr in copies:
                    captured[key] = copies[attr]
        if bound:
            for key in ("context", "integrations"):
                outer = bound.get(key)
                if outer:
                    own = captured.get(key)
                    captured[key] = {**outer, **own} if isinstance(own, Mapping) else own or outer
        if captured.get("event") is None or "segment_type" in captured:
            captured["text"] = text if text is not None else fields.get("msg")
        if extra:
            captured["extra"] = extra
        return captured

    @staticmethod
    def build_captured(captured: Mapping[str, Any]) -> Dict[str, Any]:
        """The message for the fields of a capture, by Segment field name."""
        if captured.keys() <= _PLAIN_TRACK_KEYS:
            event = captured.get("event")
            message = _plain_track(
                captured["user_id"],
                captured["anonymous_id"],
                captured.get("text") if event is None else event,
                captured.get("properties"),
                captured["created"],
            )
            if message is not None:
                return message
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
