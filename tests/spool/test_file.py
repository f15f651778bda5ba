"""One spool file: durability (WAL checkpoints, fsync) and the integrity check at open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segmentio_logging._spool import Spool

from .helpers import SpoolReports, drain, event, make, posix_only

pytestmark = posix_only


class TestSpoolFileDurability:
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


class TestSpoolFileIntegrity:
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
        reported = SpoolReports()
        spool = make(tmp_path, reported)
        spool.open()
        assert [e for e in reported.errors if "corrupt" in e.reason]
        assert not path.exists()
        assert spool.pending() == (0, 0)
        spool.close()
