"""LocalCollector: records what it receives, answers as scripted, fails on demand."""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import json
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from segmentio_logging._spec import Verdict
from segmentio_logging.testing import LocalCollector, Reply, Request

# socket.timeout became an alias of TimeoutError only in Python 3.10.
READ_TIMEOUT = (TimeoutError, socket.timeout)


def connect(collector: LocalCollector, timeout: float = 5.0) -> http.client.HTTPConnection:
    parts = urlsplit(collector.url)
    assert parts.hostname is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post(
    collector: LocalCollector,
    body: Any,
    *,
    path: str = "/v1/batch",
    headers: Optional[Dict[str, str]] = None,
    compress: bool = False,
    conn: Optional[http.client.HTTPConnection] = None,
    timeout: float = 5.0,
) -> Tuple[int, Dict[str, str], bytes]:
    """POST ``body`` (JSON-encoded unless bytes); the status, headers and body of the answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if compress:
        data = gzip.compress(data)
        sent["Content-Encoding"] = "gzip"
    own = conn is None
    conn = conn or connect(collector, timeout)
    try:
        conn.request("POST", path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        if own:
            conn.close()


def batch(*ids: str) -> Dict[str, Any]:
    return {
        "batch": [{"type": "track", "event": "E", "userId": "u", "messageId": i} for i in ids],
        "sentAt": "2026-01-01T00:00:00.000Z",
        "writeKey": "k",
    }


def auth(user: str) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


class TestRecording:
    def test_records_path_headers_and_body(self, collector: LocalCollector) -> None:
        """Method, path, lower-cased headers, raw bytes and the decoded JSON body are kept."""
        post(collector, batch("a"), headers={"X-Custom": "yes"})
        (request,) = collector.requests
        assert (request.method, request.path) == ("POST", "/v1/batch")
        assert request.headers["x-custom"] == "yes"
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.raw) == batch("a")
        assert request.body == batch("a")
        assert request.status == 200

    def test_decodes_gzip(self, collector: LocalCollector) -> None:
        """A gzip body is decompressed before decoding; raw stays compressed."""
        post(collector, batch("a", "b"), compress=True)
        request = collector.requests[0]
        assert request.raw[:2] == b"\x1f\x8b"
        assert [m["messageId"] for m in request.messages] == ["a", "b"]

    def test_undecodable_body_is_none(self, collector: LocalCollector) -> None:
        """A body that is not JSON is recorded raw, with body None and no messages."""
        post(collector, b"not json{")
        request = collector.requests[0]
        assert (request.raw, request.body, request.messages) == (b"not json{", None, [])

    def test_write_key_from_basic_auth(self, collector: LocalCollector) -> None:
        """write_key is the Basic auth user name."""
        post(collector, batch("a"), headers=auth("wk_1"))
        assert collector.requests[0].write_key == "wk_1"

    @pytest.mark.parametrize(
        "headers", [{}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic %%%"}]
    )
    def test_write_key_none_without_basic_auth(
        self, collector: LocalCollector, headers: Dict[str, str]
    ) -> None:
        """No, another, or a garbled Authorization header gives no write key."""
        post(collector, batch("a"), headers=headers)
        assert collector.requests[0].write_key is None

    @pytest.mark.parametrize("kind", ["track", "identify", "group", "alias", "page", "screen"])
    def test_single_call_paths(self, collector: LocalCollector, kind: str) -> None:
        """A single call to /v1/<type> is one message of that type."""
        post(collector, {"userId": "u", "messageId": "x"}, path=f"/v1/{kind}")
        assert collector.messages == [{"type": kind, "userId": "u", "messageId": "x"}]

    def test_unknown_path_has_no_messages(self, collector: LocalCollector) -> None:
        """A request to another path is recorded but carries no messages."""
        post(collector, batch("a"), path="/v2/other")
        assert len(collector.requests) == 1
        assert collector.messages == []

    def test_messages_only_from_accepted_requests(self, collector: LocalCollector) -> None:
        """messages and accepted leave out requests answered with an error."""
        collector.script(Reply(500))
        post(collector, batch("a"))
        post(collector, batch("b"))
        assert [r.status for r in collector.requests] == [500, 200]
        assert collector.accepted == collector.requests[1:]
        assert [m["messageId"] for m in collector.messages] == ["b"]

    def test_connection_ids_show_keep_alive(self, collector: LocalCollector) -> None:
        """Requests on one connection share its id; a new connection gets a new id."""
        conn = connect(collector)
        post(collector, batch("a"), conn=conn)
        post(collector, batch("b"), conn=conn)
        conn.close()
        post(collector, batch("c"))
        first, second, third = collector.requests
        assert first.connection == second.connection != third.connection

    def test_received_at_is_wall_clock(self, collector: LocalCollector) -> None:
        """received_at is the time.time() at which the request arrived."""
        before = time.time()
        post(collector, batch("a"))
        assert before <= collector.requests[0].received_at <= time.time()


class TestScript:
    def test_replies_in_order_then_default(self, collector: LocalCollector) -> None:
        """Scripted replies answer the next requests in order, then the default does."""
        collector.script(Reply(500, body="e1"), Reply(429, headers={"X-A": "1"}))
        collector.script(Reply(400, body="e3"))
        answers = [post(collector, batch(str(i))) for i in range(4)]
        assert [a[0] for a in answers] == [500, 429, 400, 200]
        assert answers[0][2] == b"e1"
        assert answers[1][1]["X-A"] == "1"
        assert answers[3][2] == b'{"success":true}'
        assert collector.pending_replies == 0

    def test_default_can_be_changed(self, collector: LocalCollector) -> None:
        """Setting default changes every unscripted answer."""
        collector.default = Reply(503)
        assert [post(collector, batch("a"))[0] for _ in range(2)] == [503, 503]

    def test_retry_after_seconds(self) -> None:
        """Reply.retry_after puts the seconds in the Retry-After header."""
        reply = Reply.retry_after(2.5, 503)
        assert (reply.status, reply.headers["Retry-After"]) == (503, "2.5")

    def test_retry_after_http_date(self) -> None:
        """With http_date the header is a date at least that many seconds ahead."""
        before = time.time()
        reply = Reply.retry_after(3, http_date=True)
        when = email.utils.parsedate_to_datetime(reply.headers["Retry-After"]).timestamp()
        assert reply.status == 429
        assert before + 3 <= when <= before + 5

    def test_max_body_bytes_answers_413(self) -> None:
        """Past max_body_bytes (decoded) the answer is 413, and the script is not used up."""
        with LocalCollector(max_body_bytes=200) as small:
            small.script(Reply(500))
            status, _, text = post(small, batch(*(str(i) for i in range(10))), compress=True)
            assert status == 413
            assert b"over 200" in text
            assert small.pending_replies == 1
            assert post(small, batch("a"))[0] == 500

    def test_delay_answers_later(self, collector: LocalCollector) -> None:
        """A delayed reply is recorded on arrival and answered after the delay."""
        collector.script(Reply(delay=0.3))
        began = time.monotonic()
        status, _, _ = post(collector, batch("a"))
        assert status == 200
        assert time.monotonic() - began >= 0.3 - 0.02


class TestFaults:
    def test_reset_breaks_the_connection(self, collector: LocalCollector) -> None:
        """reset closes the connection without an answer; the request is still recorded."""
        collector.script(Reply(reset=True))
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            post(collector, batch("a"))
        assert collector.wait_for_requests(1, timeout=5)
        assert collector.requests[0].status is None
        assert post(collector, batch("b"))[0] == 200

    def test_hang_holds_until_the_client_times_out(self, collector: LocalCollector) -> None:
        """hang never answers: the client's read times out."""
        collector.script(Reply(hang=True))
        with pytest.raises(READ_TIMEOUT):
            post(collector, batch("a"), timeout=0.2)
        assert collector.requests[0].status is None

    def test_release_hangs_closes_unanswered(self, collector: LocalCollector) -> None:
        """release_hangs lets a held request go: its connection closes without an answer."""
        collector.script(Reply(hang=True))
        errors: List[Exception] = []

        def client() -> None:
            try:
                post(collector, batch("a"), timeout=10)
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        assert collector.wait_for_requests(1, timeout=5)
        collector.release_hangs()
        thread.join(5)
        assert not thread.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], (ConnectionError, http.client.HTTPException))

    def test_a_later_hang_hangs_again(self, collector: LocalCollector) -> None:
        """release_hangs frees only the requests held now; the next hang reply hangs too."""
        collector.script(Reply(hang=True))
        collector.release_hangs()
        with pytest.raises(READ_TIMEOUT):
            post(collector, batch("a"), timeout=0.3)

    def test_stop_releases_hangs_promptly(self) -> None:
        """Stopping the collector does not wait for hanging requests."""
        receiver = LocalCollector().start()
        receiver.default = Reply(hang=True)

        def client() -> None:
            try:
                post(receiver, batch("a"), timeout=10)
            except Exception:
                pass

        thread = threading.Thread(target=client)
        thread.start()
        assert receiver.wait_for_requests(1, timeout=5)
        began = time.monotonic()
        receiver.stop()
        thread.join(5)
        assert time.monotonic() - began < 3.0
        assert not thread.is_alive()


class TestWaiting:
    def test_wait_for_messages_times_out(self, collector: LocalCollector) -> None:
        """wait_for_messages returns False at its timeout when too few arrived."""
        post(collector, batch("a"))
        began = time.monotonic()
        assert collector.wait_for_messages(2, timeout=0.2) is False
        assert 0.15 <= time.monotonic() - began < 2.0

    def test_wait_for_messages_wakes_on_arrival(self, collector: LocalCollector) -> None:
        """wait_for_messages returns True once enough messages were accepted."""
        thread = threading.Thread(target=lambda: post(collector, batch("a", "b", "c")))
        thread.start()
        assert collector.wait_for_messages(3, timeout=5) is True
        thread.join(5)

    def test_wait_for_messages_ignores_rejected(self, collector: LocalCollector) -> None:
        """Messages of rejected requests do not count."""
        collector.script(Reply(400))
        post(collector, batch("a", "b"))
        assert collector.wait_for_messages(1, timeout=0.1) is False

    def test_wait_for_requests_counts_every_answer(self, collector: LocalCollector) -> None:
        """wait_for_requests counts requests whatever their answer."""
        collector.script(Reply(500), Reply(400))
        post(collector, batch("a"))
        post(collector, batch("b"))
        assert collector.wait_for_requests(2, timeout=1) is True
        assert collector.wait_for_requests(3, timeout=0.1) is False

    def test_wait_for_predicate(self, collector: LocalCollector) -> None:
        """wait_for takes any predicate over the collector."""
        post(collector, batch("a"), headers=auth("wk"))
        assert collector.wait_for(lambda c: c.requests[0].write_key == "wk", timeout=1)
        assert not collector.wait_for(lambda c: len(c.requests) > 5, timeout=0.1)


class TestReset:
    def test_reset_forgets_requests_script_and_default(self, collector: LocalCollector) -> None:
        """reset empties the record and the script and restores the default reply."""
        collector.default = Reply(500)
        collector.script(Reply(400), Reply(401))
        post(collector, batch("a"))
        collector.reset()
        assert collector.requests == []
        assert collector.pending_replies == 0
        assert post(collector, batch("b"))[0] == 200

    def test_reset_releases_hangs(self, collector: LocalCollector) -> None:
        """reset lets held requests go."""
        collector.script(Reply(hang=True))
        done = threading.Event()

        def client() -> None:
            try:
                post(collector, batch("a"), timeout=10)
            except Exception:
                pass
            done.set()

        threading.Thread(target=client).start()
        assert collector.wait_for_requests(1, timeout=5)
        collector.reset()
        assert done.wait(5)

    def test_clear_keeps_the_script(self, collector: LocalCollector) -> None:
        """clear forgets requests but keeps scripted replies."""
        collector.script(Reply(400))
        collector.clear()
        assert collector.pending_replies == 1
        assert post(collector, batch("a"))[0] == 400


class TestLifecycle:
    def test_url_is_loopback_with_a_free_port(self) -> None:
        """Port 0 picks a free port on 127.0.0.1; the url says which."""
        with LocalCollector() as receiver:
            parts = urlsplit(receiver.url)
            assert (parts.scheme, parts.hostname) == ("http", "127.0.0.1")
            assert parts.port and parts.port > 0
            assert receiver.url in repr(receiver)

    def test_stop_twice_is_harmless(self) -> None:
        """stop may be called again after the context manager stopped it."""
        with LocalCollector() as receiver:
            post(receiver, batch("a"))
        receiver.stop()


class CheckRecorder:
    """A request check that answers every request with ``status`` and notes each call."""

    def __init__(self, status: int = 202, keep: bool = True) -> None:
        self.status = status
        self.keep = keep
        self.calls: List[Tuple[str, Optional[int]]] = []
        self.all_answered = threading.Event()

    def inspect(self, request: Request) -> Verdict:
        self.calls.append(("inspect", request.status))
        return Verdict(self.status, None if self.status < 400 else "refused")

    def record(self, request: Request, verdict: Verdict) -> None:
        self.calls.append(("record", request.status))

    def answered(self, request: Request) -> None:
        self.calls.append(("answered", request.status))
        self.all_answered.set()


class TestCheck:
    def test_the_verdict_answers_what_nothing_scripted(self) -> None:
        """A check's verdict answers each request with its status and body; the script wins."""
        check = CheckRecorder(status=400)
        with LocalCollector(check=check) as receiver:
            receiver.script(Reply(503))
            assert post(receiver, batch("a"))[0] == 503
            status, _, body = post(receiver, batch("b"))
            assert (status, json.loads(body)) == (400, {"success": False, "error": "refused"})
            assert [r.status for r in receiver.requests] == [503, 400]

    def test_the_check_sees_each_request_in_order(self) -> None:
        """inspect runs before the answer is chosen, record with its status, answered after it."""
        check = CheckRecorder()
        with LocalCollector(check=check) as receiver:
            assert post(receiver, batch("a"))[0] == 202
            assert check.all_answered.wait(5)
        assert check.calls == [("inspect", None), ("record", 202), ("answered", 202)]

    def test_no_answered_after_a_reset(self) -> None:
        """A reset sends no answer: the check records the request without a status, and no more."""
        check = CheckRecorder()
        with LocalCollector(check=check) as receiver:
            receiver.script(Reply(reset=True))
            with pytest.raises((ConnectionError, http.client.HTTPException)):
                post(receiver, batch("a"))
            assert receiver.wait_for_requests(1, timeout=5)
        assert check.calls == [("inspect", None), ("record", None)]

    def test_body_limit_wins_over_the_check(self) -> None:
        """max_body_bytes answers 413 before the check's verdict, the check still sees it."""
        check = CheckRecorder()
        with LocalCollector(max_body_bytes=10, check=check) as receiver:
            assert post(receiver, batch("a"))[0] == 413
        assert ("record", 413) in check.calls

    def test_keep_false_decodes_no_json(self) -> None:
        """A check that keeps no request reads raw: the collector leaves body None for it."""
        bodies: List[Any] = []

        class Seeing(CheckRecorder):
            def inspect(self, request: Request) -> Verdict:
                bodies.append(request.body)
                return super().inspect(request)

        for keep in (True, False):
            with LocalCollector(check=Seeing(keep=keep)) as receiver:
                assert post(receiver, batch("a"))[0] == 202
        assert bodies == [batch("a"), None]

    def test_keep_false_keeps_no_request(self) -> None:
        """A check with keep=False leaves the collector's record empty."""
        check = CheckRecorder(keep=False)
        with LocalCollector(check=check) as receiver:
            assert post(receiver, batch("a"))[0] == 202
            assert receiver.requests == []
        assert ("record", 202) in check.calls


class TestReplyBody:
    def test_default_body_follows_the_status(self) -> None:
        """A reply without a body says success for 2xx and names the status otherwise."""
        assert Reply().text == '{"success":true}'
        assert Reply(status=400).text == '{"error":"HTTP 400"}'
        assert Reply(status=400, body="nope").text == "nope"


def test_connections_have_nagle_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection the collector accepts has TCP_NODELAY set: an answer's headers and
    body go out in two sends, and with Nagle on the body would wait for a delayed ACK."""
    from segmentio_logging._collector_handler import CollectorHandler

    seen: List[int] = []
    original = CollectorHandler.setup

    def setup(self: Any) -> None:
        original(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(CollectorHandler, "setup", setup)
    with LocalCollector() as collector:
        parts = urlsplit(collector.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
        try:
            conn.request("POST", "/v1/batch", body=b'{"batch":[]}')
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    assert len(seen) == 1 and seen[0] != 0
