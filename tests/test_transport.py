"""Transport: the request Segment expects, retries, Retry-After, 413 splits, deadlines."""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import re
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from segmentio_logging import DeliveryError, Response, __version__, _transport
from segmentio_logging._message import build_message, encode
from segmentio_logging._options import resolve_options
from segmentio_logging._segment import MAX_BATCH_BYTES
from segmentio_logging._timestamps import format_timestamp
from segmentio_logging._transport import (
    Deadline,
    Outcome,
    Transport,
    batch_body,
    cut_by_bytes,
    envelope_size,
    is_retryable,
    retry_after,
    transport_for,
)
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import CREATED, closed_port
from .hostile import wait_until

MakeTransport = Callable[..., Transport]


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds."""
    monkeypatch.setattr(_transport, "BACKOFF_BASE", 0.01)


@pytest.fixture
def make_transport(collector: LocalCollector) -> Iterator[MakeTransport]:
    """Transports pointed at the collector with small retry settings; closed after the test."""
    made: List[Transport] = []

    def make(**options: Any) -> Transport:
        options.setdefault("host", collector.url)
        options.setdefault("write_key", "test-key")
        options.setdefault("timeout", 2.0)
        options.setdefault("max_retries", 3)
        options.setdefault("retry_budget", 5.0)
        transport = Transport(**options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def encoded(count: int, prefix: str = "m") -> List[bytes]:
    """``count`` encoded track messages with message ids ``m0``, ``m1``..."""
    return [
        json.dumps({"type": "track", "event": "E", "userId": "u", "messageId": f"{prefix}{i}"})
        .replace(" ", "")
        .encode()
        for i in range(count)
    ]


def ids(messages: List[Any]) -> List[str]:
    return [m["messageId"] for m in messages]


def assert_partition(outcomes: List[Outcome], count: int) -> None:
    """The slices cover ``[0, count)`` exactly once, in order."""
    position = 0
    for start, end, _ in outcomes:
        assert start == position and end > start
        position = end
    assert position == count


def only_error(outcomes: List[Outcome]) -> DeliveryError:
    assert len(outcomes) == 1
    error = outcomes[0][2]
    assert isinstance(error, DeliveryError)
    return error


def only_response(outcomes: List[Outcome]) -> Response:
    assert len(outcomes) == 1
    response = outcomes[0][2]
    assert isinstance(response, Response)
    return response


class TestRequestShape:
    def test_posts_to_batch_path(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A batch is one POST to /v1/batch."""
        only_response(make_transport().deliver(encoded(2)))
        (request,) = collector.requests
        assert request.method == "POST"
        assert request.path == "/v1/batch"

    def test_body_is_batch_sent_at_and_write_key(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """The JSON body holds exactly batch, sentAt and writeKey; the batch is the messages."""
        make_transport(gzip=False).deliver(encoded(3))
        body = collector.requests[0].body
        assert set(body) == {"batch", "sentAt", "writeKey"}
        assert ids(body["batch"]) == ["m0", "m1", "m2"]
        assert body["writeKey"] == "test-key"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["sentAt"])

    def test_basic_auth_with_write_key_and_empty_password(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """Authorization is HTTP Basic with the write key as user and an empty password."""
        make_transport(write_key="wk_123").deliver(encoded(1))
        request = collector.requests[0]
        assert request.headers["authorization"] == "Basic " + base64.b64encode(b"wk_123:").decode(
            "ascii"
        )
        assert request.write_key == "wk_123"

    def test_content_type_and_user_agent(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """Content-Type is application/json; User-Agent names the library and its version."""
        make_transport().deliver(encoded(1))
        headers = collector.requests[0].headers
        assert headers["content-type"] == "application/json"
        assert f"segmentio-logging/{__version__}" in headers["user-agent"]

    def test_gzip_on_compresses_the_body(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """With gzip the body is gzip data and Content-Encoding says so."""
        make_transport(gzip=True).deliver(encoded(2))
        request = collector.requests[0]
        assert request.headers["content-encoding"] == "gzip"
        assert json.loads(gzip.decompress(request.raw))["writeKey"] == "test-key"
        assert ids(request.messages) == ["m0", "m1"]

    def test_gzip_off_sends_plain_json(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """Without gzip the body is plain JSON and there is no Content-Encoding."""
        make_transport(gzip=False).deliver(encoded(2))
        request = collector.requests[0]
        assert "content-encoding" not in request.headers
        assert json.loads(request.raw)["writeKey"] == "test-key"

    def test_batches_reuse_one_connection(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """Keep-alive: several batches in a row travel over the same TCP connection."""
        transport = make_transport()
        for i in range(4):
            only_response(transport.deliver(encoded(2, prefix=f"b{i}-")))
        assert len(collector.requests) == 4
        assert {r.connection for r in collector.requests} == {collector.requests[0].connection}

    def test_host_trailing_slash(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A host given with a trailing slash still posts to /v1/batch."""
        make_transport(host=collector.url + "/").deliver(encoded(1))
        assert collector.requests[0].path == "/v1/batch"

    def test_success_response_carries_status_text_and_attempts(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A 2xx gives a Response with the status, body text and number of attempts."""
        collector.script(Reply(201, body='{"ok":1}'))
        response = only_response(make_transport().deliver(encoded(1)))
        assert (response.status, response.text, response.attempts) == (201, '{"ok":1}', 1)

    def test_empty_batch_sends_nothing(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """No messages, no request and no outcome."""
        assert make_transport().deliver([]) == []
        assert collector.requests == []


class TestRetriedStatuses:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
    def test_retried_then_delivered(
        self, status: int, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A retryable status is retried and the batch is delivered on the next attempt."""
        collector.script(Reply(status))
        response = only_response(make_transport().deliver(encoded(2)))
        assert response.attempts == 2
        assert [r.status for r in collector.requests] == [status, 200]
        assert ids(collector.requests[1].messages) == ["m0", "m1"]

    def test_gives_up_after_max_retries(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """max_retries=3 means four requests, then a DeliveryError with the last status and body."""
        collector.default = Reply(500, body="down for maintenance")
        error = only_error(make_transport(max_retries=3).deliver(encoded(2)))
        assert len(collector.requests) == 4
        assert (error.status, error.body, error.attempts, error.count) == (
            500,
            "down for maintenance",
            4,
            2,
        )
        assert "max_retries=3" in error.reason

    def test_max_retries_zero_tries_once(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """max_retries=0: one request and no retry."""
        collector.default = Reply(503)
        error = only_error(make_transport(max_retries=0).deliver(encoded(1)))
        assert len(collector.requests) == 1
        assert error.attempts == 1

    def test_retry_budget_bounds_the_time(
        self,
        collector: LocalCollector,
        make_transport: MakeTransport,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With many retries allowed, the retry budget still ends the attempts."""
        monkeypatch.setattr(_transport, "BACKOFF_BASE", 0.1)
        collector.default = Reply(500)
        began = time.monotonic()
        error = only_error(make_transport(max_retries=100, retry_budget=0.4).deliver(encoded(1)))
        assert time.monotonic() - began < 3.0
        assert error.status == 500
        assert "retry budget" in error.reason
        assert 1 <= len(collector.requests) < 101


class TestNetworkErrors:
    def test_reset_is_retried(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A connection reset before the answer is retried on a new connection."""
        collector.script(Reply(reset=True), Reply(reset=True))
        response = only_response(make_transport().deliver(encoded(1)))
        assert response.attempts == 3
        assert [r.status for r in collector.requests] == [None, None, 200]

    def test_read_timeout_is_retried(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A server that hangs past the timeout is retried; the batch may arrive twice."""
        collector.script(Reply(hang=True))
        response = only_response(make_transport(timeout=0.2).deliver(encoded(1)))
        assert response.attempts == 2
        assert len(collector.requests) == 2

    def test_refused_connection_is_retried_then_fails(self, make_transport: MakeTransport) -> None:
        """A closed port refuses every attempt: max_retries+1 tries, an error without a status."""
        transport = make_transport(host=f"http://127.0.0.1:{closed_port()}", max_retries=2)
        error = only_error(transport.deliver(encoded(3)))
        assert error.status is None
        assert error.attempts == 3
        assert error.count == 3
        assert "refused" in error.body.lower() or "connection" in error.body.lower()

    def test_unexpected_exception_becomes_an_error(self, collector: LocalCollector) -> None:
        """A failure that is not a network error ends the batch with a DeliveryError, no raise."""

        class Broken(Transport):
            def post(self, body: bytes, timeout: float) -> Tuple[int, Any, str]:
                raise ValueError("broken")

        error = only_error(Broken(host=collector.url, write_key="k").deliver(encoded(2)))
        assert error.count == 2
        assert error.attempts == 1
        assert "ValueError: broken" in error.body


class TestNotRetried:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 501, 505])
    def test_one_request_and_error_with_status_and_body(
        self, status: int, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A non-retryable status is sent once and reported with its status and body."""
        collector.script(Reply(status, body=f'{{"error":"no {status}"}}'))
        error = only_error(make_transport().deliver(encoded(2)))
        assert len(collector.requests) == 1
        assert error.status == status
        assert error.body == f'{{"error":"no {status}"}}'
        assert (error.count, error.attempts) == (2, 1)


class TestRetryAfter:
    def test_seconds_are_waited(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """429 with Retry-After: 0.6 waits at least that long, not the tiny backoff."""
        collector.script(Reply.retry_after(0.6, 429))
        only_response(make_transport().deliver(encoded(1)))
        first, second = collector.requests
        assert second.received_at - first.received_at >= 0.6 - 0.05

    def test_on_503(self, collector: LocalCollector, make_transport: MakeTransport) -> None:
        """503 with Retry-After is honoured too."""
        collector.script(Reply.retry_after(0.5, 503))
        only_response(make_transport().deliver(encoded(1)))
        first, second = collector.requests
        assert second.received_at - first.received_at >= 0.5 - 0.05

    def test_http_date(self, collector: LocalCollector, make_transport: MakeTransport) -> None:
        """Retry-After as an HTTP date: the retry comes no earlier than that date."""
        reply = Reply.retry_after(1, 429, http_date=True)
        when = email.utils.parsedate_to_datetime(reply.headers["Retry-After"]).timestamp()
        collector.script(reply)
        only_response(make_transport().deliver(encoded(1)))
        assert collector.requests[1].received_at >= when - 0.05

    def test_capped(self, collector: LocalCollector, make_transport: MakeTransport) -> None:
        """A Retry-After beyond max_retry_after waits max_retry_after."""
        collector.script(Reply.retry_after(3600, 429))
        began = time.monotonic()
        only_response(make_transport(max_retry_after=0.3).deliver(encoded(1)))
        assert time.monotonic() - began < 3.0
        first, second = collector.requests
        assert second.received_at - first.received_at >= 0.3 - 0.05

    def test_past_budget_gives_up_at_once(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A wait that would pass the retry budget ends the batch now, with the 429."""
        collector.script(Reply.retry_after(30, 429))
        began = time.monotonic()
        error = only_error(make_transport(retry_budget=0.5).deliver(encoded(1)))
        assert time.monotonic() - began < 2.0
        assert (error.status, error.attempts) == (429, 1)
        assert len(collector.requests) == 1

    def test_ignored_on_500(
        self,
        collector: LocalCollector,
        make_transport: MakeTransport,
    ) -> None:
        """Retry-After on a 500 is not honoured: the backoff applies."""
        collector.script(Reply(500, headers={"Retry-After": "30"}))
        began = time.monotonic()
        only_response(make_transport().deliver(encoded(1)))
        assert time.monotonic() - began < 5.0


class TestRetryAfterParsing:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("3", 3.0), ("0", 0.0), (" 1.5 ", 1.5), ("-4", 0.0), ("100000", 300.0)],
    )
    def test_seconds(self, value: str, expected: float) -> None:
        """Delta seconds are read, negative ones clamp to zero, large ones to the cap."""
        assert retry_after({"Retry-After": value}) == expected

    @pytest.mark.parametrize("name", ["retry-after", "RETRY-AFTER", "Retry-After"])
    def test_header_name_any_case(self, name: str) -> None:
        """The header is found whatever its case."""
        assert retry_after({name: "2"}) == 2.0

    def test_http_date(self) -> None:
        """An HTTP date gives the seconds from now until then."""
        now = 1_700_000_000.0
        value = email.utils.formatdate(now + 7, usegmt=True)
        assert retry_after({"Retry-After": value}, now=now) == pytest.approx(7.0)

    def test_http_date_minus_zero_zone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A date with a -0000 zone is read as UTC, not as local time."""
        if not hasattr(time, "tzset"):
            pytest.skip("needs time.tzset to move the local zone away from UTC")
        now = 1_700_000_000.0
        value = email.utils.formatdate(now + 5).replace("+0000", "-0000")
        assert value.endswith("-0000")
        monkeypatch.setenv("TZ", "EST+05")
        time.tzset()
        try:
            assert retry_after({"Retry-After": value}, now=now) == pytest.approx(5.0)
        finally:
            monkeypatch.undo()
            time.tzset()

    def test_http_date_in_the_past(self) -> None:
        """A date already past means retry now."""
        value = email.utils.formatdate(1_000.0, usegmt=True)
        assert retry_after({"Retry-After": value}, now=2_000.0) == 0.0

    @pytest.mark.parametrize("value", ["", "soon", "nan", "inf", "Mon, 99 Foo 2020"])
    def test_unusable(self, value: str) -> None:
        """An empty, unparseable or non-finite value is ignored."""
        assert retry_after({"Retry-After": value}) is None

    def test_absent(self) -> None:
        """No header, no wait asked."""
        assert retry_after({}) is None


class TestBackoff:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (None, True),
            (408, True),
            (429, True),
            (500, True),
            (503, True),
            (599, True),
            (501, False),
            (505, False),
            (400, False),
            (413, False),
            (404, False),
            (301, False),
        ],
    )
    def test_is_retryable(self, status: Any, expected: bool) -> None:
        """Network errors, 408, 429 and 5xx other than 501 and 505 are retryable."""
        assert is_retryable(status) is expected


class TestSplitOn413:
    def test_halves_recursively_until_they_fit(self, make_transport: MakeTransport) -> None:
        """A 413 splits the batch in halves, again and again; every message arrives once."""
        with LocalCollector(max_body_bytes=300) as small:
            transport = make_transport(host=small.url)
            parts = encoded(10)
            outcomes = transport.deliver(parts)
            assert_partition(outcomes, 10)
            assert all(isinstance(o, Response) for _, _, o in outcomes)
            assert len(outcomes) > 2
            delivered = ids(small.messages)
            assert sorted(delivered) == sorted(f"m{i}" for i in range(10))
            assert [r.status for r in small.requests].count(413) >= 2

    def test_each_half_delivered(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """413 then two 200s: the two halves, in order, each reported delivered."""
        collector.script(Reply(413))
        outcomes = make_transport().deliver(encoded(5))
        assert [(s, e) for s, e, _ in outcomes] == [(0, 2), (2, 5)]
        assert [ids(r.messages) for r in collector.requests[1:]] == [
            ["m0", "m1"],
            ["m2", "m3", "m4"],
        ]

    def test_single_message_413_fails(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A 413 for a single message cannot be split: one request, a DeliveryError."""
        collector.script(Reply(413, body="too large"))
        error = only_error(make_transport().deliver(encoded(1)))
        assert len(collector.requests) == 1
        assert (error.status, error.body, error.count) == (413, "too large", 1)

    def test_failed_halves_reported_once_each(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """When the halves fail, each failed slice is one outcome; none overlap or repeat."""
        collector.script(Reply(413), Reply(400, body="bad a"), Reply(500), Reply(400, body="bad b"))
        outcomes = make_transport().deliver(encoded(4))
        assert_partition(outcomes, 4)
        errors = [o for _, _, o in outcomes]
        assert all(isinstance(e, DeliveryError) for e in errors)
        assert [(e.status, e.body, e.count) for e in errors] == [  # type: ignore[union-attr]
            (400, "bad a", 2),
            (400, "bad b", 2),
        ]
        assert len(collector.requests) == 4

    def test_split_shares_the_retry_budget(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """The halves of a split batch share one retry budget rather than one each."""
        # Budget 0.7 s, every retry asked for 0.5 s later: the first half makes two
        # requests and gives up at 0.5 s, when the receiver asked for a pause to 1.0 s,
        # past the budget; the second half, whose budget is the same, sends nothing.
        collector.script(Reply(413))
        collector.default = Reply.retry_after(0.5, 503)
        outcomes = make_transport(max_retries=100, retry_budget=0.7).deliver(encoded(2))
        assert_partition(outcomes, 2)
        assert [r.status for r in collector.requests] == [413, 503, 503]


class TestDeadline:
    def test_set_interrupts_a_retry_wait(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """Bringing the deadline forward from another thread ends a long Retry-After wait."""
        collector.default = Reply.retry_after(30, 503)
        deadline = Deadline()
        transport = make_transport(retry_budget=60)

        def shut_down() -> None:
            # Once the 503 was counted the sender waits out the pause (or is about to).
            if collector.wait_for_requests(1, timeout=5) and wait_until(
                lambda: transport.backoff.down, timeout=5
            ):
                deadline.set(time.monotonic())

        thread = threading.Thread(target=shut_down)
        thread.start()
        began = time.monotonic()
        outcomes = transport.deliver(encoded(3), deadline)
        elapsed = time.monotonic() - began
        thread.join(5)
        error = only_error(outcomes)
        assert elapsed < 3.0
        assert "deadline" in error.reason
        assert (error.status, error.count) == (503, 3)
        assert len(collector.requests) == 1

    def test_past_deadline_sends_nothing(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A deadline already past fails the batch without a request."""
        deadline = Deadline()
        deadline.set(time.monotonic() - 1)
        error = only_error(make_transport().deliver(encoded(2), deadline))
        assert error.attempts == 0
        assert collector.requests == []

    def test_set_only_brings_forward(self) -> None:
        """A later deadline never replaces an earlier one."""
        deadline = Deadline()
        deadline.set(100.0)
        deadline.set(200.0)
        assert deadline.at == 100.0

    def test_deadline_bounds_a_hanging_request(
        self, collector: LocalCollector, make_transport: MakeTransport
    ) -> None:
        """A request started near the deadline times out at the deadline, not the full timeout."""
        collector.default = Reply(hang=True)
        deadline = Deadline()
        deadline.set(time.monotonic() + 0.3)
        began = time.monotonic()
        error = only_error(make_transport(timeout=30).deliver(encoded(1), deadline))
        assert time.monotonic() - began < 3.0
        assert error.status is None


class TestCutByBytes:
    @pytest.mark.parametrize(
        ("sizes", "limit", "slices"),
        [
            ([], 100, []),
            ([10, 10, 10], 100, [(0, 3)]),
            ([10, 10, 10], 22, [(0, 2), (2, 3)]),  # each part counts one comma
            ([10, 10, 10], 21, [(0, 1), (1, 2), (2, 3)]),
            ([50, 10], 20, [(0, 1), (1, 2)]),  # a part over the limit is a slice of its own
            ([5, 60, 5], 20, [(0, 1), (1, 2), (2, 3)]),
        ],
    )
    def test_slices_fit_the_limit(
        self, sizes: List[int], limit: int, slices: List[Tuple[int, int]]
    ) -> None:
        """cut_by_bytes gives consecutive slices that cover every part and fit the limit."""
        parts = [b"x" * size for size in sizes]
        assert list(cut_by_bytes(parts, limit)) == slices

    def test_the_transport_knows_what_the_parts_of_one_request_may_take(
        self, make_transport: MakeTransport
    ) -> None:
        """max_parts_bytes leaves room for the envelope, whose size grows with the write key."""
        short = make_transport(write_key="k")
        long = make_transport(write_key="k" * 100)
        assert MAX_BATCH_BYTES - 200 < long.max_parts_bytes < short.max_parts_bytes
        assert short.max_parts_bytes < MAX_BATCH_BYTES


class TestBatchBody:
    @pytest.mark.parametrize("write_key", ["key", 'k"ey\\ü\u2028', None, ""])
    @pytest.mark.parametrize("count", [0, 1, 7])
    def test_body_is_valid_json(self, write_key: Optional[str], count: int) -> None:
        """The body is {"batch": [...], "sentAt": ..., "writeKey": ...}, writeKey only when set."""
        messages = [build_message("track", user_id=f"u{i}", event="É") for i in range(count)]
        parts = [encode(message) for message in messages]
        sent_at = format_timestamp(CREATED)
        body = json.loads(batch_body(parts, write_key, sent_at))
        expected: Dict[str, Any] = {"batch": [json.loads(p) for p in parts], "sentAt": sent_at}
        if write_key:
            expected["writeKey"] = write_key
        assert body == expected
        assert list(body) == list(expected)

    @pytest.mark.parametrize("write_key", ["key", "w" * 200, 'ü"\\', None])
    @pytest.mark.parametrize("count", [1, 2, 50])
    def test_envelope_size_bounds_the_overhead(self, write_key: Optional[str], count: int) -> None:
        """Body size never exceeds the messages plus one comma each plus envelope_size."""
        parts = [
            encode(build_message("track", user_id="u", event="E" * (i + 1))) for i in range(count)
        ]
        for epoch in (0.0, CREATED, 253_402_300_799.999):
            body = batch_body(parts, write_key, format_timestamp(epoch))
            assert len(body) <= sum(len(p) + 1 for p in parts) + envelope_size(write_key)

    def test_full_batch_stays_under_the_request_limit(self) -> None:
        """Parts filling MAX_BATCH_BYTES - envelope_size (commas counted) make a body <= 500 KB."""
        key = "a-write-key"
        message = build_message("track", user_id="u", event="E", properties={"p": "x" * 30_000})
        part = encode(message)
        room = MAX_BATCH_BYTES - envelope_size(key)
        parts = [part] * (room // (len(part) + 1))
        body = batch_body(parts, key, format_timestamp(CREATED))
        assert len(body) <= MAX_BATCH_BYTES
        assert len(json.loads(body)["batch"]) == len(parts)


class TestTransportFor:
    def test_sync_mode_bounds_the_wait_of_the_callers_thread(self) -> None:
        """With sync_mode and no retry_budget, the caller waits at most 60 s for a receiver
        that is down; without sync_mode there is no limit; a retry_budget set is kept."""

        def budget(**options: Any) -> Any:
            transport = transport_for(resolve_options({"write_key": "k", **options}, {}))
            transport.close()
            return transport.retry_budget

        assert budget(sync_mode=True) == 60.0
        assert budget() is None
        assert budget(sync_mode=True, retry_budget=5) == 5.0
