"""Timestamps as Segment writes them: ISO-8601 in UTC with milliseconds.

Pure: no I/O and no clock; a cache of the last second formatted.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any, Optional, Tuple

from ._errors import InvalidMessage
from ._json import error_text, preview

__all__ = ["format_timestamp", "normalize_timestamp"]

_EPOCH_NAIVE = dt.datetime(1970, 1, 1)

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
            value = value.astimezone(dt.timezone.utc)
        except (OverflowError, ValueError):
            raise InvalidMessage(
                f"timestamp {preview(value)} is outside the years ISO-8601 can write in UTC"
            ) from None
    # naive datetimes are taken as UTC
    return f"{_second_prefix(value)}.{value.microsecond // 1000:03d}Z"


def normalize_timestamp(value: Any) -> str:
    """A ``timestamp=`` value (datetime, date, ISO-8601 string or epoch seconds) as ISO-8601 UTC.

    Naive datetimes and ISO strings without an offset are taken as UTC. Raises
    :class:`InvalidMessage` saying what was wrong with ``value``, also when it
    raises as it is read (a ``tzinfo`` whose ``utcoffset()`` raises, say).
    """
    try:
        return _normalized(value)
    except InvalidMessage:
        raise
    except Exception as exc:
        raise InvalidMessage(f"timestamp could not be read: {error_text(exc)}") from exc


def _normalized(value: Any) -> str:
    """:func:`normalize_timestamp`, raising whatever ``value`` raises when it is read."""
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
                f"timestamp {preview(value)} is not a valid number of epoch seconds"
            )
        return format_timestamp(seconds)
    if isinstance(value, str):
        text = str.strip(value)  # not a subclass's own strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidMessage(
                f"timestamp {preview(value)} is not ISO-8601 (for example '2026-01-02T03:04:05Z')"
            ) from None
        return _format_datetime(parsed)
    raise InvalidMessage(
        f"timestamp must be a datetime, an ISO-8601 string or epoch seconds, "
        f"got {type(value).__name__}"
    )
