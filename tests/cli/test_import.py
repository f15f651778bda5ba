"""``import FILE``: historical messages sent in paced batches, resumable, with progress."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segmentio_logging.cli import main
from segmentio_logging.cli._import import line_message_id
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import child_env, import_args, jsonl_events, state_of, write_lines


class TestImport:
    """``import FILE``: historical JSON Lines and CSV, resumable, paced."""

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

    def test_resume_after_limit(self, tmp_path: Path, collector: LocalCollector) -> None:
        """Stopped after N lines, the next run sends the rest and nothing twice (batches go
        several at once: in any order)."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(7))
        assert main(import_args(path, collector, "--limit=3", "--batch-size=2")) == 0
        assert sorted(m["userId"] for m in collector.messages) == ["u1", "u2", "u3"]
        assert state_of(path)["line"] == 3
        assert main(import_args(path, collector, "--batch-size=2")) == 0
        assert sorted(m["userId"] for m in collector.messages) == [f"u{i}" for i in range(1, 8)]
        assert state_of(path)["sent"] == 7

    def test_resume_after_a_failing_receiver(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A batch the receiver refuses stops the import; the rerun resends it, same messageIds.

        Batches go several at once: one sent beside the refused one may have been
        accepted too; the rerun sends it again, with the same messageIds (deduplicated)."""
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(6))
        collector.script(Reply(200), Reply(500, '{"error":"down"}'))
        status = main(import_args(path, collector, "--batch-size=2", "--retries=0"))
        assert status == 1
        assert "not accepted" in capsys.readouterr().err
        first_run = list(collector.messages)
        refused = {m["messageId"] for m in collector.requests[1].messages}
        # The end of the accepted batches before the refused one (none: no state yet).
        has_state = Path(f"{path}.segment-import.json").exists()
        resume = state_of(path)["line"] if has_state else 0
        assert resume in (0, 2, 4)
        assert main(import_args(path, collector, "--batch-size=2", "--retries=0")) == 0
        resent = collector.messages[len(first_run) :]
        users = sorted((m["userId"] for m in resent), key=lambda user: int(user[1:]))
        assert users == [f"u{i}" for i in range(resume + 1, 7)]  # in any order
        assert refused <= {m["messageId"] for m in resent}
        assert {m["userId"] for m in collector.messages} == {f"u{i}" for i in range(1, 7)}

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
        # 300 lines at 40 a second: 7.5 s for the Ctrl-C to land before the end, on a
        # busy machine too.
        path = write_lines(tmp_path / "events.jsonl", jsonl_events(300))
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
        assert 2 <= confirmed < 300  # the third was in flight, or confirmed
        assert main(import_args(path, collector)) == 0
        ids = {m["messageId"] for m in collector.messages}
        assert len(ids) == 300  # a line sent twice carries the same messageId
        assert {m["userId"] for m in collector.messages} == {f"u{i}" for i in range(1, 301)}
