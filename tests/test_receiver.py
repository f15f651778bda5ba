"""The receiver facing hostile clients: body caps, gzip bombs, slow clients, bounded threads."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import zlib
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from segmentio_logging import _receiver_stream
from segmentio_logging._receiver import MAX_HEAD_BYTES, Limits
from segmentio_logging._spec import Verdict
from segmentio_logging.testing import LocalCollector, Reply, Request

from .hostile import (
    Peak,
    address,
    at_once,
    batch_body,
    closed_by_peer,
    gzip_bomb,
    post,
    raw_connection,
    read_answer,
    request_head,
    threads_named,
    trickle,
    wait_until,
)

GZIP = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


@pytest.fixture
def small() -> Iterator[LocalCollector]:
    """A collector that reads bodies of 1,000 bytes at most, 4,000 once decompressed."""
    with LocalCollector(max_request_bytes=1_000, max_decoded_bytes=4_000) as receiver:
        yield receiver


def padded(size: int) -> bytes:
    """A batch body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = batch_body("a")
    assert len(body) <= size
    return body + b" " * (size - len(body))


class Checks:
    """A request check that answers 200 and notes each call with the status it saw."""

    keep = True

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []

    def inspect(self, request: Request) -> Verdict:
        self.calls.append(("inspect", request.path))
        return Verdict(200)

    def record(self, request: Request, verdict: Verdict) -> None:
        self.calls.append(("record", verdict.status))

    def answered(self, request: Request) -> None:
        self.calls.append(("answered", request.status))


class TestDeclaredSize:
    def test_a_declared_2_gb_body_gets_413_before_it_is_sent(
        self, collector: LocalCollector
    ) -> None:
        """Only the head is sent: the 413 comes at once, the connection closes, nothing read."""
        collector.script(Reply(500))
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(2_000_000_000))
            status, headers, body = read_answer(sock)
            assert status == 413
            assert headers["connection"] == "close"
            assert b"2000000000 bytes is over" in body
            assert closed_by_peer(sock)
        (request,) = collector.requests
        assert (request.status, request.raw, request.body) == (413, b"", None)
        assert collector.pending_replies == 1  # the script is left for real requests

    def test_expect_100_continue_gets_413_instead(self, small: LocalCollector) -> None:
        """A client that waits for 100 Continue is told 413 before it sends the body."""
        with raw_connection(small.url) as sock:
            sock.sendall(request_head(5_000, headers=["Expect: 100-continue"]))
            status, headers, _ = read_answer(sock)
            assert (status, headers["connection"]) == (413, "close")
            assert closed_by_peer(sock)
        assert [r.status for r in small.requests] == [413]

    def test_expect_100_continue_within_the_limit_continues(self, small: LocalCollector) -> None:
        """Within the limit the client gets its 100 Continue, then the answer."""
        body = batch_body("a")
        with raw_connection(small.url) as sock:
            sock.sendall(request_head(len(body), headers=["Expect: 100-continue"]))
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):  # http.client skips a 100 for us
                interim += sock.recv(1)
            assert interim.startswith(b"HTTP/1.1 100 ")
            sock.sendall(body)
            assert read_answer(sock)[0] == 200
        assert [m["messageId"] for m in small.messages] == ["a"]

    def test_a_client_that_sends_the_whole_body_anyway_reads_the_413(
        self, small: LocalCollector
    ) -> None:
        """The receiver drains what still comes after its 413, so the client reads it."""
        assert post(small.url, b"x" * 300_000) == 413

    def test_the_limit_itself_is_accepted(self, small: LocalCollector) -> None:
        """A body of exactly max_request_bytes is read; one byte more is not."""
        assert post(small.url, padded(1_000)) == 200
        assert post(small.url, padded(1_001)) == 413
        assert [r.status for r in small.requests] == [200, 413]

    @pytest.mark.parametrize(
        ("lines", "status"),
        [
            ([], 411),
            (["Content-Length: 12a"], 400),
            (["Content-Length: \u00b2"], 400),
            (["Content-Length: 10", "Content-Length: 11"], 400),
            (["Content-Length: 10", "Transfer-Encoding: chunked"], 400),
            (["Transfer-Encoding: gzip"], 501),
        ],
    )
    def test_a_body_it_cannot_frame_is_refused(
        self, collector: LocalCollector, lines: List[str], status: int
    ) -> None:
        """No length is a 411, a malformed or ambiguous one a 400; the connection closes."""
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(None, headers=lines))
            answer = read_answer(sock)
            assert (answer[0], answer[1]["connection"]) == (status, "close")
            assert closed_by_peer(sock)
        assert [r.status for r in collector.requests] == [status]

    def test_a_body_shorter_than_declared_is_a_400(self, collector: LocalCollector) -> None:
        """A client that stops sending before its Content-Length is told so."""
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(100) + b'{"batch":')
            sock.shutdown(socket.SHUT_WR)
            status, _, body = read_answer(sock)
        assert status == 400 and b"after 9 of 100 bytes" in body


class TestChunked:
    def send_chunks(self, collector: LocalCollector, chunks: List[bytes]) -> int:
        host, port = address(collector.url)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("POST", "/v1/batch", body=iter(chunks), encode_chunked=True)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def test_a_chunked_body_is_read_whole(self, collector: LocalCollector) -> None:
        """The chunks are joined; the request is recorded as if it had a length."""
        body = batch_body("a", "b")
        assert self.send_chunks(collector, [body[:10], body[10:]]) == 200
        assert [m["messageId"] for m in collector.messages] == ["a", "b"]
        assert collector.requests[0].raw == body

    def test_chunks_past_the_limit_get_413(self, small: LocalCollector) -> None:
        """Chunks adding up to more than max_request_bytes are refused as they arrive."""
        assert self.send_chunks(small, [b"x" * 600, b"x" * 600]) == 413

    def test_a_malformed_chunk_size_is_a_400(self, collector: LocalCollector) -> None:
        """A size line that is not hexadecimal is refused and the connection closed."""
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(None, headers=["Transfer-Encoding: chunked"]) + b"0x5\r\n")
            assert read_answer(sock)[0] == 400
            assert closed_by_peer(sock)


class TestDecodedSize:
    def test_a_gzip_bomb_gets_413_and_the_connection_goes_on(self) -> None:
        """64 MiB of zeros in 64 KB of gzip: 413 once 1 MiB came out; keep-alive goes on."""
        bomb = gzip_bomb(64)
        assert len(bomb) < 100_000
        check = Checks()
        with LocalCollector(max_decoded_bytes=1 << 20, check=check) as receiver:
            host, port = address(receiver.url)
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request("POST", "/v1/batch", body=bomb, headers=GZIP)
                response = conn.getresponse()
                assert response.status == 413
                assert b"decompresses to more than" in response.read()
                conn.request("POST", "/v1/batch", body=batch_body("a"))
                assert conn.getresponse().status == 200
            finally:
                conn.close()
            first, second = receiver.requests
        assert first.connection == second.connection
        assert (first.status, first.body) == (413, None)
        assert check.calls[0] == ("record", 413)  # refused: the check never decodes it
        assert ("inspect", "/v1/batch") in check.calls[1:]

    def test_the_decoded_limit_itself_is_accepted(self, small: LocalCollector) -> None:
        """A gzip body that decompresses to exactly max_decoded_bytes is taken; a byte more not."""
        assert post(small.url, gzip.compress(padded(4_000)), GZIP) == 200
        assert post(small.url, gzip.compress(padded(4_001)), GZIP) == 413
        assert [r.status for r in small.requests] == [200, 413]
        assert small.requests[0].body is not None

    def test_gzip_members_count_together(self, small: LocalCollector) -> None:
        """Several gzip members are joined, and their sizes add up against the limit."""
        body = batch_body("a")
        two = gzip.compress(body[:10]) + gzip.compress(body[10:]) + b"\0\0"
        assert post(small.url, two, GZIP) == 200
        assert [m["messageId"] for m in small.messages] == ["a"]
        many = gzip.compress(b" " * 2_500) * 2
        assert post(small.url, many, GZIP) == 413

    def test_a_plain_body_past_the_decoded_limit_gets_413(self) -> None:
        """Without gzip, max_decoded_bytes holds too (when it is the lower limit)."""
        with LocalCollector(max_request_bytes=10_000, max_decoded_bytes=1_000) as receiver:
            assert post(receiver.url, padded(1_001)) == 413

    def test_invalid_gzip_reaches_no_check(self) -> None:
        """Gzip that does not decompress: the check records a 400 without inspecting it."""
        check = Checks()
        broken = gzip.compress(batch_body("a"))[:-6]
        with LocalCollector(check=check) as receiver:
            assert post(receiver.url, broken, GZIP) == 400
        assert check.calls == [("record", 400), ("answered", 400)]

    def test_invalid_gzip_without_a_check_is_recorded_raw(self, collector: LocalCollector) -> None:
        """With no check, a body that is not gzip after all is recorded raw, body None."""
        assert post(collector.url, b"\x1f\x8bnot gzip", GZIP) == 200
        request = collector.requests[0]
        assert (request.raw, request.body) == (b"\x1f\x8bnot gzip", None)

    def test_the_bomb_is_never_decompressed_whole(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No call to zlib asks for more than the limit (plus one byte) of output."""
        asked: List[int] = []
        original = zlib.decompressobj

        class Counting:
            def __init__(self, *args: Any) -> None:
                self.inner = original(*args)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                asked.append(max_length)
                return self.inner.decompress(data, max_length)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        monkeypatch.setattr(zlib, "decompressobj", Counting)
        with LocalCollector(max_decoded_bytes=4_000) as receiver:
            assert post(receiver.url, gzip_bomb(8), GZIP) == 413
        assert asked and all(0 < n <= 4_001 for n in asked)


class TestHead:
    def test_header_lines_past_64_kb_get_431(self, collector: LocalCollector) -> None:
        """Header lines over MAX_HEAD_BYTES in all are refused before they are all read."""
        lines = [f"X-Filler-{i}: {'a' * 4_000}" for i in range(MAX_HEAD_BYTES // 4_000 + 2)]
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(2, headers=lines) + b"{}")
            assert read_answer(sock)[0] == 431
        assert collector.requests == []

    def test_a_head_within_the_limit_is_read(self, collector: LocalCollector) -> None:
        """Many header lines under MAX_HEAD_BYTES in all are fine."""
        lines = [f"X-Filler-{i}: {'a' * 500}" for i in range(90)]
        body = batch_body("a")
        with raw_connection(collector.url) as sock:
            sock.sendall(request_head(len(body), headers=lines) + body)
            assert read_answer(sock)[0] == 200
        assert collector.requests[0].headers["x-filler-89"] == "a" * 500


class TestClocks:
    @pytest.fixture(autouse=True, params=["socket options", "Python timeouts"])
    def clocks(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each clock test runs with the system's socket timeouts and with Python's (the
        fallback where the system has none)."""
        if request.param == "Python timeouts":
            monkeypatch.setattr(_receiver_stream, "_KERNEL_TIMEOUTS", False)

    def test_a_slowloris_head_is_cut_off_with_408(self) -> None:
        """A client sending a header byte every 50 ms gets 408 once request_timeout passed."""
        with LocalCollector(request_timeout=0.5, idle_timeout=5) as receiver:
            with raw_connection(receiver.url) as sock:
                sock.sendall(b"POST /v1/batch HTTP/1.1\r\nX-Slow: ")
                answer = trickle(sock, every=0.05, timeout=20)
                assert answer.startswith(b"HTTP/1.1 408 ")
                assert closed_by_peer(sock)
            assert receiver.requests == []

    def test_a_slow_body_is_cut_off_with_408(self) -> None:
        """The clock covers the body too: a body trickling in gets 408."""
        with LocalCollector(request_timeout=0.5, idle_timeout=5) as receiver:
            with raw_connection(receiver.url) as sock:
                sock.sendall(request_head(1_000) + b'{"batch":')
                assert trickle(sock, every=0.05, timeout=20).startswith(b"HTTP/1.1 408 ")

    def test_an_idle_connection_is_closed_without_an_answer(self) -> None:
        """A connection that sends nothing for idle_timeout is closed, with no 408."""
        with LocalCollector(idle_timeout=0.3) as receiver:
            with raw_connection(receiver.url) as sock:
                assert trickle(sock, every=20, timeout=30) == b""

    def test_a_stalled_client_is_closed_after_idle_timeout(self) -> None:
        """Half a head and then silence: closed after idle_timeout, with a 408."""
        with LocalCollector(idle_timeout=0.3, request_timeout=30) as receiver:
            with raw_connection(receiver.url) as sock:
                sock.sendall(b"POST /v1/batch HTTP/1.1\r\n")
                assert trickle(sock, every=20, timeout=30).startswith(b"HTTP/1.1 408 ")

    def test_the_request_clock_starts_at_its_first_byte(self) -> None:
        """Waiting on keep-alive is not counted against request_timeout."""
        with LocalCollector(request_timeout=0.2, idle_timeout=10) as receiver:
            body = batch_body("a")
            with raw_connection(receiver.url) as sock:
                sock.sendall(request_head(len(body)) + body)
                assert read_answer(sock)[0] == 200
                sock.settimeout(0.6)  # idle three times request_timeout: still open
                with pytest.raises(socket.timeout):
                    sock.recv(1)
                sock.settimeout(10)
                sock.sendall(request_head(len(body)) + body)
                assert read_answer(sock)[0] == 200


class TestConnections:
    def test_connections_past_the_bound_wait_for_a_thread(self) -> None:
        """With 4 connections held, 10 more wait unserved, and are served once threads free."""
        with LocalCollector(max_connections=4, request_timeout=30, idle_timeout=30) as receiver:
            name = receiver._server.thread_name
            with Peak(lambda: threads_named(name)) as peak:
                holders = [raw_connection(receiver.url) for _ in range(4)]
                for sock in holders:
                    sock.sendall(b"POST /v1/ba")
                assert wait_until(lambda: threads_named(name) == 4)
                results: List[Any] = []
                clients = [
                    threading.Thread(target=lambda: results.append(post(receiver.url, b"{}")))
                    for _ in range(10)
                ]
                for client in clients:
                    client.start()
                assert not receiver.wait_for_requests(1, timeout=0.3)
                for sock in holders:
                    sock.close()
                for client in clients:
                    client.join(30)
            assert results == [200] * 10
            assert peak.value == 4

    def test_200_concurrent_clients_all_get_an_answer(self, collector: LocalCollector) -> None:
        """200 clients at once each get their 200; no more than 64 threads serve them."""
        name = collector._server.thread_name
        with Peak(lambda: threads_named(name)) as peak:
            statuses = at_once(200, lambda i: post(collector.url, batch_body(str(i))))
        assert statuses == [200] * 200
        assert len(collector.messages) == 200
        assert 1 <= peak.value <= 64

    def test_too_many_large_bodies_at_once_get_503(self, small: LocalCollector) -> None:
        """Bodies being read hold 16 x max_request_bytes at most; past it a 503 says retry."""
        budget = small._server.budget
        holders = [raw_connection(small.url) for _ in range(16)]
        try:
            for sock in holders:
                sock.sendall(request_head(1_000))
            assert wait_until(lambda: budget._left == 0)
            with raw_connection(small.url) as sock:
                sock.sendall(request_head(1_000) + padded(1_000))
                status, headers, _ = read_answer(sock)
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        finally:
            for sock in holders:
                sock.close()
        assert wait_until(lambda: budget._left == 16_000)
        assert post(small.url, padded(1_000)) == 200

    def test_stop_closes_connections_waiting_for_a_thread(self) -> None:
        """stop() returns while a connection waits for a thread, and closes that connection."""
        receiver = LocalCollector(max_connections=1, request_timeout=30, idle_timeout=30).start()
        holder = raw_connection(receiver.url)
        waiting = raw_connection(receiver.url)
        try:
            holder.sendall(b"POST /v1/ba")
            assert wait_until(lambda: threads_named(receiver._server.thread_name) == 1)
            waiting.sendall(request_head(2) + b"{}")
            stopper = threading.Thread(target=receiver.stop)
            stopper.start()
            stopper.join(10)
            assert not stopper.is_alive()
            assert closed_by_peer(waiting)
        finally:
            holder.close()
            waiting.close()


class TestLimits:
    def test_defaults_are_above_segments_limits(self) -> None:
        """1 MiB as sent and 4 MiB decoded: past Segment's 500 KB per request."""
        limits = LocalCollector().limits
        assert (limits.max_request_bytes, limits.max_decoded_bytes) == (1 << 20, 4 << 20)
        assert (limits.idle_timeout, limits.request_timeout, limits.max_connections) == (10, 10, 64)

    @pytest.mark.parametrize(
        "options",
        [
            {"max_request_bytes": 0},
            {"max_decoded_bytes": -1},
            {"max_connections": True},
            {"max_connections": 2.5},
            {"idle_timeout": 0},
            {"request_timeout": float("inf")},
            {"request_timeout": float("nan")},
            {"idle_timeout": "5"},
        ],
    )
    def test_limits_out_of_range_are_refused(self, options: Dict[str, Any]) -> None:
        """Every limit is a number above 0 (sizes and counts whole), or LocalCollector raises."""
        with pytest.raises(ValueError, match=next(iter(options))):
            LocalCollector(**options)

    def test_limits_are_a_value(self) -> None:
        """Limits compare by value and cannot be changed."""
        assert Limits() == Limits()
        with pytest.raises(AttributeError):
            Limits().max_connections = 5  # type: ignore[misc]
