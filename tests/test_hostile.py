"""Hostile values through the handler and the client, against a real LocalCollector.

Objects that raise when they are iterated, read, printed, compared, hashed or
converted; cycles, huge integers, NaN, lone surrogates, bytes that are not UTF-8;
keys that collide once written as text. Whatever the value: a client call raises
``InvalidMessage`` or nothing, logging raises nothing, every request body is
strict JSON with no key twice, and every call is counted once (delivered,
dropped, skipped, failed or filtered), each drop reported to ``on_failure``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from segmentio_logging import Client, InvalidMessage, SegmentHandler
from segmentio_logging._segment import RESERVED_FIELDS, SESSION_ID
from segmentio_logging.testing import LocalCollector, Request

from . import helpers
from .helpers import Recorder, any_values

# Autouse, module-scoped: every test of this module runs with both JSON encoders.
json_backend = helpers.json_backend


# --------------------------------------------------------------------------- hostile objects
#
# Each raises only while ``ARMED.on`` is set: Hypothesis builds, compares, hashes and
# shows them (when it reports a failing example) unarmed, and the test arms them
# around its calls, until everything it offered is settled.


class _Armed:
    on = False


ARMED = _Armed()


class Unspeakable(Exception):
    """An error whose text cannot be read either."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this error")

    __repr__ = __str__


def _strike(what: str, unspeakable: bool) -> None:
    if ARMED.on:
        raise Unspeakable() if unspeakable else RuntimeError(f"{what} raised")


class Hostile:
    """Base of the hostile objects: which error they raise, an Unspeakable or a RuntimeError."""

    def __init__(self, unspeakable: bool = False) -> None:
        self.unspeakable = unspeakable

    def strike(self, what: str) -> None:
        _strike(what, self.unspeakable)


class NoIter(Hostile, Mapping):  # type: ignore[type-arg]
    """A mapping whose iteration raises."""

    def __getitem__(self, key: Any) -> Any:
        self.strike("__getitem__")
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        self.strike("__iter__")
        return iter(())

    def __len__(self) -> int:
        return 0


class NoItems(dict):  # type: ignore[type-arg]
    """A dict whose items() raises."""

    unspeakable = False

    def items(self) -> Any:
        _strike("items", self.unspeakable)
        return super().items()


class NoIterList(list):  # type: ignore[type-arg]
    """A list whose iteration raises."""

    unspeakable = False

    def __iter__(self) -> Iterator[Any]:
        _strike("__iter__", self.unspeakable)
        return super().__iter__()


class NoStr(Hostile):
    def __str__(self) -> str:
        self.strike("__str__")
        return "no str"


class NoRepr(Hostile):
    def __repr__(self) -> str:
        self.strike("__repr__")
        return "NoRepr()"


class NoText(Hostile):
    """Neither str() nor repr()."""

    def __str__(self) -> str:
        self.strike("__str__")
        return "no text"

    def __repr__(self) -> str:
        self.strike("__repr__")
        return "NoText()"


class NoEq(Hostile):
    """Compares by raising; hashes as its text, so it meets that text in a dict."""

    def __init__(self, text: str, unspeakable: bool = False) -> None:
        super().__init__(unspeakable)
        self.text = text

    def __eq__(self, other: object) -> bool:
        self.strike("__eq__")
        return other is self

    def __ne__(self, other: object) -> bool:
        self.strike("__ne__")
        return other is not self

    def __hash__(self) -> int:
        return hash(self.text)

    def __str__(self) -> str:
        return self.text


class NoHash(Hostile):
    """Hashes until armed: a key put in a dict that raises when the dict is copied."""

    def __hash__(self) -> int:
        self.strike("__hash__")
        return id(self) >> 4

    def __str__(self) -> str:
        return "no hash"


class TextKey(str):
    """A key that holds the same text as a str key beside it, and is not equal to it."""

    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = str.__hash__


class NoOffset(dt.tzinfo):
    def __init__(self, unspeakable: bool = False) -> None:
        self.unspeakable = unspeakable

    def utcoffset(self, when: Optional[dt.datetime]) -> dt.timedelta:
        _strike("utcoffset", self.unspeakable)
        return dt.timedelta(hours=1)

    def dst(self, when: Optional[dt.datetime]) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: Optional[dt.datetime]) -> str:
        return "NoOffset"


class NoIsoformat(dt.datetime):
    def isoformat(self, *args: Any, **kwargs: Any) -> str:
        _strike("isoformat", False)
        return super().isoformat(*args, **kwargs)


class NoIsoformatDate(dt.date):
    def isoformat(self) -> str:
        _strike("isoformat", True)
        return super().isoformat()


def _no_items(contents: Dict[str, Any], unspeakable: bool) -> NoItems:
    made = NoItems(contents)
    made.unspeakable = unspeakable
    return made


def _no_iter_list(contents: List[Any], unspeakable: bool) -> NoIterList:
    made = NoIterList(contents)
    made.unspeakable = unspeakable
    return made


def _cyclic_dict(contents: Dict[str, Any]) -> Dict[str, Any]:
    made = dict(contents)
    made["self"] = made
    made["list"] = [made, {"back": made}]
    return made


def _cyclic_list(contents: List[Any]) -> List[Any]:
    made = list(contents)
    made.append(made)
    return made


def _colliding(value: Any) -> Dict[Any, Any]:
    """Keys that give the same JSON text: 2 and "2", True and "true", None and "null"..."""
    return {
        2: value,
        "2": "str two",
        True: "bool",
        "true": "str true",
        "null": "str null",
        None: "none",
        1.5: "float",
        "1.5": "str float",
        TextKey("k"): "text key",
        "k": "str k",
        NoStr(): "first unprintable",
        NoText(): "second unprintable",
    }


_flags = st.booleans()
_small_text = st.text(max_size=4)
_surrogates = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\udc80\ud800", "\ud83d"]),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
_not_utf8 = st.one_of(
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]),
    st.binary(max_size=6),
    st.binary(max_size=6).map(bytearray),
)
# Built, not sampled: Hypothesis shows a strategy's samples with repr(), and Python 3.11+
# refuses to write an int of more than 4,300 digits.
_huge_ints = st.one_of(
    st.sampled_from([63, 64, 200]).map(lambda bits: 2**bits),
    st.sampled_from([5000, -5000]).map(lambda digits: (10 ** abs(digits)) * (digits // 5000)),
    st.integers(),
)
_not_finite = st.sampled_from(
    [math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity")]
)
_hostile_leaves = st.one_of(
    st.builds(NoIter, _flags),
    st.builds(_no_items, st.dictionaries(_small_text, st.integers(), max_size=2), _flags),
    st.builds(_no_iter_list, st.lists(st.integers(), max_size=2), _flags),
    st.builds(NoStr, _flags),
    st.builds(NoRepr, _flags),
    st.builds(NoText, _flags),
    st.builds(NoEq, _small_text, _flags),
    st.builds(NoHash, _flags),
    st.builds(lambda flag: dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=NoOffset(flag)), _flags),
    st.builds(lambda: NoIsoformat(2026, 1, 2, 3, 4, 5)),
    st.builds(lambda: NoIsoformatDate(2026, 1, 2)),
    _huge_ints,
    _not_finite,
    _surrogates,
    _not_utf8,
)
_keys = st.one_of(
    _small_text,
    _surrogates,
    st.integers(-2, 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.builds(NoEq, _small_text, _flags),
    st.builds(NoHash, _flags),
    st.builds(NoStr, _flags),
    st.builds(NoText, _flags),
    _small_text.map(TextKey),
    _not_utf8.map(bytes),
)
hostile_values = st.recursive(
    st.one_of(_hostile_leaves, any_values),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(_small_text, children, max_size=3),
        st.dictionaries(_keys, children, max_size=3),
        st.builds(_cyclic_dict, st.dictionaries(_small_text, children, max_size=2)),
        st.builds(_cyclic_list, st.lists(children, max_size=2)),
        st.builds(_colliding, children),
        st.builds(_no_items, st.dictionaries(_small_text, children, max_size=2), _flags),
        st.builds(_no_iter_list, st.lists(children, max_size=2), _flags),
    ),
    max_leaves=12,
)
# A field: often a plausible value, so that some calls are valid and get delivered.
_ids = st.one_of(st.just("u1"), st.just("a1"), hostile_values)
_names = st.one_of(st.just("Played a Song"), hostile_values)
_fields = st.one_of(st.none(), st.dictionaries(_keys, hostile_values, max_size=4), hostile_values)
_timestamps = st.one_of(
    st.none(),
    st.just("2026-01-02T03:04:05Z"),
    st.one_of(
        st.builds(lambda flag: dt.datetime(2026, 1, 2, tzinfo=NoOffset(flag)), _flags),
        _surrogates,
        _not_finite,
        _huge_ints,
        hostile_values,
    ),
)
_FIELD_STRATEGIES: Dict[str, Any] = {
    "session_id": _ids,
    "anonymous_id": _ids,
    "user_id": _ids,
    "event": _names,
    "name": _names,
    "category": _names,
    "group_id": _ids,
    "previous_id": _ids,
    "properties": _fields,
    "traits": _fields,
    "context": _fields,
    "integrations": _fields,
    "timestamp": _timestamps,
    "message_id": st.one_of(st.none(), hostile_values),
}
# The keyword arguments of each client call.
_CALLS = {
    "track": ("session_id", "user_id", "event", "properties", "anonymous_id"),
    "identify": ("session_id", "user_id", "traits", "anonymous_id"),
    "group": ("session_id", "user_id", "group_id", "traits", "anonymous_id"),
    "alias": ("previous_id", "user_id"),
    "page": ("session_id", "user_id", "category", "name", "properties", "anonymous_id"),
    "screen": ("session_id", "user_id", "category", "name", "properties", "anonymous_id"),
}
_COMMON = ("timestamp", "context", "integrations", "message_id")
# What each call needs (or the first of): often given a plausible value, so that some
# calls are valid and carry their hostile values to the encoder.
_NEEDS = {
    "track": {"user_id": "u1", "event": "Played a Song"},
    "identify": {"user_id": "u1"},
    "group": {"user_id": "u1", "group_id": "g1"},
    "alias": {"user_id": "u1", "previous_id": "p1"},
    "page": {"user_id": "u1"},
    "screen": {"user_id": "u1"},
}
# What a log record may carry in ``extra``: the reserved keys, and one of its own.
# Every reserved key, the original client's name for anonymous_id, and one of the app's own.
_EXTRA_KEYS = (*sorted(RESERVED_FIELDS), SESSION_ID, "basket")


@st.composite
def client_calls(draw: Callable[..., Any]) -> Tuple[str, Dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(_CALLS)))
    names = draw(st.sets(st.sampled_from(_CALLS[kind] + _COMMON), max_size=5))
    fields = {name: draw(_FIELD_STRATEGIES[name]) for name in sorted(names)}
    for name, plausible in _NEEDS[kind].items():
        if draw(st.integers(0, 3)):  # three times in four
            fields.setdefault(name, plausible)
    return kind, fields


@st.composite
def log_calls(draw: Callable[..., Any]) -> Tuple[Any, Tuple[Any, ...], Dict[str, Any]]:
    msg = draw(st.one_of(st.just("Played a Song"), st.just("Played %s"), hostile_values))
    args = tuple(draw(st.lists(st.one_of(hostile_values, _surrogates), max_size=2)))
    if args and isinstance(args[0], Mapping):
        args = (str, *args)  # one mapping alone is logging's own dict-of-arguments form
    keys = draw(st.sets(st.sampled_from(_EXTRA_KEYS), max_size=5))
    extra = {key: draw(_FIELD_STRATEGIES.get(key, hostile_values)) for key in sorted(keys)}
    if draw(st.booleans()):
        extra.setdefault("user_id", "u1")
    return msg, args, extra


calls = st.lists(
    st.one_of(st.tuples(st.just("client"), client_calls()), st.tuples(st.just("log"), log_calls())),
    min_size=1,
    max_size=5,
)


# --------------------------------------------------------------------------- checks


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _refuse_repeats(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    assert not repeated, f"keys written twice: {repeated!r}"
    return dict(pairs)


def strict_body(request: Request) -> Any:
    """The request's body as strict JSON: UTF-8, no NaN or Infinity, no key twice."""
    raw = request.raw
    if request.headers.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return json.loads(
        raw.decode("utf-8"),  # strict: an encoded lone surrogate is not UTF-8
        parse_constant=_refuse_constant,
        object_pairs_hook=_refuse_repeats,
    )


COUNTED = ("delivered", "dropped", "skipped", "failed", "filtered")


def settled(stats: Dict[str, int]) -> int:
    """Calls that reached their end, however it ended."""
    return sum(stats.get(name, 0) for name in COUNTED)


class Rig:
    """A client and two handlers (the plain-track path, and capture_extra's) on one logger,
    all sending to one collector."""

    def __init__(self, collector: LocalCollector) -> None:
        self.collector = collector
        options: Dict[str, Any] = {"host": collector.url, "flush_interval": 0.05}
        self.failures = {name: Recorder() for name in ("client", "plain", "extra")}
        self.client = Client("test-key", on_failure=self.failures["client"], **options)
        self.handlers = {
            "plain": SegmentHandler("test-key", on_failure=self.failures["plain"], **options),
            "extra": SegmentHandler(
                "test-key", on_failure=self.failures["extra"], capture_extra=True, **options
            ),
        }
        self.logger = logging.getLogger("tests.hostile")

    def attach(self) -> None:
        """The handlers on the logger, which does not propagate: each test starts with
        logging as it was (see conftest)."""
        self.logger.handlers[:] = list(self.handlers.values())
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def stats(self) -> Dict[str, Dict[str, int]]:
        stats = {name: handler.stats() for name, handler in self.handlers.items()}
        stats["client"] = self.client.stats()
        return stats

    def flush(self) -> bool:
        flushed = self.client.flush(10)
        return all([handler.flush(10) for handler in self.handlers.values()]) and flushed

    def close(self) -> None:
        self.client.shutdown(5)
        for handler in self.handlers.values():
            handler.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """One collector, one client, two handlers for every example of a test: each example
    checks the counts it moved."""
    with LocalCollector() as collector:
        made = Rig(collector)
        try:
            yield made
        finally:
            made.close()


hostile_settings = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- tests


class TestHostileValues:
    @hostile_settings
    @given(offered=calls)
    def test_no_call_raises_and_every_call_is_counted(
        self, rig: Rig, offered: List[Tuple[str, Any]]
    ) -> None:
        """Client calls raise InvalidMessage or nothing, logging raises nothing; every body
        is strict JSON without a key twice; delivered + dropped + skipped + failed +
        filtered = offered, and each drop is reported to on_failure."""
        rig.attach()
        rig.collector.clear()
        before = rig.stats()
        reported = {name: len(recorder.calls) for name, recorder in rig.failures.items()}
        offered_count = {"client": 0, "log": 0}
        raised: List[InvalidMessage] = []
        ARMED.on = True
        try:
            for way, call in offered:
                offered_count[way] += 1
                if way == "client":
                    kind, fields = call
                    try:
                        getattr(rig.client, kind)(**fields)
                        event(f"client {kind}: queued")
                    except InvalidMessage as error:
                        raised.append(error)
                        event(f"client {kind}: InvalidMessage")
                else:
                    msg, args, extra = call
                    rig.logger.info(msg, *args, extra=extra)
            assert rig.flush()
        finally:
            ARMED.on = False
        after = rig.stats()
        moved = {
            name: {key: after[name][key] - before[name].get(key, 0) for key in after[name]}
            for name in after
        }
        for name, counts in moved.items():
            way = "client" if name == "client" else "log"
            assert (
                settled(counts)
                == offered_count[way]
                == counts["enqueued"] + counts.get("skipped", 0)
            ), (name, counts)
            assert counts["pending"] == 0 and counts.get("ignored", 0) == 0, (name, counts)
            new_reports = rig.failures[name].calls[reported[name] :]
            assert all(isinstance(error, InvalidMessage) for _, error in new_reports)
            assert sum(error.count for _, error in new_reports) == counts["dropped"], name
        client_reports = [error for _, error in rig.failures["client"].calls[reported["client"] :]]
        assert all(any(error is report for report in client_reports) for error in raised)
        requests = rig.collector.requests
        bodies = [strict_body(request) for request in requests]
        delivered = sum(counts["delivered"] for counts in moved.values())
        assert sum(len(body["batch"]) for body in bodies) == delivered
        for name, counts in moved.items():
            for outcome in COUNTED:
                if counts.get(outcome):
                    event(f"{name}: some {outcome}")


def _no_items_properties() -> Any:
    return _no_items({"plan": "pro"}, False)


def _no_offset_timestamp() -> Any:
    return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=NoOffset())


THE_THREE = [
    pytest.param("properties", NoIter, "properties could not be read: RuntimeError", id="mapping"),
    pytest.param(
        "properties", _no_items_properties, "properties could not be read: RuntimeError", id="dict"
    ),
    pytest.param(
        "timestamp", _no_offset_timestamp, "timestamp could not be read: RuntimeError", id="tz"
    ),
]


class TestBothWaysAlike:
    @pytest.mark.parametrize(("field", "make", "reason"), THE_THREE)
    def test_the_client_raises_invalid_message_counts_and_reports_it(
        self, collector: LocalCollector, field: str, make: Callable[[], Any], reason: str
    ) -> None:
        """A mapping whose iteration raises, a dict whose items() raises, a tzinfo whose
        utcoffset() raises: InvalidMessage from Client.track(), dropped, on_failure told."""
        failures = Recorder()
        client = Client("test-key", host=collector.url, on_failure=failures)
        try:
            ARMED.on = True
            try:
                with pytest.raises(InvalidMessage, match=f"^{reason}") as raised:
                    client.track(user_id="u1", event="Played a Song", **{field: make()})
            finally:
                ARMED.on = False
            assert isinstance(raised.value.__cause__, RuntimeError)
            client.track(user_id="u1", event="Still fine")
            assert client.flush(10)
            stats = client.stats()
            assert (stats["enqueued"], stats["dropped"], stats["delivered"]) == (2, 1, 1)
            [(data, error)] = failures.calls
            assert error is raised.value
            assert data[0]["type"] == "track" and data[0]["event"] == "Played a Song"
            assert [m["event"] for m in collector.messages] == ["Still fine"]
        finally:
            client.shutdown(5)

    @pytest.mark.parametrize(("field", "make", "reason"), THE_THREE)
    def test_logging_drops_and_reports_them_with_the_same_reason(
        self,
        collector: LocalCollector,
        logger: logging.Logger,
        field: str,
        make: Callable[[], Any],
        reason: str,
    ) -> None:
        """The same three values through logger.info: nothing raised, dropped, and on_failure
        gets an InvalidMessage with the reason the client raises."""
        failures = Recorder()
        handler = SegmentHandler("test-key", host=collector.url, on_failure=failures)
        logger.addHandler(handler)
        try:
            ARMED.on = True
            try:
                logger.info("Played a Song", extra={"user_id": "u1", field: make()})
                logger.info("Still fine", extra={"user_id": "u1"})
                assert handler.flush(10)
            finally:
                ARMED.on = False
            stats = handler.stats()
            assert (stats["enqueued"], stats["dropped"], stats["delivered"]) == (2, 1, 1)
            [(_, error)] = failures.calls
            assert type(error) is InvalidMessage
            assert error.reason.startswith(reason)
            assert [m["event"] for m in collector.messages] == ["Still fine"]
        finally:
            handler.close()


def _keys_sent(collector: LocalCollector) -> List[List[Tuple[str, Any]]]:
    """The properties of each message sent, as (key, value) pairs in the order written."""
    sent: List[List[Tuple[str, Any]]] = []

    def pairs(items: List[Tuple[str, Any]]) -> Any:
        found = dict(_refuse_repeats(items))
        if "plan" in found:  # the properties object of these messages
            sent.append(items)
        return found

    for request in collector.requests:
        raw = request.raw
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        json.loads(raw, object_pairs_hook=pairs)
    return sent


class TestCollidingKeys:
    @pytest.mark.parametrize(
        ("properties", "expected"),
        [
            ({1: "a", "1": "b"}, [("1", "b")]),
            ({"1": "b", 1: "a"}, [("1", "b")]),
            ({True: "a", "true": "b", None: "c"}, [("true", "b"), ("null", "c")]),
            ({1.5: "a", "1.5": "b", 2: "c"}, [("1.5", "b"), ("2", "c")]),
            ({TextKey("k"): "a", "k": "b"}, [("k", "b")]),
            ({dt.date(2026, 1, 2): "a", "2026-01-02": "b"}, [("2026-01-02", "b")]),
            ({(1, 2): "first", "(1, 2)": "str", 3: "c"}, [("(1, 2)", "str"), ("3", "c")]),
            ({1: "int", (1,): "tuple", b"1": "bytes"}, [("1", "bytes"), ("(1,)", "tuple")]),
        ],
        ids=[
            "int-first",
            "str-first",
            "bool-none",
            "float",
            "str-subclass",
            "date",
            "tuple",
            "no-str-key",
        ],
    )
    def test_one_key_a_str_key_wins_else_the_last(
        self,
        collector: LocalCollector,
        logger: logging.Logger,
        properties: Dict[Any, Any],
        expected: List[Tuple[str, Any]],
    ) -> None:
        """Keys with one JSON text give one key, where the first of them stood: the str key's
        value when there is one, else the last one's; the same through the client and the
        handler, on both JSON backends."""
        client = Client("test-key", host=collector.url)
        handler = SegmentHandler("test-key", host=collector.url)
        logger.addHandler(handler)
        try:
            properties = {**properties, "plan": "pro"}
            client.track(user_id="u1", event="E", properties=properties)
            logger.info("E", extra={"user_id": "u1", "properties": properties})
            client.identify(user_id="u1", traits={"nested": properties})
            assert client.flush(10) and handler.flush(10)
        finally:
            client.shutdown(5)
            handler.close()
        sent = _keys_sent(collector)
        assert len(sent) == 3
        for items in sent:
            assert items == [*expected, ("plan", "pro")]
