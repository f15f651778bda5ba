"""``send``: one message, synchronously, with the end-to-end tester's flags."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from segmentio_logging.cli import main
from segmentio_logging.testing import LocalCollector, Reply

from ..helpers import free_port
from .helpers import run_cli


class TestSend:
    """``send``: one message, synchronously, with the end-to-end tester's flags."""

    @pytest.mark.parametrize(
        ("flags", "expected"),
        [
            (
                ["--type=track", "--userId=u1", "--event=Played", '--properties={"a": 1}'],
                {"type": "track", "userId": "u1", "event": "Played", "properties": {"a": 1}},
            ),
            (
                ["--type", "identify", "--anonymousId", "a1", "--traits", '{"plan": "pro"}'],
                {"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}},
            ),
            (
                ["--type=group", "--userId=u1", "--groupId=acme", '--traits={"n": 3}'],
                {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"n": 3}},
            ),
            (
                ["--type=alias", "--userId=u1", "--previousId=anon-9"],
                {"type": "alias", "userId": "u1", "previousId": "anon-9"},
            ),
            (
                ["--type=page", "--userId=u1", "--name=Pricing", "--category=Docs"],
                {"type": "page", "userId": "u1", "name": "Pricing", "category": "Docs"},
            ),
            (
                ["--type=screen", "--anonymousId=a1", "--name=Home", '--properties={"x": true}'],
                {"type": "screen", "anonymousId": "a1", "name": "Home", "properties": {"x": True}},
            ),
        ],
        ids=["track", "identify", "group", "alias", "page", "screen"],
    )
    def test_each_type_is_delivered(
        self,
        collector: LocalCollector,
        capsys: pytest.CaptureFixture[str],
        flags: List[str],
        expected: Dict[str, Any],
    ) -> None:
        """Every message type is sent with its fields and the command exits 0."""
        status = main(["send", "--writeKey=key", f"--host={collector.url}", *flags])
        assert status == 0
        assert "accepted" in capsys.readouterr().out
        (message,) = collector.messages
        assert {k: message[k] for k in expected} == expected
        assert collector.requests[0].write_key == "key"

    def test_context_integrations_timestamp_and_message_id_are_kept(
        self, collector: LocalCollector
    ) -> None:
        """--context, --integrations, --timestamp and --messageId reach the receiver as given."""
        status = main(
            [
                "send",
                "--writeKey",
                "key",
                "--host",
                collector.url,
                "--type=track",
                "--userId=u1",
                "--event=E",
                '--context={"ip": "1.2.3.4"}',
                '--integrations={"All": false}',
                "--timestamp=2020-02-03T04:05:06Z",
                "--messageId=fixed-id-1",
            ]
        )
        assert status == 0
        (message,) = collector.messages
        assert message["context"]["ip"] == "1.2.3.4"
        assert message["context"]["library"]["name"] == "segmentio-logging"
        assert message["integrations"] == {"All": False}
        assert message["timestamp"] == "2020-02-03T04:05:06.000Z"
        assert message["messageId"] == "fixed-id-1"

    def test_400_exits_non_zero_with_the_reason(
        self, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A 400 answer is a failure: exit 1 and the receiver's reason on stderr."""
        collector.script(Reply(400, '{"error":"bad things"}'))
        status = main(
            ["send", "--writeKey=k", f"--host={collector.url}", "--type=identify", "--userId=u"]
        )
        assert status == 1
        err = capsys.readouterr().err
        assert "HTTP 400" in err and "bad things" in err
        assert len(collector.requests) == 1  # never retried

    def test_unreachable_host_exits_non_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With nobody listening the command fails with exit 1 and says why."""
        host = f"http://127.0.0.1:{free_port()}"
        status = main(
            [
                "send",
                "--writeKey=k",
                f"--host={host}",
                "--retries=0",
                "--type=identify",
                "--userId=u",
            ]
        )
        assert status == 1
        assert "not accepted" in capsys.readouterr().err

    def test_retries_a_503_then_succeeds(self, collector: LocalCollector) -> None:
        """A transient failure is retried; the command exits 0 once the receiver accepts."""
        collector.script(Reply.retry_after(0, status=503))
        status = main(
            [
                "send",
                "--writeKey=k",
                f"--host={collector.url}",
                "--type=alias",
                "--previousId=p",
                "--userId=u",
            ]
        )
        assert status == 0
        assert len(collector.requests) == 2 and len(collector.messages) == 1

    @pytest.mark.parametrize(
        ("flags", "reason"),
        [
            (
                ["--type=track", "--userId=u", '--properties={"a":'],
                "--properties is not valid JSON",
            ),
            (["--type=track", "--userId=u", "--properties=[1]"], "must be a JSON object"),
            (["--type=track", "--userId=u"], "track needs --event"),
            (["--type=track", "--event=E"], "needs --userId or --anonymousId"),
            (["--type=group", "--userId=u"], "group needs --groupId"),
            (["--type=alias", "--userId=u"], "alias needs --previousId"),
            (["--type=track", "--userId=u", "--event=E", "--timestamp=yesterday"], "ISO-8601"),
            (["--type=track", "--userId=u", "--event=E", f"--messageId={'x' * 101}"], "over 100"),
        ],
        ids=["bad-json", "not-object", "no-event", "no-id", "no-group", "no-previous", "ts", "mid"],
    )
    def test_invalid_input_exits_2_before_sending(
        self,
        collector: LocalCollector,
        capsys: pytest.CaptureFixture[str],
        flags: List[str],
        reason: str,
    ) -> None:
        """Invalid JSON or a missing required field: a clear error, exit 2, nothing sent."""
        status = main(["send", "--writeKey=k", f"--host={collector.url}", *flags])
        assert status == 2
        assert reason in capsys.readouterr().err
        assert collector.requests == []

    def test_fields_of_another_type_are_ignored_with_a_note(
        self, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--event on an identify is not sent, and the command says it ignored it."""
        status = main(
            [
                "send",
                "--writeKey=k",
                f"--host={collector.url}",
                "--type=identify",
                "--event=E",
                "--userId=u",
            ]
        )
        assert status == 0
        assert "event" not in collector.messages[0]
        assert "--event is not a field of identify" in capsys.readouterr().err

    def test_as_a_program(self, collector: LocalCollector) -> None:
        """``python -m segmentio_logging send`` exits 0 once the receiver accepted the message."""
        done = run_cli(
            "send", "--writeKey=k", f"--host={collector.url}", "--type=track",
            "--userId=u", "--event=From a shell",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert collector.messages[0]["event"] == "From a shell"
