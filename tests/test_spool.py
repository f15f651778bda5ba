"""The disk spool: real files under tmp_path, real subprocesses and a real fork."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from segmentio_logging._errors import SegmentError, SpoolError
from segmentio_logging._spool import Spool

ROOT = Path(__file__).resolve().parent.parent
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock")
pytestmark = posix_only


def event(n: int, size: int = 0) -> bytes:
    """An encoded message with a recognisable number, padded to ``size`` bytes."""
    data = json.dumps({"messageId": f"m-{n}", "event": "e", "pad": ""}).encode()
    pad = max(size - len(data), 0)
    return json.dumps({"messageId": f"m-{n}", "event": "e", "pad": "x" * pad}).encode()


def number(data: bytes) -> int:
    return int(json.loads(data)["messageId"][2:])


class Recorder:
    """Collects on_drop and on_error calls."""

    def __init__(self) -> None:
        self.drops: List[Tuple[int, str]] = []
        self.errors: List[SpoolError] = []

    def on_drop(self, count: int, reason: str) -> None:
        self.drops.append((count, reason))

    def on_error(self, error: SpoolError) -> None:
        self.errors.append(error)

    @property
    def dropped(self) -> int:
        return sum(count for count, _ in self.drops)


def make(directory: Path, recorder: Optional[Recorder] = None, **options: Any) -> Spool:
    if recorder is not None:
        options.setdefault("on_drop", recorder.on_drop)
        options.setdefault("on_error", recorder.on_error)
    return Spool(directory, **options)


def drain(spool: Spool) -> List[int]:
    """Read and remove everything the spool holds; the event numbers in order."""
    seen: List[int] = []
    while True:
        batch = spool.oldest(50, 500_000)
        if not batch:
            return seen
        seen.extend(number(data) for _, data in batch)
        keys = [key for key, _ in batch]
        assert sorted(spool.remove(keys)) == sorted(keys)


def spool_files(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".sqlite3"))


def run_python(code: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_python(code: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def leave_orphan(directory: Path, numbers: range, size: int = 0) -> str:
    """A spool file left by a process that exited with events still stored."""
    spool = Spool(directory, max_bytes=10_000_000)
    spool.append([event(n, size) for n in numbers])
    own = spool._own
    assert own is not None
    path = own.path
    spool.close()
    return os.path.basename(path)


class TestSpoolRoundTrip:
    def test_append_oldest_remove_preserves_order_and_bytes(self, tmp_path: Path) -> None:
        """What append stored comes back from oldest byte for byte, oldest first, until removed."""
        spool = make(tmp_path / "spool")
        parts = [event(n, 300) for n in range(250)]
        keys = spool.append(parts[:100]) + spool.append(parts[100:])
        assert len(keys) == 250 and len(set(keys)) == 250
        assert spool.pending() == (250, sum(map(len, parts)))
        got: List[bytes] = []
        while True:
            batch = spool.oldest(100, 500_000)
            if not batch:
                break
            got.extend(data for _, data in batch)
            spool.remove([key for key, _ in batch])
        assert got == parts
        assert spool.pending() == (0, 0)
        spool.close()

    def test_keys_match_parts(self, tmp_path: Path) -> None:
        """The keys append returns are the keys oldest reports for the same parts."""
        spool = make(tmp_path)
        keys = spool.append([event(1), event(2), event(3)])
        assert [key for key, _ in spool.oldest(10, 10_000)] == keys
        spool.close()

    def test_oldest_is_a_pure_read(self, tmp_path: Path) -> None:
        """Calling oldest twice without remove returns the same events."""
        spool = make(tmp_path)
        spool.append([event(n) for n in range(5)])
        assert spool.oldest(3, 10_000) == spool.oldest(3, 10_000)
        spool.close()

    def test_oldest_respects_limit_and_bytes(self, tmp_path: Path) -> None:
        """oldest stops at limit events or at max_bytes (length plus one per event)."""
        spool = make(tmp_path)
        parts = [event(n, 100) for n in range(10)]
        spool.append(parts)
        assert len(spool.oldest(4, 1_000_000)) == 4
        assert len(spool.oldest(100, 3 * 101)) == 3
        assert len(spool.oldest(100, 3 * 101 - 1)) == 2
        spool.close()

    def test_oldest_returns_one_event_over_the_byte_budget(self, tmp_path: Path) -> None:
        """An event larger than max_bytes still comes out alone, so delivery never stalls."""
        spool = make(tmp_path)
        spool.append([event(1, 500), event(2, 10)])
        batch = spool.oldest(10, 100)
        assert [number(data) for _, data in batch] == [1]
        spool.close()

    def test_remove_ignores_unknown_keys(self, tmp_path: Path) -> None:
        """remove deletes the known keys, returns them, and skips the rest."""
        spool = make(tmp_path)
        keys = spool.append([event(n) for n in range(4)])
        assert spool.remove([keys[0], keys[2], (999, 1), (keys[0][0], 10_000)]) == [
            keys[0],
            keys[2],
        ]
        assert spool.remove([keys[0]]) == []
        assert [number(data) for _, data in spool.oldest(10, 10_000)] == [1, 3]
        spool.close()

    def test_empty_append_stores_nothing(self, tmp_path: Path) -> None:
        """append([]) returns no keys and stores nothing."""
        spool = make(tmp_path)
        assert spool.append([]) == []
        assert spool.pending() == (0, 0)
        spool.close()

    def test_no_io_before_open(self, tmp_path: Path) -> None:
        """The constructor touches no file; the directory appears at the first use."""
        directory = tmp_path / "a" / "b"
        spool = make(directory)
        assert not directory.exists()
        assert spool.pending() == (0, 0)
        spool.open()
        assert directory.is_dir()
        spool.close()

    def test_close_deletes_an_empty_own_file(self, tmp_path: Path) -> None:
        """An empty spool leaves no file behind at close; close twice is harmless."""
        spool = make(tmp_path)
        keys = spool.append([event(1)])
        spool.remove(keys)
        spool.close()
        spool.close()
        assert list(tmp_path.iterdir()) == []

    def test_close_keeps_events_for_the_next_process(self, tmp_path: Path) -> None:
        """Events left at close stay on disk and a later spool on the directory returns them."""
        spool = make(tmp_path)
        spool.append([event(n) for n in range(3)])
        spool.close()
        assert len(spool_files(tmp_path)) == 1
        later = make(tmp_path)
        assert drain(later) == [0, 1, 2]
        later.close()
        assert list(tmp_path.iterdir()) == []

    def test_closed_spool_refuses_work(self, tmp_path: Path) -> None:
        """After close, append raises SpoolError rather than writing."""
        spool = make(tmp_path)
        spool.close()
        with pytest.raises(SpoolError, match="closed"):
            spool.append([event(1)])

    def test_sync_returns_with_everything_checkpointed(self, tmp_path: Path) -> None:
        """sync() checkpoints the WAL into the database file (the fsync'd path)."""
        spool = make(tmp_path)
        spool.append([event(n, 300) for n in range(50)])
        own = spool._own
        assert own is not None
        assert os.path.getsize(own.path + "-wal") > 0
        spool.sync()
        assert os.path.getsize(own.path) >= 50 * 300
        spool.close()

    @pytest.mark.parametrize("fsync", [False, True])
    def test_both_durability_modes_store_and_read(self, tmp_path: Path, fsync: bool) -> None:
        """With and without fsync the spool stores, syncs and reads the same."""
        spool = make(tmp_path, fsync=fsync)
        spool.append([event(n) for n in range(3)])
        spool.sync()
        assert drain(spool) == [0, 1, 2]
        spool.close()

    def test_threads_appending_at_once_lose_nothing(self, tmp_path: Path) -> None:
        """Concurrent appends from several threads all get distinct keys and are all stored."""
        spool = make(tmp_path)
        keys: List[Any] = []
        lock = threading.Lock()

        def work(base: int) -> None:
            for i in range(20):
                got = spool.append([event(base + i * 5 + j) for j in range(5)])
                with lock:
                    keys.extend(got)

        threads = [threading.Thread(target=work, args=(t * 1000,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(set(keys)) == 400
        assert sorted(drain(spool)) == sorted(
            t * 1000 + i * 5 + j for t in range(4) for i in range(20) for j in range(5)
        )
        spool.close()

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"max_bytes": 0}, ValueError),
            ({"max_bytes": "1"}, TypeError),
            ({"max_bytes": True}, TypeError),
            ({"max_age": 0}, ValueError),
            ({"max_age": "1"}, TypeError),
            ({"rescan_interval": -1}, ValueError),
        ],
    )
    def test_invalid_options_raise_at_construction(
        self, tmp_path: Path, options: Dict[str, Any], error: type
    ) -> None:
        """Bad bounds raise ValueError or TypeError naming the option, before any I/O."""
        with pytest.raises(error):
            Spool(tmp_path, **options)

    def test_invalid_directory_type_is_refused(self) -> None:
        """A directory that is not a path raises TypeError."""
        with pytest.raises(TypeError, match="spool_path"):
            Spool(42)  # type: ignore[arg-type]


class TestSpoolOrphans:
    def test_sigkilled_process_events_are_claimed_once_oldest_first(self, tmp_path: Path) -> None:
        """A process killed by SIGKILL after appending leaves events a new spool returns once."""
        result = run_python(
            f"""
            import json, os, signal
            from segmentio_logging._spool import Spool
            spool = Spool({str(tmp_path)!r})
            for b in range(3):
                spool.append([json.dumps({{"messageId": f"m-{{b * 10 + i}}"}}).encode()
                              for i in range(10)])
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert len(spool_files(tmp_path)) == 1
        first = make(tmp_path)
        first.open()
        second = make(tmp_path)  # a live process next to it gets nothing of it
        second.open()
        assert second.oldest(100, 500_000) == []
        assert drain(first) == list(range(30))
        first.close()
        second.close()
        third = make(tmp_path)
        assert third.oldest(100, 500_000) == []
        third.close()
        assert list(tmp_path.iterdir()) == []

    def test_live_process_file_is_never_claimed(self, tmp_path: Path) -> None:
        """Another live process's file stays its own; it is claimed once that process exits."""
        with popen_python(
            f"""
            import json, sys
            from segmentio_logging._spool import Spool
            spool = Spool({str(tmp_path)!r})
            spool.append([json.dumps({{"messageId": "m-7"}}).encode()])
            print("ready", flush=True)
            sys.stdin.readline()
            spool.close()
            """
        ) as child:
            try:
                assert child.stdout is not None and child.stdin is not None
                assert child.stdout.readline().strip() == "ready"
                spool = make(tmp_path)
                assert spool.claim_orphans() == 0
                assert spool.oldest(10, 10_000) == []
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.wait(30) == 0
            finally:
                if child.poll() is None:
                    child.kill()
        assert spool.claim_orphans() == 1
        assert drain(spool) == [7]
        spool.close()

    def test_concurrent_claimers_never_share_a_file(self, tmp_path: Path) -> None:
        """Processes claiming the same orphans at once each get disjoint files and events."""
        for n in range(8):
            leave_orphan(tmp_path, range(n * 10, n * 10 + 10))
        code = f"""
            import json, sys
            from segmentio_logging._spool import Spool
            sys.stdin.readline()
            spool = Spool({str(tmp_path)!r}, max_bytes=10_000_000)
            spool.open()
            files, seen = set(), []
            while True:
                files.update(f.path for f in spool._held.orphans)
                batch = spool.oldest(7, 500_000)
                files.update(f.path for f in spool._held.orphans)
                if not batch:
                    break
                seen.extend(json.loads(d)["messageId"] for _, d in batch)
                spool.remove([k for k, _ in batch])
            spool.close()
            print(json.dumps({{"files": sorted(files), "seen": seen}}))
            """
        children = [popen_python(code) for _ in range(3)]
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=30)
            assert child.returncode == 0, err
            results.append(json.loads(out))
        files = [path for result in results for path in result["files"]]
        seen = [m for result in results for m in result["seen"]]
        assert len(files) == len(set(files))
        assert sorted(seen) == sorted(f"m-{n}" for n in range(80))
        assert list(tmp_path.iterdir()) == []

    def test_orphans_drain_before_own_events_oldest_file_first(self, tmp_path: Path) -> None:
        """Claimed orphans come out before this process's events, the oldest orphan first."""
        leave_orphan(tmp_path, range(0, 3))
        leave_orphan(tmp_path, range(3, 6))
        spool = make(tmp_path)
        spool.append([event(n) for n in range(6, 9)])
        assert drain(spool) == list(range(9))
        spool.close()

    def test_claims_share_a_backlog_within_max_bytes(self, tmp_path: Path) -> None:
        """A process claims orphans only while they fit max_bytes; the rest go to another."""
        leave_orphan(tmp_path, range(0, 10), size=100)
        leave_orphan(tmp_path, range(10, 20), size=100)
        first = make(tmp_path, max_bytes=1500)
        first.open()
        second = make(tmp_path, max_bytes=1500)
        second.open()
        assert first.pending()[0] == 10 and second.pending()[0] == 10
        assert sorted(drain(first) + drain(second)) == list(range(20))
        first.close()
        second.close()

    def test_next_orphan_is_claimed_once_one_is_drained(self, tmp_path: Path) -> None:
        """After draining a claimed orphan, the next read claims the one left for later."""
        leave_orphan(tmp_path, range(0, 10), size=100)
        leave_orphan(tmp_path, range(10, 20), size=100)
        spool = make(tmp_path, max_bytes=1500, rescan_interval=3600)
        spool.open()
        assert spool.pending()[0] == 10
        assert drain(spool) == list(range(20))
        spool.close()

    def test_orphan_appearing_later_is_claimed_by_rescan(self, tmp_path: Path) -> None:
        """An orphan left after open is picked up by the next read once rescan_interval passed."""
        spool = make(tmp_path, rescan_interval=0)
        spool.open()
        leave_orphan(tmp_path, range(3))
        assert drain(spool) == [0, 1, 2]
        spool.close()

    def test_leftovers_of_a_dying_process_are_cleaned(self, tmp_path: Path) -> None:
        """A lock without its database and an empty database (killed at creation) are deleted."""
        (tmp_path / "spool-1-aaaa.lock").write_bytes(b"")
        (tmp_path / "spool-2-bbbb.sqlite3").write_bytes(b"")
        (tmp_path / "other-file").write_bytes(b"x")
        recorder = Recorder()
        spool = make(tmp_path, recorder)
        spool.open()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert "spool-1-aaaa.lock" not in names
        assert "spool-2-bbbb.sqlite3" not in names
        assert "other-file" in names
        assert recorder.errors == []
        spool.close()

    def test_file_of_an_unknown_format_is_left_alone(self, tmp_path: Path) -> None:
        """A spool file with another format version is reported once, never read or moved."""
        path = tmp_path / "spool-3-cccc.sqlite3"
        conn = sqlite3.connect(str(path))
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created REAL, data BLOB)")
        conn.execute("INSERT INTO events VALUES (1, 0, x'00')")
        conn.execute("PRAGMA user_version=99")
        conn.commit()
        conn.close()
        recorder = Recorder()
        spool = make(tmp_path, recorder, rescan_interval=0)
        assert spool.oldest(10, 10_000) == []
        assert spool.oldest(10, 10_000) == []
        assert len(recorder.errors) == 1
        assert "format version 99" in recorder.errors[0].reason
        assert path.exists()
        spool.close()


class TestSpoolBounds:
    def test_max_bytes_drops_the_oldest_and_reports(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest events are deleted, counted in on_drop, newest kept."""
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_bytes=1000)
        for b in range(5):
            spool.append([event(b * 3 + i, 100) for i in range(3)])
        count, size = spool.pending()
        assert size <= 1000
        assert count == 10
        assert recorder.dropped == 15 - count
        assert all("spool_max_bytes=1,000" in reason for _, reason in recorder.drops)
        assert drain(spool) == list(range(5, 15))
        spool.close()

    def test_batch_larger_than_max_bytes_keeps_its_newest(self, tmp_path: Path) -> None:
        """A single append over max_bytes keeps only its newest events that fit."""
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_bytes=350)
        keys = spool.append([event(n, 100) for n in range(10)])
        assert len(keys) == 10
        assert spool.pending() == (3, 300)
        assert recorder.dropped == 7
        assert drain(spool) == [7, 8, 9]
        spool.close()

    def test_remove_leaves_out_what_a_bound_deleted_after_the_read(self, tmp_path: Path) -> None:
        """Events read, then deleted by max_bytes before their remove, are not in its result."""
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_bytes=500)
        spool.append([event(n, 100) for n in range(4)])
        batch = spool.oldest(10, 10_000)  # in flight from here on
        assert [number(data) for _, data in batch] == [0, 1, 2, 3]
        spool.append([event(n, 100) for n in range(4, 7)])  # pushes out 0 and 1
        assert recorder.dropped == 2
        removed = spool.remove([key for key, _ in batch])
        assert [number(data) for key, data in batch if key in removed] == [2, 3]
        assert len(removed) + recorder.dropped == len(batch)
        assert drain(spool) == [4, 5, 6]
        spool.close()

    def test_claimed_orphans_count_toward_max_bytes_and_go_first(self, tmp_path: Path) -> None:
        """New events push out a claimed orphan's events before this process's own."""
        leave_orphan(tmp_path, range(0, 5), size=100)
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_bytes=800)
        spool.append([event(n, 100) for n in range(5, 10)])
        assert recorder.dropped == 2
        assert drain(spool) == list(range(2, 10))
        spool.close()

    def test_max_age_drops_old_events_on_append_and_read(self, tmp_path: Path) -> None:
        """Events older than max_age are deleted and reported, on append and on read alike."""
        now = [1000.0]
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_age=60, clock=lambda: now[0])
        spool.append([event(n) for n in range(3)])
        now[0] += 30
        spool.append([event(n) for n in range(3, 5)])
        now[0] += 31
        spool.append([event(5)])
        assert recorder.dropped == 3
        assert "spool_max_age=60s" in recorder.drops[0][1]
        now[0] += 30
        assert [number(data) for _, data in spool.oldest(10, 10_000)] == [5]
        assert recorder.dropped == 5
        spool.close()

    def test_max_age_applies_to_claimed_orphans(self, tmp_path: Path) -> None:
        """An orphan's events past max_age are dropped, not sent, and the file is deleted."""
        leave_orphan(tmp_path, range(3))
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_age=60, clock=lambda: 1e12)
        assert spool.oldest(10, 10_000) == []
        assert recorder.dropped == 3
        assert spool_files(tmp_path) == [os.path.basename(spool._own.path)]  # type: ignore[union-attr]
        spool.close()

    def test_disk_use_stays_bounded_under_a_long_outage(self, tmp_path: Path) -> None:
        """Appending 20 times max_bytes keeps the files near max_bytes plus the WAL limit."""
        recorder = Recorder()
        spool = make(tmp_path, recorder, max_bytes=200_000)
        parts = [event(0, 300)] * 100
        for _ in range(140):
            spool.append(parts)
        assert spool.pending()[1] <= 200_000
        assert recorder.dropped == 14_000 - spool.pending()[0]
        on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert on_disk <= 200_000 * 1.5 + (1 << 20) + 64 * 1024
        spool.close()

    def test_raising_callbacks_do_not_break_the_spool(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An on_drop that raises is reported to stderr and the append still succeeds."""

        def boom(count: int, reason: str) -> None:
            raise RuntimeError("callback bug")

        spool = make(tmp_path, max_bytes=150, on_drop=boom)
        spool.append([event(n, 100) for n in range(3)])
        assert spool.pending()[0] == 1
        assert "on_drop raised" in capsys.readouterr().err
        spool.close()


class TestSpoolCorruption:
    @pytest.mark.parametrize(
        "content",
        [
            b"this is not a database at all" * 200,
            b"SQLite format 3\x00" + b"\xff" * 8000,
        ],
        ids=["garbage", "valid-header-garbage-pages"],
    )
    def test_corrupt_orphan_is_moved_aside_and_reported(
        self, tmp_path: Path, content: bytes
    ) -> None:
        """A corrupt spool file is renamed *.corrupt-<time>, reported, and the spool works on."""
        name = leave_orphan(tmp_path, range(3))
        (tmp_path / name).write_bytes(content)
        recorder = Recorder()
        spool = make(tmp_path, recorder)
        spool.append([event(10)])
        assert len(recorder.errors) == 1
        error = recorder.errors[0]
        assert isinstance(error, SegmentError)
        assert "corrupt" in error.reason and name in error.reason
        assert error.path == str(tmp_path / name)
        assert not (tmp_path / name).exists()
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0].startswith(name + ".corrupt-")
        assert (tmp_path / aside[0]).read_bytes() == content
        assert drain(spool) == [10]
        spool.close()
        again = make(tmp_path, recorder)
        again.open()
        assert len(recorder.errors) == 1  # set aside once, never looked at again
        again.close()

    def test_orphan_with_a_broken_page_fails_quick_check(self, tmp_path: Path) -> None:
        """A file whose pages were overwritten in the middle is detected and moved aside."""
        spool = Spool(tmp_path)
        spool.append([event(n, 300) for n in range(200)])
        spool.sync()
        own = spool._own
        assert own is not None
        path = Path(own.path)
        spool.close()
        data = bytearray(path.read_bytes())
        data[4096 * 3 : 4096 * 6] = b"\x5a" * (4096 * 3)
        path.write_bytes(bytes(data))
        recorder = Recorder()
        spool = make(tmp_path, recorder)
        spool.open()
        assert [e for e in recorder.errors if "corrupt" in e.reason]
        assert not path.exists()
        assert spool.pending() == (0, 0)
        spool.close()

    @pytest.mark.parametrize("operation", ["oldest", "append"])
    def test_own_file_corrupted_while_open_is_replaced(
        self, tmp_path: Path, operation: str
    ) -> None:
        """A corrupt own file is moved aside, its event count reported; a new file takes over."""
        recorder = Recorder()
        spool = make(tmp_path, recorder)
        spool.append([event(n, 300) for n in range(200)])
        spool.sync()
        own = spool._own
        assert own is not None
        old_path = own.path
        with open(old_path, "r+b") as stream:
            stream.seek(4096)
            stream.write(b"\x5a" * (os.path.getsize(old_path) - 4096))
        own.conn.execute("PRAGMA shrink_memory")  # drop the page cache: read the disk again
        if operation == "oldest":
            assert spool.oldest(10, 100_000) == []
        spool.append([event(500)])
        assert [(e.count, "corrupt" in e.reason) for e in recorder.errors] == [(200, True)]
        assert spool._own is not None and spool._own.path != old_path
        assert not os.path.exists(old_path)
        assert drain(spool) == [500]
        spool.close()

    def test_unusable_directory_raises_spool_error(self, tmp_path: Path) -> None:
        """A spool_path that is a file makes open raise SpoolError, a SegmentError."""
        target = tmp_path / "file"
        target.write_text("x")
        spool = make(target)
        with pytest.raises(SpoolError, match="cannot be used as a directory") as info:
            spool.open()
        assert isinstance(info.value, SegmentError)
        with pytest.raises(SpoolError):
            spool.append([event(1)])
        assert spool.pending() == (0, 0)


class TestSpoolFork:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.parametrize("explicit", [True, False], ids=["reset_after_fork", "automatic"])
    def test_forked_child_uses_a_new_file(self, tmp_path: Path, explicit: bool) -> None:
        """A forked child writes to its own new file; the parent's file and events are untouched."""
        spool = make(tmp_path)
        spool.append([event(n) for n in range(3)])
        parent_own = spool._own
        assert parent_own is not None
        parent_path = parent_own.path
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(read_end)
                if explicit:
                    spool.reset_after_fork()
                before = spool.pending()
                spool.append([event(100)])
                own = spool._own
                report = {
                    "path": own.path if own else None,
                    "before": list(before),
                    "after": list(spool.pending()),
                }
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            report = json.loads(stream.read() or b"{}")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert report["path"] != parent_path
        assert os.path.basename(report["path"]).startswith(f"spool-{pid}-")
        assert report["before"] == [0, 0]
        assert report["after"] == [1, len(event(100))]
        # The parent carries on with its own file, then claims the dead child's.
        spool.append([event(3)])
        assert spool._own is not None and spool._own.path == parent_path
        assert spool.claim_orphans() == 1
        assert drain(spool) == [100, 0, 1, 2, 3]
        spool.close()
        assert list(tmp_path.iterdir()) == []

    def test_reset_after_fork_in_the_owning_process_is_a_no_op(self, tmp_path: Path) -> None:
        """Called where the spool was opened, reset_after_fork keeps the file and its events."""
        spool = make(tmp_path)
        spool.append([event(1)])
        own = spool._own
        spool.reset_after_fork()
        assert spool._own is own
        spool.append([event(2)])
        assert drain(spool) == [1, 2]
        spool.close()
