"""The spool's files are 0600 whatever the umask, and a folder open to others is reported."""

from __future__ import annotations

import json
import os
import signal
import stat
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from segmentio_logging._spool import Spool

from .helpers import event, posix_only, run_python, spool_files

pytestmark = posix_only

# The umask is the process's: each case runs in its own interpreter.
_MODES = """
import json, os, sys

def modes(directory):
    return {
        name: os.stat(os.path.join(directory, name)).st_mode & 0o777
        for name in sorted(os.listdir(directory))
    }
"""


def _run(code: str) -> Dict[str, int]:
    """Run ``code`` after the ``modes`` helper; the JSON object it printed last."""
    result = run_python(_MODES + textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    found: Dict[str, int] = json.loads(result.stdout.splitlines()[-1])
    return found


def _octal(modes: Dict[str, int]) -> Dict[str, str]:
    return {name: oct(mode) for name, mode in modes.items()}


class TestSpoolFileModes:
    @pytest.mark.parametrize("umask", [0o022, 0o000, 0o277], ids=["022", "000", "277"])
    def test_own_files_are_0600_whatever_the_umask(self, tmp_path: Path, umask: int) -> None:
        """Database, WAL and lock of a process's own file are 0600 under any umask."""
        found = _run(
            f"""
            os.umask({umask:#o})
            from segmentio_logging._spool import Spool
            spool = Spool({str(tmp_path)!r})
            spool.append([json.dumps({{"messageId": f"m-{{n}}"}}).encode() for n in range(500)])
            print(json.dumps(modes({str(tmp_path)!r})))
            spool.close()
            """
        )
        suffixes = sorted(name.split(".", 1)[1] for name in found)
        assert suffixes == ["lock", "sqlite3", "sqlite3-wal"]
        assert _octal(found) == {name: "0o600" for name in found}

    def test_folder_the_spool_creates_is_0700_under_umask_000(self, tmp_path: Path) -> None:
        """A spool_path that does not exist is created 0700, its files 0600, with umask 000."""
        folder = tmp_path / "new" / "spool"
        found = _run(
            f"""
            os.umask(0)
            from segmentio_logging._spool import Spool
            spool = Spool({str(folder)!r})
            spool.append([b'{{"messageId": "m-1"}}'])
            seen = modes({str(folder)!r})
            seen["."] = os.stat({str(folder)!r}).st_mode & 0o777
            print(json.dumps(seen))
            spool.close()
            """
        )
        assert found.pop(".") == 0o700
        assert len(found) == 3
        assert _octal(found) == {name: "0o600" for name in found}

    def test_orphan_left_world_readable_is_made_0600_when_claimed(self, tmp_path: Path) -> None:
        """Files of a dead process left 0644 (an earlier version) are 0600 once claimed."""
        for _ in range(2):
            killed = run_python(
                f"""
                import json, os, signal
                from segmentio_logging._spool import Spool
                spool = Spool({str(tmp_path)!r})
                spool.append([json.dumps({{"messageId": f"m-{{n}}"}}).encode() for n in range(50)])
                os.kill(os.getpid(), signal.SIGKILL)
                """
            )
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        databases = spool_files(tmp_path)
        assert len(databases) == 2
        # As a process of an earlier version would have left them under umask 022;
        # the second orphan's lock file is gone too, so the claimer creates it.
        for path in tmp_path.iterdir():
            path.chmod(0o644)
        (tmp_path / databases[1]).with_suffix(".lock").unlink()
        assert (tmp_path / (databases[0] + "-wal")).exists()
        found = _run(
            f"""
            os.umask(0)
            from segmentio_logging._spool import Spool
            spool = Spool({str(tmp_path)!r})
            spool.open()
            assert len(spool._held.orphans) == 2, spool
            assert len(spool.oldest(200, 500_000)) == 100
            spool.append([b'{{"messageId": "m-own"}}'])
            print(json.dumps(modes({str(tmp_path)!r})))
            spool.close()
            """
        )
        names = set(found)
        for database in databases:
            base = database[: -len(".sqlite3")]
            assert {database, database + "-wal", base + ".lock"} <= names
        assert len(found) == 9  # two orphans and the own file, three files each
        assert _octal(found) == {name: "0o600" for name in found}

    def test_tool_opening_a_spool_file_creates_its_shm_0600(self, tmp_path: Path) -> None:
        """SQLite gives the -wal and -shm it creates the database file's mode, 0600."""
        spool = Spool(tmp_path)
        spool.append([event(n) for n in range(10)])
        own = spool._own
        assert own is not None
        path = own.path
        spool.close()  # events left: the file stays, as after an outage
        found = _run(
            f"""
            import sqlite3
            os.umask(0)
            conn = sqlite3.connect({path!r})  # shared locking: the WAL index is a -shm file
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 10
            conn.execute("INSERT INTO events (created, data) VALUES (0, x'7b7d')")
            conn.commit()
            print(json.dumps(modes({str(tmp_path)!r})))
            conn.close()
            """
        )
        name = os.path.basename(path)
        assert {name, name + "-wal", name + "-shm"} <= set(found)
        assert _octal(found) == {name: "0o600" for name in found}


class TestSpoolFolderWarning:
    def test_folder_readable_by_others_is_reported_once(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A 0755 spool_path gets one warning on stderr, however many spools use it."""
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o755)
        first = Spool(folder)
        first.append([event(1)])
        second = Spool(folder)
        second.open()
        first.close()
        second.close()
        Spool(folder).close()
        third = Spool(folder)
        third.open()
        third.close()
        err = capsys.readouterr().err
        assert err.count("segmentio_logging: spool:") == 1, err
        assert f"spool_path {str(folder)!r} is open to other users (mode 0755)" in err
        assert "list its files" in err and "delete" not in err
        assert "chmod 700" in err

    def test_folder_writable_by_group_says_files_can_be_replaced(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A group-writable spool_path is reported with what others can do to its files."""
        folder = tmp_path / "group"
        folder.mkdir()
        folder.chmod(0o730)
        spool = Spool(folder)
        spool.append([event(1)])
        spool.close()
        err = capsys.readouterr().err
        assert "(mode 0730)" in err
        assert "delete or replace the files" in err and "list its files" not in err

    def test_private_folder_is_not_reported(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Neither a 0700 spool_path nor one the spool creates gets a warning."""
        folder = tmp_path / "private"
        folder.mkdir()
        folder.chmod(0o700)
        for path in (folder, tmp_path / "created"):
            spool = Spool(path)
            spool.append([event(1)])
            spool.close()
        assert stat.S_IMODE(os.stat(tmp_path / "created").st_mode) & 0o077 == 0
        assert capsys.readouterr().err == ""
