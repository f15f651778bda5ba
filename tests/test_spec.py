"""Segment's spec as checks: ``check_message`` and ``check_request``, with readable reasons."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
from typing import Any, Dict

import pytest

from segmentio_logging._spec import basic_auth_user, check_message, check_request, is_iso8601

from .helpers import AUTH, valid


class TestCheckMessage:
    """``check_message``: Segment's rules for one message, with readable reasons."""

    @pytest.mark.parametrize(
        "message",
        [
            valid(),
            valid(type="identify", event=None, userId=None, anonymousId="a", traits={"x": 1}),
            valid(type="group", event=None, groupId="g"),
            valid(type="alias", event=None, previousId="p"),
            valid(type="page", event=None, name="Home", properties={}),
            valid(type="screen", event=None, userId=7),
            valid(timestamp="2026-01-02T03:04:05.678Z", sentAt="2026-01-02T03:04:05+02:00"),
        ],
    )
    def test_valid_messages_have_no_errors(self, message: Dict[str, Any]) -> None:
        """Well-formed messages of every type pass."""
        assert check_message(message) == []

    @pytest.mark.parametrize(
        ("message", "reason"),
        [
            (valid(type=None), "missing type"),
            (valid(type="purchase"), "unknown type 'purchase'"),
            (valid(userId=None), "track needs userId or anonymousId"),
            (valid(userId=""), "userId must be a non-empty string"),
            (valid(type="alias", event=None), "alias needs previousId"),
            (valid(type="alias", event=None, userId=None, previousId="p"), "alias needs userId"),
            (valid(event=None), "track needs event"),
            (valid(event=""), "event must be a non-empty string"),
            (valid(type="group", event=None), "group needs groupId"),
            (valid(messageId=""), "messageId must be a non-empty string"),
            (valid(messageId="m" * 101), "over 100"),
            (valid(timestamp="yesterday"), "not ISO-8601"),
            (valid(timestamp="2026-02-30T00:00:00Z"), "not ISO-8601"),
            (valid(properties=[1]), "properties must be an object"),
            (valid(properties={"blob": "x" * 33_000}), "over the 32 KB limit"),
            ([1, 2], "must be a JSON object"),
        ],
    )
    def test_invalid_messages_say_why(self, message: Any, reason: str) -> None:
        """Each rule broken gives a reason naming the field."""
        assert any(reason in error for error in check_message(message)), check_message(message)

    def test_reasons_come_in_the_order_of_the_rules(self) -> None:
        """Every broken rule is reported, in a fixed order: the type and ids first, size last."""
        message = valid(
            userId="",
            anonymousId=[],
            groupId=False,
            event="",
            name=5,
            category=[],
            properties=[1],
            traits="t",
            context=1,
            integrations=[],
            timestamp="yesterday",
            sentAt=1,
            messageId="",
            blob="x" * 33_000,
        )
        assert check_message(message, "identify") == [
            "type 'track' sent to /v1/identify",
            "userId must be a non-empty string, got str",
            "anonymousId must be a non-empty string, got list",
            "groupId must be a non-empty string, got bool",
            "event must be a non-empty string, got str",
            "name must be a string, got int",
            "category must be a string, got list",
            "properties must be an object, got list",
            "traits must be an object, got str",
            "context must be an object, got int",
            "integrations must be an object, got list",
            "timestamp 'yesterday' is not ISO-8601 (like 2026-01-02T03:04:05.678Z)",
            "sentAt 1 is not ISO-8601 (like 2026-01-02T03:04:05.678Z)",
            "messageId must be a non-empty string, got str",
            "message is 33,215 bytes, over the 32 KB limit (32,768)",
        ]
        group = {"type": "group", "previousId": "", "name": 1}
        assert check_message(group) == [
            "previousId must be a non-empty string, got str",
            "group needs userId or anonymousId",
            "group needs groupId",
            "name must be a string, got int",
        ]

    def test_size_is_that_of_the_compact_utf8_encoding(self) -> None:
        """The 32 KB limit counts UTF-8 bytes without spaces or escapes: 32,768 pass, 32,769 not."""
        at_limit = valid(properties={"t": "é" * 16_343})  # 2 bytes each in UTF-8
        assert check_message(at_limit) == []
        over = valid(properties={"t": "é" * 16_343 + "a"})
        assert check_message(over) == ["message is 32,769 bytes, over the 32 KB limit (32,768)"]

    def test_message_id_is_optional(self) -> None:
        """Segment fills in a missing messageId: its absence is not an error."""
        assert check_message(valid(messageId=None)) == []

    def test_single_call_path_implies_the_type(self) -> None:
        """On /v1/track a message may omit type but must not claim another."""
        body = valid(type=None)
        assert check_message(body, "track") == []
        assert "sent to /v1/track" in check_message(valid(type="identify"), "track")[0]

    @pytest.mark.parametrize(
        ("text", "ok"),
        [
            ("2026-01-02T03:04:05Z", True),
            ("2026-01-02T03:04:05.1+01:00", True),
            ("2026-01-02 03:04", True),
            ("2026-01-02", False),
            ("2026-13-02T03:04:05Z", False),
            ("1700000000", False),
        ],
    )
    def test_iso8601(self, text: str, ok: bool) -> None:
        """Timestamps must be an ISO-8601 date and time."""
        assert is_iso8601(text) is ok

    @pytest.mark.parametrize(
        "date", ["2024-02-29", "2023-02-29", "2026-04-31", "2026-00-10", "0000-01-01", "9999-12-31"]
    )
    @pytest.mark.parametrize(
        "clock", ["23:59:60", "24:00:00", "00:60:00", "12:00:61", "07:08:09.123456789"]
    )
    @pytest.mark.parametrize("zone", ["Z", "+05:30", "-00:00"])
    def test_iso8601_in_the_usual_form_is_checked_as_any_other(
        self, date: str, clock: str, zone: str
    ) -> None:
        """A timestamp in the form clients send gets the same answer as one with a space."""
        usual = f"{date}T{clock}{zone}"
        other = f" {date} {clock}{zone} "  # not the usual form: read field by field
        hour, minute, second = (int(part) for part in clock.split(".")[0].split(":"))
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            expected = False
        else:
            expected = hour <= 23 and minute <= 59 and second <= 60
        assert is_iso8601(usual) is expected
        assert is_iso8601(other) is expected


class TestCheckRequest:
    """``check_request``: how a request as a whole is answered."""

    def batch(self, *messages: Any, **extra: Any) -> bytes:
        return json.dumps({"batch": list(messages), **extra}).encode()

    def test_valid_batch_is_200(self) -> None:
        """A good batch with Basic auth is accepted, every message valid."""
        verdict = check_request("/v1/batch", AUTH, self.batch(valid(), valid(messageId="m2")))
        assert verdict.status == 200 and verdict.write_key == "key"
        assert [c.valid for c in verdict.messages] == [True, True]

    def test_gzip_body(self) -> None:
        """A gzip body with Content-Encoding: gzip is read; a broken one is a 400."""
        headers = {**AUTH, "content-encoding": "gzip"}
        assert check_request("/v1/batch", headers, gzip.compress(self.batch(valid()))).status == 200
        verdict = check_request("/v1/batch", headers, b"not gzip")
        assert verdict.status == 400 and "gzip" in (verdict.error or "")

    @pytest.mark.parametrize(
        ("path", "headers", "body", "status", "reason"),
        [
            ("/v1/batch", AUTH, b"{", 400, "not valid JSON"),
            ("/v1/batch", AUTH, b"[]", 400, "must be a JSON object"),
            ("/v1/batch", AUTH, b'{"batch": {}}', 400, '"batch" array'),
            ("/v1/batch", {}, b'{"batch": []}', 401, "no write key"),
            ("/v2/track", AUTH, b"{}", 404, "unknown path"),
            ("/v1/batch", AUTH, b'{"batch": [], "sentAt": "now"}', 400, "sentAt"),
            ("/v1/batch", AUTH, b" " * 500_001, 400, "over the 500 KB limit"),
            ("/v1/batch", AUTH, json.dumps({"batch": [{}] * 2501}).encode(), 400, "over 2,500"),
        ],
        ids=["json", "object", "batch", "auth", "path", "sentAt", "size", "count"],
    )
    def test_malformed_requests_are_rejected_whole(
        self, path: str, headers: Dict[str, str], body: bytes, status: int, reason: str
    ) -> None:
        """Malformed requests get 400 (401 without a key, 404 off the API) and a reason."""
        verdict = check_request(path, headers, body)
        assert verdict.status == status
        assert reason in (verdict.error or "")

    @pytest.mark.parametrize(
        ("path", "headers", "body", "status", "reason"),
        [
            ("/v2/track", {**AUTH, "content-encoding": "br"}, b"{", 404, "unknown path"),
            ("/v1/batch", {"content-encoding": "br"}, b"{", 400, "unsupported Content-Encoding"),
            (
                "/v1/batch",
                {"content-encoding": "gzip"},
                gzip.compress(b" " * 500_001),
                400,
                "over the 500 KB limit",
            ),
            ("/v1/batch", {}, b"[]", 400, "must be a JSON object"),
            ("/v1/batch", {}, b'{"batch": {}}', 401, "no write key"),
            ("/v1/batch", AUTH, b'{"sentAt": "now"}', 400, '"batch" array'),
            (
                "/v1/batch",
                AUTH,
                json.dumps({"batch": [{}] * 2501, "sentAt": "now"}).encode(),
                400,
                "over 2,500",
            ),
        ],
        ids=["path", "encoding", "size", "object", "auth", "batch", "count"],
    )
    def test_the_first_problem_decides_the_answer(
        self, path: str, headers: Dict[str, str], body: bytes, status: int, reason: str
    ) -> None:
        """A request with several problems is answered for the first: path, encoding, size,
        JSON, write key, then the batch."""
        verdict = check_request(path, headers, body)
        assert verdict.status == status
        assert reason in (verdict.error or "")

    def test_write_key_in_the_body_and_expected_key(self) -> None:
        """The key may come in the body; with an expected key, another one is refused."""
        body = self.batch(valid(), writeKey="body-key")
        assert check_request("/v1/batch", {}, body).write_key == "body-key"
        assert check_request("/v1/batch", {}, body, write_key="other").status == 401

    def test_invalid_message_is_200_unless_strict(self) -> None:
        """Like Segment, a request with a bad message is accepted; --strict answers 400."""
        body = self.batch(valid(), valid(event=None))
        verdict = check_request("/v1/batch", AUTH, body)
        assert verdict.status == 200 and verdict.invalid == 1
        strict = check_request("/v1/batch", AUTH, body, strict=True)
        assert strict.status == 400 and "1 of 2" in (strict.error or "")

    def test_large_message_among_small_ones_is_found(self) -> None:
        """Each message is held to 32 KB, wherever it sits among others that fit."""
        big = valid(properties={"t": "x" * 40_000})
        near = valid(properties={"t": "y" * 30_000})  # fits alone, not with its neighbours
        body = self.batch(valid(), near, valid(), big, *[valid() for _ in range(50)], near)
        verdict = check_request("/v1/batch", AUTH, body)
        errors = [c.errors for c in verdict.messages]
        assert errors[3] and "over the 32 KB limit" in errors[3][0]
        assert [i for i, e in enumerate(errors) if e] == [3]

    def test_lone_surrogate_is_a_message_not_a_crash(self) -> None:
        """A lone surrogate escape (valid JSON) is checked and sized, never raises."""
        body = b'{"batch": [{"type": "track", "userId": "u", "event": "\\ud800"}]}'
        verdict = check_request("/v1/batch", AUTH, body)
        assert verdict.status == 200 and verdict.messages[0].valid

    def test_single_call_path(self) -> None:
        """POST /v1/identify carries one message whose type is the path's."""
        body = json.dumps({"userId": "u", "messageId": "m", "traits": {}}).encode()
        verdict = check_request("/v1/identify", AUTH, body)
        assert verdict.status == 200
        assert verdict.messages[0].valid and verdict.messages[0].message["type"] == "identify"


class TestBasicAuthUser:
    """``basic_auth_user``: the write key of a Basic auth header."""

    @pytest.mark.parametrize(
        ("header", "user"),
        [
            ("Basic " + base64.b64encode(b"key:").decode(), "key"),
            ("basic " + base64.b64encode(b"key:secret").decode(), "key"),
            ("Basic " + base64.b64encode(b":").decode(), ""),
            ("Basic not base64!", None),
            ("Basic " + base64.b64encode(b"\xff:").decode(), None),
            ("Bearer abc", None),
        ],
        ids=["user", "password", "empty", "not-base64", "not-utf8", "not-basic"],
    )
    def test_user_name(self, header: str, user: Any) -> None:
        """The user name before the colon; None when the header is not Basic or cannot be read."""
        assert basic_auth_user({"authorization": header}) == user

    def test_no_header(self) -> None:
        """Without an authorization header there is no user."""
        assert basic_auth_user({}) is None
