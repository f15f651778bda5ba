"""``collect``: LocalCollector with a SpecCheck, as a program printing a line per message."""

from __future__ import annotations

import contextlib
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest
import urllib3

from segmentio_logging import Client, SegmentHandler
from segmentio_logging.cli import main
from segmentio_logging.cli._collect import SpecCheck
from segmentio_logging.testing import LocalCollector, Reply

from ..helpers import AUTH, free_port, valid
from ..hostile import (
    Peak,
    at_once,
    closed_by_peer,
    gzip_bomb,
    needs_proc,
    proc_status,
    raw_connection,
    read_answer,
    request_head,
)
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

    def test_json_nested_too_deeply_is_a_400(
        self, receiver: LocalCollector, spec_check: SpecCheck
    ) -> None:
        """JSON nested past the parser's depth is answered 400, not a dropped connection."""
        assert post(f"{receiver.url}/v1/batch", b"[" * 100_000, AUTH) == 400
        assert spec_check.verdicts[0].error == "body is not valid JSON: nested too deeply"

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


# The figures a hostile client could drive the receiver to before it bounded them: a 2 GB
# body read whole, 3.1 GB for a 1 MB gzip bomb, a thread for each slow connection.
MEMORY_BOUND_KB = 100 * 1024


@contextlib.contextmanager
def running_collect(*args: str) -> Iterator[Tuple[subprocess.Popen[str], str]]:
    """``collect ARGS`` in a child process, and its URL; killed at the end if still running."""
    child = start_collect(*args)
    try:
        yield child, collect_url(child)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=20)


def threads_of(child: subprocess.Popen[str]) -> Callable[[], int]:
    """What measures the threads of ``child`` (all of them, as the system counts)."""
    return lambda: proc_status(child.pid)["Threads"]


@needs_proc
class TestCollectFacesHostileClients:
    """``collect`` in a process of its own, its memory and threads read from /proc."""

    def test_a_declared_2_gb_body_is_refused_unread(self) -> None:
        """Headers declaring 2 GB get 413 at once and the connection closes; memory stays low."""
        with running_collect() as (child, url), raw_connection(url) as sock:
            sock.sendall(request_head(2_000_000_000, headers=["Authorization: x"]))
            status, headers, _ = read_answer(sock)
            assert (status, headers["connection"]) == (413, "close")
            assert closed_by_peer(sock)
            assert proc_status(child.pid)["VmHWM"] < MEMORY_BOUND_KB

    def test_a_gzip_bomb_is_refused_and_memory_stays_low(self) -> None:
        """512 MiB of zeros in half a megabyte of gzip: 413, and the peak RSS stays under
        100 MB; collect reports the refusal."""
        bomb = gzip_bomb(512)
        assert len(bomb) < 1 << 20  # within --max-request-bytes: the decoded cap must hold
        with running_collect() as (child, url):
            headers = {**AUTH, "content-encoding": "gzip", "content-type": "application/json"}
            assert post(f"{url}/v1/batch", bomb, headers) == 413
            assert proc_status(child.pid)["VmHWM"] < MEMORY_BOUND_KB
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=20)
            assert "REJECTED  POST /v1/batch -> 413: the body decompresses to more than" in out
            assert "1 request(s) rejected" in err

    def test_slowloris_clients_are_cut_off_and_threads_stay_bounded(self) -> None:
        """30 clients trickling a byte every 50 ms: each is cut off after --request-timeout,
        no more than --max-connections threads serve them, and a real client is then served."""
        limits = ("--max-connections=8", "--request-timeout=0.5", "--idle-timeout=5")
        with running_collect(*limits) as (child, url):
            slow = [raw_connection(url) for _ in range(30)]
            for sock in slow:
                sock.sendall(b"POST /v1/batch HTTP/1.1\r\nX-Slow: ")
            with Peak(threads_of(child)) as peak:
                deadline = time.monotonic() + 60
                while slow and time.monotonic() < deadline:
                    readable, _, _ = select.select(slow, [], [], 0.05)
                    for sock in list(slow):
                        try:
                            if sock in readable and not sock.recv(65536):  # the 408, the close
                                raise ConnectionResetError
                            sock.sendall(b"x")
                        except OSError:
                            slow.remove(sock)
                            sock.close()
            assert slow == [], f"{len(slow)} slow clients still connected after 60 s"
            # The connections' threads, the main and serving ones, and one more: a thread
            # frees its slot as its last step, so the next may start before it has ended.
            assert peak.value <= 8 + 2 + 1
            body = json.dumps(valid()).encode()
            assert post(f"{url}/v1/track", body, AUTH) == 200

    def test_200_concurrent_clients_all_get_an_answer(self) -> None:
        """200 clients at once: each gets its 200, collect counts 200 valid messages, and the
        threads stay within 64 (the default) plus two."""
        body = json.dumps(valid()).encode()
        with running_collect("--count=200", "--duration=120") as (child, url):
            with Peak(threads_of(child)) as peak:
                statuses = at_once(200, lambda i: post(f"{url}/v1/track", body, AUTH))
            assert statuses == [200] * 200
            out, err = child.communicate(timeout=30)
            assert child.returncode == 0, err
            assert "200 valid message(s), 0 invalid" in err
            assert len(out.splitlines()) == 200
            assert peak.value <= 64 + 2


class TestCollectLimitFlags:
    def test_the_limit_flags_reach_the_receiver(self) -> None:
        """--max-request-bytes is the receiver's: a longer body gets 413 and counts as rejected."""
        port = free_port()
        result: List[int] = []
        args = ["collect", f"--port={port}", "--max-request-bytes=100", "--count=1"]
        runner = threading.Thread(target=lambda: result.append(main([*args, "--duration=20"])))
        runner.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        status = None
        while status is None and time.monotonic() < deadline:
            try:
                status = post(f"{url}/v1/batch", b"x" * 101, AUTH)
            except urllib3.exceptions.HTTPError:
                threading.Event().wait(0.05)  # the receiver is not listening yet
        assert status == 413  # a refused request counts as one without a readable message
        runner.join(10)
        assert result == [1]

    @pytest.mark.parametrize(
        "flag",
        [
            "--max-request-bytes=0",
            "--max-decoded-bytes=-5",
            "--idle-timeout=0",
            "--request-timeout=nan",
            "--max-connections=0",
        ],
    )
    def test_limits_must_be_above_0(self, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A limit of 0 or less (or not a number) is a usage error."""
        assert main(["collect", flag, "--duration=0.1"]) == 2
        assert f"{flag.split('=')[0]} must be above 0" in capsys.readouterr().err
