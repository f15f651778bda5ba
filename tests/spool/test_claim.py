"""Claiming orphans: real subprocesses, leftovers of dying processes, corrupt files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from segmentio_logging._errors import SegmentError

from .helpers import (
    SpoolReports,
    drain,
    event,
    leave_orphan,
    make,
    popen_python,
    posix_only,
    run_python,
    spool_files,
)

pytestmark = posix_only


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
        reported = SpoolReports()
        spool = make(tmp_path, reported)
        spool.open()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert "spool-1-aaaa.lock" not in names
        assert "spool-2-bbbb.sqlite3" not in names
        assert "other-file" in names
        assert reported.errors == []
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
        reported = SpoolReports()
        spool = make(tmp_path, reported, rescan_interval=0)
        assert spool.oldest(10, 10_000) == []
        assert spool.oldest(10, 10_000) == []
        assert len(reported.errors) == 1
        assert "format version 99" in reported.errors[0].reason
        assert path.exists()
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
        reported = SpoolReports()
        spool = make(tmp_path, reported)
        spool.append([event(10)])
        assert len(reported.errors) == 1
        error = reported.errors[0]
        assert isinstance(error, SegmentError)
        assert "corrupt" in error.reason and name in error.reason
        assert error.path == str(tmp_path / name)
        assert not (tmp_path / name).exists()
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0].startswith(name + ".corrupt-")
        assert (tmp_path / aside[0]).read_bytes() == content
        assert drain(spool) == [10]
        spool.close()
        again = make(tmp_path, reported)
        again.open()
        assert len(reported.errors) == 1  # set aside once, never looked at again
        again.close()

    @pytest.mark.parametrize("operation", ["oldest", "append"])
    def test_own_file_corrupted_while_open_is_replaced(
        self, tmp_path: Path, operation: str
    ) -> None:
        """A corrupt own file is moved aside, its event count reported; a new file takes over."""
        reported = SpoolReports()
        spool = make(tmp_path, reported)
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
        assert [(e.count, "corrupt" in e.reason) for e in reported.errors] == [(200, True)]
        assert spool._own is not None and spool._own.path != old_path
        assert not os.path.exists(old_path)
        assert drain(spool) == [500]
        spool.close()
