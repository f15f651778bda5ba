"""The command line: send, import, collect (and demo), in-process and as a program."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import urllib3

from segmentio_logging import Client, SegmentHandler
from segmentio_logging._cli import main
from segmentio_logging._collect import SpecCheck
from segmentio_logging._import import line_message_id, parse_map
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"authorization": "Basic " + base64.b64encode(b"key:").decode()}


@pytest.fixture(autouse=True)
def _no_segment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options come from the flags only: no SEGMENT_* variable of the machine leaks in."""
    for name in list(os.environ):
        if name.startswith("SEGMENT_"):
            monkeypatch.delenv(name)



def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m segmentio_logging ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "segmentio_logging", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def valid(**fields: Any) -> Dict[str, Any]:
    message = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def post(url: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> int:
    http = urllib3.PoolManager(retries=False)
    try:
        response = http.request("POST", url, body=body, headers=headers or {}, timeout=5.0)
        return int(response.status)
    finally:
        http.clear()


def write_lines(path: Path, lines: List[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# =========================================================================== send


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

    def test_flags_alone_mean_send(self, collector: LocalCollector) -> None:
        """Called as the end-to-end tester calls it, with no command name, it sends."""
        status = main(["--writeKey=key", f"--host={collector.url}", "--type=track", "--userId=u"])
        assert status == 2  # a track needs an event: the flags were taken as a send
        status = main(["--writeKey=key", f"--host={collector.url}", "--type=page", "--userId=u"])
        assert status == 0
        assert collector.messages[0]["type"] == "page"

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

    def test_unknown_type_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--type must be one of Segment's six types."""
        assert main(["send", "--writeKey=k", "--type=purchase", "--userId=u"]) == 2
        assert "invalid choice" in capsys.readouterr().err

    def test_no_write_key_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --writeKey or SEGMENT_WRITE_KEY the command says so and exits 2."""
        assert main(["send", "--type=identify", "--userId=u"]) == 2
        assert "SEGMENT_WRITE_KEY" in capsys.readouterr().err

    def test_write_key_and_host_from_the_environment(
        self, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SEGMENT_WRITE_KEY and SEGMENT_HOST stand in for the flags."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        assert main(["send", "--type=identify", "--userId=u"]) == 0
        assert collector.requests[0].write_key == "env-key"

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

    def test_usage_errors_exit_2(self) -> None:
        """An unknown command or flag is a usage error."""
        assert main(["bogus"]) == 2
        assert main(["send", "--writeKey=k", "--type=track", "--nope=1"]) == 2


# =========================================================================== import


def jsonl_events(count: int, start: int = 1) -> List[str]:
    return [
        json.dumps(
            {
                "type": "track",
                "userId": f"u{i}",
                "event": "Ordered",
                "properties": {"n": i},
                "timestamp": f"2021-03-04T05:06:{i % 60:02d}Z",
            }
        )
        for i in range(start, start + count)
    ]


def import_args(path: Path, collector: LocalCollector, *extra: str) -> List[str]:
    return ["import", str(path), "--writeKey=k", f"--host={collector.url}", "--rate=0", *extra]


def state_of(path: Path) -> Dict[str, Any]:
    return json.loads(Path(f"{path}.segment-import.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


class TestImport:
    """``import FILE``: historical JSON Lines and CSV, resumable, paced."""

    def test_jsonl_with_a_bad_line(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Good lines go out with their timestamps; bad ones are reported by line number."""
        good = jsonl_events(3)
        path = write_lines(
            tmp_path / "events.jsonl",
            [good[0], "{not json", good[1], "", '{"user_id": "u9", "event": "E"}', good[2]],
        )
        status = main(import_args(path, collector))
        out, err = capsys.readouterr()
        assert status == 1  # something was skipped
        assert [m["userId"] for m in collector.messages] == ["u1", "u2", "u3"]
        assert collector.messages[0]["timestamp"] == "2021-03-04T05:06:01.000Z"
        assert collector.messages[0]["properties"] == {"n": 1}
        assert f"{path}:2: skipped: invalid JSON" in err
        assert f"{path}:5: skipped: unknown field user_id" in err
        assert "imported 3 messages" in out and "2 bad lines skipped" in out
        assert state_of(path)["line"] == 6

    def test_every_line_type_and_epoch_timestamps(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """Lines carry any of the six types; epoch seconds and milliseconds become ISO-8601."""
        lines = [
            {"type": "identify", "userId": "u", "traits": {"a": 1}, "timestamp": 1600000000},
            {"type": "group", "userId": "u", "groupId": "g", "timestamp": 1600000000500},
            {"type": "alias", "userId": "u", "previousId": "p"},
            {"type": "page", "anonymousId": "a", "name": "Home"},
            {"type": "screen", "anonymousId": "a", "name": "Main", "messageId": "own-id"},
            {
                "userId": "u",
                "event": "Untyped, so --type",
                "originalTimestamp": "2020-01-01T00:00:00Z",
            },
        ]
        path = write_lines(tmp_path / "mixed.ndjson", [json.dumps(line) for line in lines])
        assert main(import_args(path, collector)) == 0
        got = collector.messages
        assert [m["type"] for m in got] == ["identify", "group", "alias", "page", "screen", "track"]
        assert got[0]["timestamp"] == "2020-09-13T12:26:40.000Z"
        assert got[1]["timestamp"] == "2020-09-13T12:26:40.500Z"
        assert got[4]["messageId"] == "own-id"
        assert got[5]["timestamp"] == "2020-01-01T00:00:00.000Z"

    def test_message_ids_are_the_same_on_every_run(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """A line without a messageId gets one derived from the line: a resend is deduplicated."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(4))
        assert main(import_args(path, collector)) == 0
        first = [m["messageId"] for m in collector.messages]
        collector.clear()
        assert main(import_args(path, collector, "--restart")) == 0
        assert [m["messageId"] for m in collector.messages] == first
        assert len(set(first)) == 4
        assert first[0] == line_message_id("events.jsonl", 1, jsonl_events(1)[0])

    def test_csv_with_map_and_a_bad_row(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """CSV columns fill fields by --map; other columns become properties; bad rows skipped."""
        path = tmp_path / "orders.csv"
        path.write_text(
            "user,action,ts,price,note\n"
            "u1,Ordered,2021-05-01T10:00:00Z,9.99,first\n"
            "u2,,2021-05-01T10:00:01Z,1,no action\n"
            "u3,Refunded,1620000000,2\n"
            'u4,Ordered,2021-05-01T10:00:03Z,5,"multi\nline"\n',
            encoding="utf-8",
        )
        status = main(
            import_args(path, collector, "--map", "userId=user,event=action", "--map=timestamp=ts")
        )
        err = capsys.readouterr().err
        assert status == 1
        first, last = collector.messages
        assert first["userId"] == "u1" and first["event"] == "Ordered"
        assert first["timestamp"] == "2021-05-01T10:00:00.000Z"
        assert first["properties"] == {"price": "9.99", "note": "first"}
        assert last["properties"]["note"] == "multi\nline"
        assert f"{path}:3: skipped: track needs event" in err
        assert f"{path}:4: skipped: 4 columns where the header has 5" in err
        assert state_of(path)["line"] == 6

    def test_csv_identify_rows_put_columns_in_traits(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """With --type identify, unmapped columns become traits; properties.KEY maps one in."""
        path = tmp_path / "people.csv"
        path.write_text("userId,email,plan\nu1,a@example.com,pro\n", encoding="utf-8")
        assert main(import_args(path, collector, "--type=identify", "--map=traits.tier=plan")) == 0
        (message,) = collector.messages
        assert message["type"] == "identify"
        assert message["traits"] == {"email": "a@example.com", "tier": "pro"}

    @pytest.mark.parametrize(
        ("spec", "reason"),
        [
            ("user", "FIELD=COLUMN"),
            ("user_id=user", "not a Segment field"),
            ("props.x=user", "nested fields"),
        ],
    )
    def test_bad_map_is_a_usage_error(self, spec: str, reason: str) -> None:
        """--map names Segment's fields; anything else is refused with the list of fields."""
        from segmentio_logging._cli import UsageError

        with pytest.raises(UsageError, match=reason):
            parse_map([spec])

    def test_map_to_a_missing_column_exits_2_before_sending(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --map column absent from the header stops the import before anything is sent."""
        path = tmp_path / "a.csv"
        path.write_text("user,action\nu1,E\n", encoding="utf-8")
        assert main(import_args(path, collector, "--map=userId=uid,event=action")) == 2
        assert "uid" in capsys.readouterr().err
        assert collector.requests == []

    def test_resume_after_limit(self, tmp_path: Path, collector: LocalCollector) -> None:
        """Stopped after N lines, the next run sends the rest and nothing twice."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(7))
        assert main(import_args(path, collector, "--limit=3", "--batch-size=2")) == 0
        assert [m["userId"] for m in collector.messages] == ["u1", "u2", "u3"]
        assert state_of(path)["line"] == 3
        assert main(import_args(path, collector, "--batch-size=2")) == 0
        assert [m["userId"] for m in collector.messages] == [f"u{i}" for i in range(1, 8)]
        assert state_of(path)["sent"] == 7

    def test_resume_after_a_failing_receiver(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A batch the receiver refuses stops the import; the rerun resends it, same messageIds."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(6))
        collector.script(Reply(200), Reply(500, '{"error":"down"}'))
        status = main(import_args(path, collector, "--batch-size=2", "--retries=0"))
        assert status == 1
        assert "not accepted" in capsys.readouterr().err
        assert state_of(path)["line"] == 2
        refused = [m["messageId"] for m in collector.requests[1].messages]
        assert main(import_args(path, collector, "--batch-size=2", "--retries=0")) == 0
        assert [m["userId"] for m in collector.messages] == [f"u{i}" for i in range(1, 7)]
        assert [m["messageId"] for m in collector.messages[2:4]] == refused

    def test_appended_lines_are_imported_by_the_next_run(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A finished import does nothing again; lines appended since are sent."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(2))
        assert main(import_args(path, collector)) == 0
        assert main(import_args(path, collector)) == 0
        assert "nothing new to import" in capsys.readouterr().out
        with path.open("a", encoding="utf-8") as stream:
            stream.write(jsonl_events(1, start=3)[0] + "\n")
        assert main(import_args(path, collector)) == 0
        assert [m["userId"] for m in collector.messages] == ["u1", "u2", "u3"]

    def test_changed_file_is_not_resumed(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """When the lines already sent changed, resuming would skip the wrong lines: exit 2."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(4))
        assert main(import_args(path, collector, "--limit=2")) == 0
        write_lines(path, jsonl_events(4, start=10))
        assert main(import_args(path, collector)) == 2
        assert "--restart" in capsys.readouterr().err
        assert len(collector.messages) == 2

    def test_csv_resume(self, tmp_path: Path, collector: LocalCollector) -> None:
        """A CSV import resumes after its header and the rows already sent."""
        path = tmp_path / "e.csv"
        path.write_text("userId,event\n" + "".join(f"u{i},E\n" for i in range(5)), "utf-8")
        assert main(import_args(path, collector, "--limit=2")) == 0
        assert main(import_args(path, collector)) == 0
        assert [m["userId"] for m in collector.messages] == [f"u{i}" for i in range(5)]

    def test_dry_run_sends_nothing(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run checks every line, needs no write key, and sends and records nothing."""
        path = write_lines(tmp_path / "events.jsonl", [*jsonl_events(2), "[]"])
        assert main(["import", str(path), f"--host={collector.url}", "--dry-run"]) == 1
        out, err = capsys.readouterr()
        assert "checked 2 messages" in out and ":3: skipped" in err
        assert collector.requests == []
        assert not Path(f"{path}.segment-import.json").exists()

    def test_progress_shows_count_rate_and_eta(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--progress (the default on a terminal) draws the line count, the rate and an ETA."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(5))
        assert main(import_args(path, collector, "--progress", "--batch-size=2")) == 0
        err = capsys.readouterr().err
        assert "line 5/5 (100%)" in err and "msg/s" in err and "ETA" in err

    def test_no_progress_off_a_terminal(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Off a terminal there is only the summary."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(2))
        assert main(import_args(path, collector)) == 0
        assert "msg/s" not in capsys.readouterr().err

    def test_rate_bounds_the_pace(self, tmp_path: Path, collector: LocalCollector) -> None:
        """--rate spaces the batches: 40 messages at 400/s in batches of 10 take 75 ms or more."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(40))
        args = import_args(path, collector, "--batch-size=10")
        args[args.index("--rate=0")] = "--rate=400"
        started = time.monotonic()
        assert main(args) == 0
        assert time.monotonic() - started >= 0.075  # three gaps of 25 ms after the first batch
        assert len(collector.requests) == 4

    def test_missing_file_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A path that is not a file is a usage error."""
        assert main(["import", str(tmp_path / "nope.jsonl"), "--writeKey=k"]) == 2
        assert "no such file" in capsys.readouterr().err

    def test_interrupted_import_resumes(self, tmp_path: Path, collector: LocalCollector) -> None:
        """Ctrl-C stops the program with 130 and a resumable state; the rerun completes."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(60))
        args = [*import_args(path, collector)[:-1], "--rate=40", "--batch-size=1"]
        child = subprocess.Popen(
            [sys.executable, "-m", "segmentio_logging", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert collector.wait_for_messages(3, timeout=20)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 130, err
        assert "interrupted" in err
        confirmed = state_of(path)["line"]
        assert 2 <= confirmed < 60  # the third was in flight, or confirmed
        assert main(import_args(path, collector)) == 0
        ids = {m["messageId"] for m in collector.messages}
        assert len(ids) == 60  # a line sent twice carries the same messageId
        assert {m["userId"] for m in collector.messages} == {f"u{i}" for i in range(1, 61)}


# =========================================================================== collect


@pytest.fixture
def spec_check() -> SpecCheck:
    """A SpecCheck that keeps every verdict."""
    return SpecCheck()


@pytest.fixture
def receiver(spec_check: SpecCheck) -> Iterator[LocalCollector]:
    """A LocalCollector that runs ``spec_check`` on every request."""
    with LocalCollector(check=spec_check) as server:
        yield server


class TestSpecCheck:
    """``SpecCheck``: a LocalCollector given one checks what it gets and answers like Segment."""

    def test_the_handler_output_is_valid(
        self, receiver: LocalCollector, spec_check: SpecCheck, logger: logging.Logger
    ) -> None:
        """Everything SegmentHandler sends passes the checks."""
        handler = SegmentHandler("key", host=receiver.url, flush_interval=0.05)
        try:
            log = logger
            log.addHandler(handler)
            log.warning("Played", extra={"user_id": "u1", "properties": {"a": 1}})
            log.warning("me", extra={"anonymous_id": "a", "traits": {"t": 1}})
            log.warning("x", extra={"user_id": "u1", "previous_id": "p"})
            assert handler.flush(10)
        finally:
            handler.close()
        assert spec_check.counts()["valid"] == 3 and spec_check.counts()["invalid"] == 0
        assert len(receiver.messages) == 3  # still a LocalCollector

    def test_answers_as_checked(self, receiver: LocalCollector, spec_check: SpecCheck) -> None:
        """Malformed bodies get 400, missing auth 401, and the recorded status says so."""
        assert post(f"{receiver.url}/v1/batch", b"nope", AUTH) == 400
        assert post(f"{receiver.url}/v1/batch", b'{"batch": []}') == 401
        assert post(f"{receiver.url}/v1/track", json.dumps(valid()).encode(), AUTH) == 200
        assert [r.status for r in receiver.requests] == [400, 401, 200]
        assert spec_check.counts() == {
            "requests": 3, "rejected": 2, "unreadable": 2, "messages": 1, "valid": 1,
            "invalid": 0,
        }  # fmt: skip
        assert [v.status for v in spec_check.verdicts] == [400, 401, 200]

    def test_scripted_replies_still_win(self, receiver: LocalCollector) -> None:
        """A reply scripted as on LocalCollector is answered instead of the checked one."""
        receiver.script(Reply(503))
        assert post(f"{receiver.url}/v1/batch", b"nope", AUTH) == 503
        assert post(f"{receiver.url}/v1/batch", b"nope", AUTH) == 400

    def test_keep_false_counts_without_keeping(self) -> None:
        """With keep=False the receiver counts requests but does not hold them."""
        check = SpecCheck(keep=False)
        with LocalCollector(check=check) as server:
            client = Client("k", host=server.url, sync_mode=True)
            client.track("s", "u", "E")
            client.shutdown()
            assert check.wait_for_received(1, timeout=5)
            assert server.requests == [] and check.counts()["valid"] == 1
            assert check.verdicts == []


def start_collect(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "segmentio_logging", "collect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def collect_url(child: subprocess.Popen[str]) -> str:
    assert child.stderr is not None
    banner = child.stderr.readline()
    assert banner.startswith("listening on "), banner
    return banner.split()[2].rstrip(":")


class TestCollect:
    """``collect``: the receiver as a program, printing a line per message."""

    def test_prints_good_and_bad_messages_and_stops_at_count(self) -> None:
        """Each message gets a line, the invalid ones with their reason; --count ends the run."""
        child = start_collect("--count=3", "--duration=30")
        try:
            url = collect_url(child)
            client = Client("k", host=url, sync_mode=True)
            client.track("s", "u1", "Played a Song", {"artist": "X"})
            client.identify(None, "u1", {"plan": "pro"})
            client.shutdown()
            bad = {"batch": [{"type": "track", "userId": "u2", "messageId": "m"}]}
            assert post(f"{url}/v1/batch", json.dumps(bad).encode(), AUTH) == 200
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 1  # an invalid message arrived
        lines = out.splitlines()
        assert len(lines) == 3
        assert "ok" in lines[0] and "track" in lines[0] and "event=Played a Song" in lines[0]
        assert "ok" in lines[1] and "identify" in lines[1] and '"plan": "pro"' in lines[1]
        assert "INVALID" in lines[2] and "track needs event" in lines[2]
        assert "2 valid message(s), 1 invalid" in err

    def test_all_valid_exits_0_and_ctrl_c_stops(self) -> None:
        """Ctrl-C ends the run; with nothing invalid received the exit status is 0."""
        child = start_collect()
        try:
            url = collect_url(child)
            client = Client("k", host=url, sync_mode=True)
            client.page("s", None, None, "Home")
            client.shutdown()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 0, err
        assert "page" in out and "name=Home" in out
        assert "stopped" in err

    def test_sigterm_stops_with_the_summary(self) -> None:
        """SIGTERM (a supervisor, ``timeout``) ends the run as Ctrl-C does, summary and status."""
        child = start_collect()
        try:
            url = collect_url(child)
            client = Client("k", host=url, sync_mode=True)
            client.track("s", None, "Opened")
            client.shutdown()
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 0, err
        assert "event=Opened" in out
        assert "stopped: 1 request(s), 1 valid message(s)" in err

    def test_jsonl_in_process(self, tmp_path: Path) -> None:
        """--jsonl writes one JSON object per message with its verdict; --duration ends it."""
        port = free_port()
        target = tmp_path / "got.jsonl"
        result: List[int] = []
        args = ["collect", f"--port={port}", f"--jsonl={target}", "--count=2", "--duration=20"]
        runner = threading.Thread(target=lambda: result.append(main(args)))
        runner.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        sent = False
        while not sent and time.monotonic() < deadline:
            try:
                body = json.dumps(valid(type=None, event=None)).encode()
                sent = post(f"{url}/v1/screen", body, AUTH) == 200
            except urllib3.exceptions.HTTPError:
                threading.Event().wait(0.05)  # the receiver is not listening yet
        assert sent
        assert post(f"{url}/v1/group", json.dumps(valid(type=None)).encode(), AUTH) == 200
        runner.join(10)
        assert result == [1]
        records = [json.loads(line) for line in target.read_text("utf-8").splitlines()]
        assert [r["valid"] for r in records] == [True, False]
        assert records[0]["message"]["type"] == "screen"
        assert records[1]["errors"] == ["group needs groupId"]
        assert records[1]["writeKey"] == "key"

    def test_duration_without_messages(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--duration ends a quiet run; short of --count it exits 1."""
        started = time.monotonic()
        assert main(["collect", "--duration=0.2"]) == 0
        assert main(["collect", "--duration=0.2", "--count=1"]) == 1
        assert time.monotonic() - started < 5
        assert "only 0 of the 1" in capsys.readouterr().err

    def test_port_in_use_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A port that cannot be bound is a usage error."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert main(["collect", f"--port={port}", "--duration=0.1"]) == 2
        assert "cannot listen" in capsys.readouterr().err


class TestDemo:
    """``demo`` still runs the whole pipeline and prints its table."""

    def test_demo_exits_0_with_a_table(self) -> None:
        """``python -m segmentio_logging demo`` prints the received messages and exits 0."""
        done = run_cli("demo")
        assert done.returncode == 0, done.stderr
        assert "Played a Song" in done.stdout and "identify" in done.stdout
