"""The bounds: spool_max_bytes and spool_max_age drop the oldest events and report them."""

from __future__ import annotations

import os
from pathlib import Path

from .helpers import SpoolReports, drain, event, leave_orphan, make, number, posix_only, spool_files

pytestmark = posix_only


class TestSpoolBounds:
    def test_max_bytes_drops_the_oldest_and_reports(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest events are deleted, counted in on_drop, newest kept."""
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_bytes=1000)
        for b in range(5):
            spool.append([event(b * 3 + i, 100) for i in range(3)])
        count, size = spool.pending()
        assert size <= 1000
        assert count == 10
        assert reported.dropped == 15 - count
        assert all("spool_max_bytes=1,000" in reason for _, reason in reported.drops)
        assert drain(spool) == list(range(5, 15))
        spool.close()

    def test_batch_larger_than_max_bytes_keeps_its_newest(self, tmp_path: Path) -> None:
        """A single append over max_bytes keeps only its newest events that fit."""
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_bytes=350)
        keys = spool.append([event(n, 100) for n in range(10)])
        assert len(keys) == 10
        assert spool.pending() == (3, 300)
        assert reported.dropped == 7
        assert drain(spool) == [7, 8, 9]
        spool.close()

    def test_remove_leaves_out_what_a_bound_deleted_after_the_read(self, tmp_path: Path) -> None:
        """Events read, then deleted by max_bytes before their remove, are not in its result."""
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_bytes=500)
        spool.append([event(n, 100) for n in range(4)])
        batch = spool.oldest(10, 10_000)  # in flight from here on
        assert [number(data) for _, data in batch] == [0, 1, 2, 3]
        spool.append([event(n, 100) for n in range(4, 7)])  # pushes out 0 and 1
        assert reported.dropped == 2
        removed = spool.remove([key for key, _ in batch])
        assert [number(data) for key, data in batch if key in removed] == [2, 3]
        assert len(removed) + reported.dropped == len(batch)
        assert drain(spool) == [4, 5, 6]
        spool.close()

    def test_claimed_orphans_count_toward_max_bytes_and_go_first(self, tmp_path: Path) -> None:
        """New events push out a claimed orphan's events before this process's own."""
        leave_orphan(tmp_path, range(0, 5), size=100)
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_bytes=800)
        spool.append([event(n, 100) for n in range(5, 10)])
        assert reported.dropped == 2
        assert drain(spool) == list(range(2, 10))
        spool.close()

    def test_max_age_drops_old_events_on_append_and_read(self, tmp_path: Path) -> None:
        """Events older than max_age are deleted and reported, on append and on read alike."""
        now = [1000.0]
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_age=60, clock=lambda: now[0])
        spool.append([event(n) for n in range(3)])
        now[0] += 30
        spool.append([event(n) for n in range(3, 5)])
        now[0] += 31
        spool.append([event(5)])
        assert reported.dropped == 3
        assert "spool_max_age=60s" in reported.drops[0][1]
        now[0] += 30
        assert [number(data) for _, data in spool.oldest(10, 10_000)] == [5]
        assert reported.dropped == 5
        spool.close()

    def test_max_age_applies_to_claimed_orphans(self, tmp_path: Path) -> None:
        """An orphan's events past max_age are dropped, not sent, and the file is deleted."""
        leave_orphan(tmp_path, range(3))
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_age=60, clock=lambda: 1e12)
        assert spool.oldest(10, 10_000) == []
        assert reported.dropped == 3
        assert spool_files(tmp_path) == [os.path.basename(spool._own.path)]  # type: ignore[union-attr]
        spool.close()

    def test_disk_use_stays_bounded_under_a_long_outage(self, tmp_path: Path) -> None:
        """Appending 20 times max_bytes keeps the files near max_bytes plus the WAL limit."""
        reported = SpoolReports()
        spool = make(tmp_path, reported, max_bytes=200_000)
        parts = [event(0, 300)] * 100
        for _ in range(140):
            spool.append(parts)
        assert spool.pending()[1] <= 200_000
        assert reported.dropped == 14_000 - spool.pending()[0]
        on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert on_disk <= 200_000 * 1.5 + (1 << 20) + 64 * 1024
        spool.close()
