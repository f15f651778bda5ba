"""What the commands share: the write key and host from the flags or the environment."""

from __future__ import annotations

import base64
import getpass
import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Union

import pytest

from segmentio_logging.cli import main
from segmentio_logging.cli._common import read_write_key
from segmentio_logging.testing import LocalCollector

from ..helpers import valid
from .helpers import child_env, jsonl_events, post, run_cli, write_lines


class TestOptionsFromFlags:
    """Options come from the flags, else ``SEGMENT_*``; a missing write key is a usage error."""

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


def _key_file(tmp_path: Path, content: Union[str, bytes]) -> str:
    path = tmp_path / "write-key"
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def _basic(key: str) -> Dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


class TestWriteKeyFromAFile:
    """``--writeKey-file PATH`` / ``-``: the key stays out of the command line other users see."""

    @pytest.mark.parametrize("flag", ["--writeKey-file", "--write-key-file"])
    def test_send_takes_the_key_from_a_file(
        self, tmp_path: Path, collector: LocalCollector, flag: str
    ) -> None:
        """send reads the key from the file, one newline stripped, and sends it as Basic auth."""
        path = _key_file(tmp_path, "file-key\n")
        done = run_cli(
            "send", flag, path, f"--host={collector.url}", "--type=identify", "--userId=u1"
        )
        assert done.returncode == 0, done.stderr
        assert [request.write_key for request in collector.requests] == ["file-key"]
        assert collector.messages[0]["userId"] == "u1"

    def test_send_takes_the_key_from_stdin(self, collector: LocalCollector) -> None:
        """--writeKey-file - reads the key from standard input; flags alone still mean send."""
        done = run_cli(
            "--writeKey-file=-",
            f"--host={collector.url}",
            "--type=page",
            "--userId=u1",
            stdin="stdin-key\n",
        )
        assert done.returncode == 0, done.stderr
        assert [request.write_key for request in collector.requests] == ["stdin-key"]

    @pytest.mark.parametrize("source", ["file", "stdin"])
    def test_import_takes_the_key_from_a_file_or_stdin(
        self, tmp_path: Path, collector: LocalCollector, source: str
    ) -> None:
        """import sends every batch with the key read from the file or standard input."""
        events = write_lines(tmp_path / "events.jsonl", jsonl_events(30))
        key_flag = "-" if source == "stdin" else _key_file(tmp_path, "import-key\n")
        done = run_cli(
            "import",
            str(events),
            f"--writeKey-file={key_flag}",
            f"--host={collector.url}",
            "--rate=0",
            "--batch-size=10",
            stdin="import-key\n" if source == "stdin" else None,
        )
        assert done.returncode == 0, done.stderr
        assert len(collector.messages) == 30
        assert {request.write_key for request in collector.requests} == {"import-key"}
        assert len(collector.requests) == 3

    def test_collect_accepts_only_the_key_from_stdin(self) -> None:
        """collect --writeKey-file - answers 200 to the key read from stdin, 401 to another."""
        child = subprocess.Popen(
            [sys.executable, "-m", "segmentio_logging", "collect", "--writeKey-file", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert child.stdin is not None and child.stderr is not None
            child.stdin.write("expected-key\n")
            child.stdin.close()
            child.stdin = None  # closed: communicate() is not to flush it
            banner = child.stderr.readline()
            assert banner.startswith("listening on "), banner
            url = banner.split()[2].rstrip(":")
            body = json.dumps(valid()).encode()
            assert post(f"{url}/v1/track", body, _basic("other-key")) == 401
            assert post(f"{url}/v1/track", body, _basic("expected-key")) == 200
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=20)
        assert child.returncode == 1, err  # a request was rejected
        assert "1 valid message(s), 0 invalid, 1 request(s) rejected" in err
        assert "'other-key' is not the expected one" in out

    def test_collect_takes_the_key_from_a_file_in_process(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """collect --write-key-file PATH reads the key before it listens: an empty file stops it."""
        assert main(["collect", "--write-key-file", _key_file(tmp_path, "\n")]) == 2
        err = capsys.readouterr().err
        assert "is empty" in err and "listening" not in err

    @pytest.mark.parametrize(
        ("content", "key"),
        [
            ("k-1\n", "k-1"),
            ("k-1", "k-1"),
            ("k-1\r\n", "k-1"),
            ("\ufeffk-1\n", "k-1"),
            (" spaced key \n", " spaced key "),
        ],
        ids=["newline", "none", "crlf", "bom", "spaces-kept"],
    )
    def test_one_trailing_newline_is_stripped(self, tmp_path: Path, content: str, key: str) -> None:
        """One newline (LF or CRLF) and a UTF-8 byte order mark go; the rest is the key."""
        assert read_write_key(_key_file(tmp_path, content)) == key

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            (b"", "is empty"),
            (b"\n", "is empty"),
            (b"  \t\n", "is empty"),
            (b"k-1\n\n", "holds more than one line"),
            (b"k-1\nk-2\n", "holds more than one line"),
            (b"\xff\xfe", "is not UTF-8"),
            (b"k" * 5000, "is over 4096 bytes"),
        ],
        ids=["empty", "newline", "blank", "two-newlines", "two-keys", "binary", "huge"],
    )
    def test_a_file_that_holds_no_key_is_a_usage_error(
        self,
        tmp_path: Path,
        collector: LocalCollector,
        capsys: pytest.CaptureFixture[str],
        content: bytes,
        error: str,
    ) -> None:
        """A file empty, of several lines, or not text: exit 2 with the reason, nothing sent."""
        path = _key_file(tmp_path, content)
        status = main(
            [
                "send",
                "--writeKey-file",
                path,
                f"--host={collector.url}",
                "--type=page",
                "--userId=u",
            ]
        )
        assert status == 2
        err = capsys.readouterr().err
        assert f"--writeKey-file {path!r} {error}" in err
        assert collector.requests == []

    def test_empty_stdin_is_a_usage_error(self, collector: LocalCollector) -> None:
        """The real command with nothing on standard input exits 2 and says the key is missing."""
        done = run_cli(
            "send",
            "--writeKey-file=-",
            f"--host={collector.url}",
            "--type=page",
            "--userId=u",
            stdin="",
        )
        assert done.returncode == 2
        assert "--writeKey-file - (standard input) is empty" in done.stderr
        assert collector.requests == []

    def test_unreadable_file_is_a_usage_error(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """A missing file or a directory: exit 2 naming the path and the system's reason."""
        missing = tmp_path / "no-such-file"
        for path, reason in ((missing, "No such file or directory"), (tmp_path, "Is a directory")):
            done = run_cli(
                "import",
                str(write_lines(tmp_path / "e.jsonl", jsonl_events(1))),
                f"--write-key-file={path}",
                f"--host={collector.url}",
            )
            assert done.returncode == 2
            assert f"cannot read --writeKey-file {str(path)!r}: {reason}" in done.stderr
        assert collector.requests == []

    def test_key_and_key_file_together_are_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--writeKey and --writeKey-file exclude each other."""
        path = _key_file(tmp_path, "k\n")
        assert main(["send", "--writeKey=k", f"--writeKey-file={path}", "--type=page"]) == 2
        assert "not allowed with argument" in capsys.readouterr().err

    def test_key_file_wins_over_the_environment(
        self, tmp_path: Path, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SEGMENT_WRITE_KEY is the default: a key file given on the command line wins."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        path = _key_file(tmp_path, "file-key\n")
        status = main(
            [
                "send",
                f"--writeKey-file={path}",
                f"--host={collector.url}",
                "--type=page",
                "--userId=u",
            ]
        )
        assert status == 0
        assert collector.requests[0].write_key == "file-key"

    def test_terminal_on_stdin_is_asked_without_echo(
        self, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """At a terminal, --writeKey-file - asks with getpass (no echo), not reading to EOF."""
        prompts: List[str] = []

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        def ask(prompt: str = "Password: ", stream: Any = None) -> str:
            prompts.append(prompt)
            return "typed-key"

        monkeypatch.setattr(sys, "stdin", Terminal("never read\n"))
        monkeypatch.setattr(getpass, "getpass", ask)
        status = main(
            ["send", "--writeKey-file=-", f"--host={collector.url}", "--type=page", "--userId=u"]
        )
        assert status == 0
        assert prompts == ["write key: "]
        assert collector.requests[0].write_key == "typed-key"

    @pytest.mark.parametrize("command", ["send", "import", "collect"])
    def test_help_says_the_key_flag_is_seen_in_ps(self, command: str) -> None:
        """Each command's --help offers both key-file spellings and says ps shows --writeKey."""
        done = run_cli(command, "--help")
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        # 3.13 names the metavar once: "--writeKey-file, --write-key-file PATH"
        assert "--writeKey-file" in text and "--write-key-file PATH" in text
        assert "other users can see it in ps: prefer --writeKey-file" in text
        assert "'-': standard input" in text
