"""The Spool facade: storing, reading and removing events, settings, callbacks, fork."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from segmentio_logging._errors import SegmentError, SpoolError
from segmentio_logging._spool import Spool

from .helpers import drain, event, make, number, posix_only, spool_files

pytestmark = posix_only


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


class TestSpoolSettings:
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


class TestSpoolCallbacks:
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


class TestSpoolUnusable:
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
