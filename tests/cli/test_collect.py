"""``collect``: LocalCollector with a SpecCheck, as a program printing a line per message."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import urllib3

from segmentio_logging import Client, SegmentHandler
from segmentio_logging.cli import main
from segmentio_logging.cli._collect import SpecCheck
from segmentio_logging.testing import LocalCollector, Reply

from ..helpers import AUTH, free_port, valid
from .helpers import child_env, post


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
