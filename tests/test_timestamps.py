"""Timestamps as Segment writes them (segmentio_logging._timestamps)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pytest

from segmentio_logging import InvalidMessage
from segmentio_logging._timestamps import format_timestamp, normalize_timestamp

from . import helpers
from .helpers import (
    CREATED,
    CREATED_ISO,
    ISO_UTC,
)

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend

UTC = dt.timezone.utc


def tz(hours: float) -> dt.timezone:
    return dt.timezone(dt.timedelta(hours=hours))


class _NoOffset(dt.tzinfo):
    def utcoffset(self, when: Any) -> dt.timedelta:
        raise RuntimeError("no offset")

    def dst(self, when: Any) -> dt.timedelta:
        return dt.timedelta(0)


class _NoFloat(float):
    def __float__(self) -> float:
        raise RuntimeError("no float")


class _NoStrip(str):
    def strip(self, chars: Any = None) -> str:
        raise RuntimeError("no strip")


class TestNormalizeTimestamp:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (dt.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC), "2026-01-02T03:04:05.678Z"),
            (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz(2)), "2026-01-02T01:04:05.000Z"),
            (dt.datetime(2026, 1, 2, 0, 30, tzinfo=tz(1)), "2026-01-01T23:30:00.000Z"),
            (dt.datetime(2026, 1, 2, 3, 4, 5, 999_999), "2026-01-02T03:04:05.999Z"),
            (dt.date(2026, 1, 2), "2026-01-02T00:00:00.000Z"),
            ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02T03:04:05z", "2026-01-02T03:04:05.000Z"),
            ("  2026-01-02T03:04:05.250Z  ", "2026-01-02T03:04:05.250Z"),
            ("2026-01-02T03:04:05.250+01:00", "2026-01-02T02:04:05.250Z"),
            ("2026-01-02T03:04:05.123456-05:30", "2026-01-02T08:34:05.123Z"),
            ("2026-01-02T03:04:05", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02 03:04:05", "2026-01-02T03:04:05.000Z"),
            ("2026-01-02", "2026-01-02T00:00:00.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000, "2023-11-14T22:13:20.000Z"),
            (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
            (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
            (Decimal("1700000000.5"), "2023-11-14T22:13:20.500Z"),
            (-1.5, "1969-12-31T23:59:58.500Z"),
            (dt.datetime(5, 6, 7), "0005-06-07T00:00:00.000Z"),
        ],
    )
    def test_accepted_forms(self, value: Any, expected: str) -> None:
        """Datetimes (naive ones as UTC), dates, ISO strings and epoch seconds give ISO UTC 'Z'."""
        assert normalize_timestamp(value) == expected
        assert ISO_UTC.match(expected)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("yesterday", r"timestamp 'yesterday' is not ISO-8601"),
            ("", r"timestamp '' is not ISO-8601"),
            ("2026-13-01T00:00:00Z", r"is not ISO-8601"),
            ("x" * 500, r"timestamp 'x{60}\.\.\.' is not ISO-8601"),
            (float("nan"), r"timestamp 'nan' is not a valid number of epoch seconds"),
            (float("inf"), r"is not a valid number of epoch seconds"),
            (1_700_000_000_000, r"is not a valid number of epoch seconds"),  # milliseconds
            (-1e12, r"is not a valid number of epoch seconds"),
            (10**400, r"is not a valid number of epoch seconds"),
            (Decimal("sNaN"), r"is not a valid number of epoch seconds"),
            (True, r"timestamp must be a datetime, an ISO-8601 string or epoch seconds, got bool"),
            ([2026], r"got list"),
            (dt.time(3, 4), r"got time"),
            (
                dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                r"outside the years ISO-8601 can write in UTC",
            ),
        ],
    )
    def test_unusable_values_raise(self, value: Any, reason: str) -> None:
        """An unparseable, out-of-range or mistyped timestamp raises InvalidMessage saying so."""
        with pytest.raises(InvalidMessage, match=reason):
            normalize_timestamp(value)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (dt.datetime(2026, 1, 2, tzinfo=_NoOffset()), "RuntimeError: no offset"),
            (_NoFloat(1.5), "RuntimeError: no float"),
        ],
    )
    def test_a_value_that_raises_as_it_is_read_is_invalid(self, value: Any, reason: str) -> None:
        """A tzinfo whose utcoffset() raises, a number whose __float__ raises: InvalidMessage,
        with what it raised in the reason and as the cause."""
        with pytest.raises(InvalidMessage, match=f"^timestamp could not be read: {reason}$") as e:
            normalize_timestamp(value)
        assert isinstance(e.value.__cause__, RuntimeError)

    def test_a_string_is_read_as_the_text_it_holds(self) -> None:
        """A str subclass is parsed by its text, not through its own methods."""
        assert normalize_timestamp(_NoStrip(" 2026-01-02T03:04:05Z ")) == "2026-01-02T03:04:05.000Z"


class TestFormatTimestamp:
    @pytest.mark.parametrize(
        ("epoch", "expected"),
        [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (CREATED, CREATED_ISO),
            (1_700_000_000.001, "2023-11-14T22:13:20.001Z"),
            (1_700_000_000.999, "2023-11-14T22:13:20.999Z"),
            (0.9999999, "1970-01-01T00:00:01.000Z"),
            (-0.001, "1969-12-31T23:59:59.999Z"),
            (-62_135_596_800.0, "0001-01-01T00:00:00.000Z"),
            (253_402_300_799.0, "9999-12-31T23:59:59.000Z"),
        ],
    )
    def test_iso_utc_with_milliseconds(self, epoch: float, expected: str) -> None:
        """Epoch seconds become ISO-8601 UTC with milliseconds and 'Z', years padded to 4 digits."""
        assert format_timestamp(epoch) == expected

    def test_agrees_with_datetime(self) -> None:
        """The cached formatter gives what datetime gives, across second boundaries."""
        for step in range(0, 3_000, 7):
            epoch = 1_767_225_599.0 + step / 1_000  # around 2026-01-01T00:00:00Z
            expected = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
            text = format_timestamp(epoch)
            assert text[:19] == expected.strftime("%Y-%m-%dT%H:%M:%S")
            assert int(text[20:23]) == expected.microsecond // 1000

    @pytest.mark.parametrize("epoch", [math.nan, math.inf, -1e20, 1e20])
    def test_out_of_range_raises(self, epoch: float) -> None:
        """A value no ISO-8601 year can hold raises InvalidMessage rather than OverflowError."""
        with pytest.raises(InvalidMessage, match="not a valid number of epoch seconds"):
            format_timestamp(epoch)
