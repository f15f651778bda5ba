"""Any value to JSON that Segment accepts: deterministic conversion, compact encoding.

The standard library's ``json``, or orjson when it is installed (the ``fast``
extra); both give the same JSON values. Pure: no I/O, and nothing here raises.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from operator import attrgetter, methodcaller
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

__all__ = [
    "FAST_JSON",
    "MAX_DEPTH",
    "PLAIN_JSON",
    "PLAIN_OPTIONS",
    "bytes_to_str",
    "decode_json",
    "dumps",
    "encode_json",
    "error_text",
    "plain_json",
    "preview",
    "safe_str",
    "to_json_safe",
]

# Nesting deeper than this becomes "<too deep>": here, and in the snapshot taken at emit.
MAX_DEPTH = 64


def safe_str(value: Any) -> str:
    """``str(value)``; its ``repr()``, or a placeholder, when that raises."""
    try:
        text = str(value)
        # Exactly a str: a subclass that __str__ returned could raise when hashed or read.
        return text if type(text) is str else str.__str__(text)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__qualname__} object>"


def error_text(exc: BaseException) -> str:
    """``"RuntimeError: what it says"``, for a reason; never raises, whatever ``str(exc)`` does."""
    return f"{type(exc).__name__}: {safe_str(exc)}"


def preview(value: Any, limit: int = 60) -> str:
    """``value`` quoted for an error message, cut after ``limit`` characters."""
    text = safe_str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def bytes_to_str(value: bytes) -> str:
    """UTF-8 text as such; other bytes in base64."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def _sorted_items(value: Any) -> List[Any]:
    try:
        return sorted(value)
    except Exception:  # mixed or unorderable items: order by type, then text
        return sorted(value, key=lambda item: (type(item).__name__, safe_str(item)))


def _finite_float(value: Decimal) -> Optional[float]:
    """A Decimal as a float; NaN and the infinities as None."""
    return float(value) if value.is_finite() else None


def _bytes_text(value: Union[bytes, bytearray, memoryview]) -> str:
    """Bytes as text: see :func:`bytes_to_str`."""
    return bytes_to_str(bytes(value))


# What json cannot carry, by type, and what it becomes; the first match wins. Datetimes
# come before these, in _default itself.
_CONVERSIONS: Tuple[Tuple[Union[type, Tuple[type, ...]], Callable[[Any], Any]], ...] = (
    ((dt.date, dt.time), methodcaller("isoformat")),
    (dt.timedelta, methodcaller("total_seconds")),
    (Decimal, _finite_float),
    (uuid.UUID, str),
    (enum.Enum, attrgetter("value")),
    ((set, frozenset), _sorted_items),
    ((bytes, bytearray, memoryview), _bytes_text),
)


def _default(value: Any) -> Any:
    """Convert one value that ``json`` cannot carry; the result may need converting again."""
    # The most common first, and without a call. Before dates: a datetime is a date too.
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.isoformat()
    for types, convert in _CONVERSIONS:
        if isinstance(value, types):
            return convert(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    return safe_str(value)


def _convert(value: Any) -> Any:
    """:func:`_default` that never raises: whatever fails to convert becomes its ``str()``."""
    try:
        return _default(value)
    except Exception:
        return safe_str(value)


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
            return safe_str(key)
    if isinstance(key, float):
        return float.__repr__(key) if math.isfinite(key) else safe_str(key)
    converted = _convert(key)
    return converted if isinstance(converted, str) else safe_str(converted)


def to_json_safe(value: Any) -> Any:
    """A deterministic copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts.

    Never raises: cycles become ``"<cycle>"``, nesting deeper than 64 becomes
    ``"<too deep>"``, NaN and infinities become ``None``, and whatever has no
    JSON form, or raises when it is read, becomes its ``str()`` (``repr()``, or a
    placeholder, if that raises). Keys become their JSON text; keys with the same
    text give one key (see :func:`_safe_object`).
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
    try:
        return _safe_other(value, seen, depth)
    except Exception:  # an object that raises when read: an isinstance() of it, its items()...
        return safe_str(value)


def _safe_other(value: Any, seen: set[int], depth: int) -> Any:
    """:func:`_safe` of what is not exactly None, a bool, a str, an int or a float."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (int, float)) and not isinstance(value, enum.Enum):
        return _number(value)
    if depth >= MAX_DEPTH:
        return "<too deep>"
    if id(value) in seen:
        return "<cycle>"
    if isinstance(value, (Mapping, list, tuple)):
        return _safe_container(value, seen, depth)
    return _safe_converted(value, seen, depth)


def _number(value: Union[int, float]) -> Optional[Union[int, float]]:
    """An int or float subclass as json writes it: by the number it holds, not by its own
    ``__int__`` or ``__float__``."""
    if isinstance(value, int):
        return _int(int.__int__(value))
    number = float.__float__(value)
    return number if math.isfinite(number) else None


def _safe_container(value: Any, seen: set[int], depth: int) -> Any:
    """:func:`_safe` of a mapping (a dict with str keys), a list or a tuple (a list)."""
    marker = id(value)
    seen.add(marker)
    try:
        if isinstance(value, Mapping):
            try:
                items = list(value.items())
            except Exception:
                return safe_str(value)
            return _safe_object(items, seen, depth)
        return [_safe(item, seen, depth + 1) for item in value]
    finally:
        seen.discard(marker)


def _safe_object(items: List[Tuple[Any, Any]], seen: set[int], depth: int) -> Dict[str, Any]:
    """A JSON object of a mapping's ``items``, each key as its JSON text.

    Keys that give the same text (``1`` and ``"1"``, ``True`` and ``"true"``, two
    objects with one ``str()``) give one key, where the first of them stood: a key
    that is a ``str`` wins over those that are not; otherwise the last one wins, as
    in a dict built from them in order.
    """
    out: Dict[str, Any] = {}
    texts_of_str_keys: set[str] = set()
    for key, item in items:
        if type(key) is str:
            texts_of_str_keys.add(key)
            text = key
        else:
            text = _key(key)
            if text in texts_of_str_keys:
                continue
        out[text] = _safe(item, seen, depth + 1)
    return out


def _safe_converted(value: Any, seen: set[int], depth: int) -> Any:
    """:func:`_safe` of what :func:`_convert` makes of ``value``: a scalar at the same
    depth; anything else one level down, with ``value`` marked as seen."""
    converted = _convert(value)
    if isinstance(converted, (str, int, float)) or converted is None:
        return _safe(converted, seen, depth)
    marker = id(value)
    seen.add(marker)
    try:
        return _safe(converted, seen, depth + 1)
    finally:
        seen.discard(marker)


# How many containers _keys_are_plain looks at before it gives up (a cycle, or a value
# so large that to_json_safe's cost does not matter beside it).
_PLAIN_CONTAINERS = 1_000
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
_NESTED_TYPES = frozenset({dict, list, tuple})
_only_str = frozenset({str}).issuperset


def _keys_are_plain(value: Any) -> bool:
    """Whether ``json`` writes no key twice in ``value``, a dict, list or tuple: every
    dict in it has keys of type ``str`` alone, and no subclass of dict, list or tuple
    is in it.

    ``json`` writes int, float, bool and None keys (and str subclasses) as text that
    may repeat a key beside them; it reads subclasses of containers by itself, past
    this check. Values that ``json`` hands to its ``default`` are checked there
    (:func:`_converted_for_json`). More than ``_PLAIN_CONTAINERS`` containers (a
    cycle, say) is not plain. On the hot path of the standard library's encoding: a
    loop over a stack, the fastest of the forms measured.
    """
    pending = [value]
    left = _PLAIN_CONTAINERS
    while pending:
        left -= 1
        if not left:
            return False
        items = pending.pop()
        if type(items) is dict:
            if not _only_str(map(type, items)):
                return False
            items = items.values()
        for item in items:
            kind = type(item)
            if kind in _SCALAR_TYPES:
                continue
            if kind in _NESTED_TYPES:
                pending.append(item)
            elif issubclass(kind, (dict, list, tuple)):
                return False
    return True


class _NotPlain(Exception):
    """Raised through ``json`` when a value converts to containers it would write with
    a key twice: :func:`dumps` then writes the whole value through :func:`to_json_safe`."""


def _converted_for_json(value: Any) -> Any:
    """:func:`_convert`, as the standard library's ``default``: a conversion to
    containers (a mapping, a dataclass, a set) must hold no key json would repeat."""
    converted = _convert(value)
    kind = type(converted)
    if (kind is dict or kind is list or kind is tuple) and not _keys_are_plain(converted):
        raise _NotPlain
    return converted


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_converted_for_json
)


_quote = json.encoder.encode_basestring  # what _encoder writes for a str (non-ASCII kept)


def _flat_object(value: Dict[Any, Any]) -> Optional[str]:
    """What ``_encoder`` writes for a dict of str keys and JSON scalars (the usual
    properties), written here without building an encoder per call: half the time;
    ``None`` for any other dict. Raises what ``_encoder`` would (an int too long to write).
    """
    parts = []
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return None
        if kind is str:
            text = _quote(item)
        elif kind is int:
            text = int.__repr__(item)
        elif kind is bool:
            text = "true" if item else "false"
        elif item is None:
            text = "null"
        elif kind is float and math.isfinite(item):
            text = float.__repr__(item)
        else:  # containers, subclasses, NaN and infinities: the encoder's own path
            return None
        parts.append(f"{_quote(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def plain_json(value: Any) -> Optional[str]:
    """The compact JSON of a dict, list or tuple that ``json`` writes as it is (values
    it cannot carry converted, no key twice); ``None`` for one that needs
    :func:`to_json_safe` first. Never raises; may hold lone surrogates."""
    try:
        if type(value) is dict:
            text = _flat_object(value)
            if text is not None:
                return text
        if type(value) in _NESTED_TYPES and _keys_are_plain(value):
            return _encoder.encode(value)
    except Exception:  # NaN, cycles, deep nesting, keys json refuses, huge ints...
        pass
    return None


def dumps(value: Any) -> str:
    """Compact JSON of any value; never raises (see :func:`to_json_safe`), and never
    writes a key twice in an object.

    The result may hold lone surrogates; :func:`encode_json` escapes them.
    """
    text = plain_json(value)
    return text if text is not None else _encoder.encode(to_json_safe(value))


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
    PLAIN_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_PASSTHROUGH_SUBCLASS
    _fast_decode: Optional[Callable[[bytes], Any]] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    FAST_JSON = None
    PLAIN_JSON = None
    _ORJSON_OPTIONS = PLAIN_OPTIONS = 0
    _fast_decode = None


def encode_json(message: Mapping[str, Any]) -> bytes:
    """One message as compact UTF-8 JSON; never raises.

    Uses orjson when it is installed (``pip install 'segmentio-logging[fast]'``),
    falling back to the standard library for anything orjson refuses; both give
    the same JSON values.
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
    return data


# Nineteen digits in a row may be an integer past 64 bits (-9223372036854775809 has 19;
# 18 always fit). Found by mapping digits to "0" and all else to " ": two C loops, six
# times faster than a regex.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19


def decode_json(data: bytes) -> Any:
    """JSON bytes back to Python values (for callbacks and hooks, on the worker).

    orjson when it is installed and encoding uses it, the standard library for
    what orjson refuses (lone surrogates) or reads otherwise (an integer past 64
    bits, which orjson makes a float): the same values either way.
    """
    if (
        FAST_JSON is not None
        and _fast_decode is not None
        and _LONG_NUMBER not in data.translate(_DIGITS_AS_ZEROS)
    ):
        try:
            return _fast_decode(data)
        except ValueError:
            pass
    return json.loads(data)
