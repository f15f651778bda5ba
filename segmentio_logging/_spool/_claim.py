"""The spool files one process holds: its own, and the orphans it claimed.

A process holds a file through an exclusive ``flock`` on its sidecar ``.lock``
file; a file whose lock can be taken was left by a process that is gone (an
orphan). This module takes and releases those locks, cleans up what a dying
process left half made, and moves corrupt files aside. The design is in
docs/spool.md.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sqlite3
import sys
import time
from typing import Dict, Iterable, List, Optional, Protocol, Set, Tuple

from .._errors import SpoolError
from ._file import (
    FORMAT_VERSION,
    HEADER,
    Contents,
    SpoolFile,
    UnknownFormat,
    close_quietly,
    create_database,
    create_private,
    is_corrupt,
    make_files_private,
    make_private,
    open_existing,
)

if sys.platform != "win32":
    import fcntl

PREFIX = "spool-"
DB = ".sqlite3"
LOCK = ".lock"
MAX_CLAIMED = 16  # orphans held open at once; more are claimed as these drain


class Settings(Protocol):
    """What the held files are created and claimed with; read at each use."""

    directory: str
    max_bytes: int
    fsync: bool


class HeldFiles:
    """The files this process holds the locks of: its own, and orphans oldest first.

    Errors found on the way (a corrupt file moved aside, a file skipped) are
    collected in :meth:`take_errors` for the caller to report; nothing here
    runs a callback.
    """

    def __init__(self, settings: Settings, *, skip: Iterable[str] = ()) -> None:
        self._settings = settings
        self.own: Optional[SpoolFile] = None
        self.orphans: List[SpoolFile] = []  # oldest first
        self.skip: Set[str] = set(skip)  # paths never to claim in this process
        self._by_ident: Dict[int, SpoolFile] = {}
        self._idents = itertools.count(1)
        self._errors: List[SpoolError] = []

    def files(self) -> List[SpoolFile]:
        """Every file held, in the order events leave: orphans, then this process's own."""
        files = list(self.orphans)
        if self.own is not None:
            files.append(self.own)
        return files

    def get(self, ident: int) -> Optional[SpoolFile]:
        """The file held under the number ``ident``, if it is still held."""
        return self._by_ident.get(ident)

    def take_errors(self) -> List[SpoolError]:
        """The errors collected since the last call."""
        errors, self._errors = self._errors, []
        return errors

    # ------------------------------------------------------------------ own file

    def open_own(self) -> SpoolFile:
        """Create this process's own file and hold it."""
        self.own = self._create_own()
        return self.own

    def _create_own(self) -> SpoolFile:
        directory = self._settings.directory
        for _attempt in range(8):
            base = os.path.join(directory, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            try:
                os.close(create_private(base + LOCK))
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpoolError(
                    f"spool_path {directory!r} is not writable: {exc.strerror or exc}",
                    path=directory,
                ) from exc
            own = self._hold_new(base)
            if own is not None:
                self._by_ident[own.ident] = own
                return own
        raise SpoolError(
            f"cannot create a spool file in {directory!r}: names kept colliding",
            path=directory,
        )

    def _hold_new(self, base: str) -> Optional[SpoolFile]:
        """Lock ``base``'s new lock file and create its database; None to try another name."""
        lock_path, path = base + LOCK, base + DB
        locked = lock(lock_path, create=False)
        if locked is None:  # a cleaner took it for a stale lock in between: new name
            return None
        try:
            conn = create_database(
                path, fsync=self._settings.fsync, max_bytes=self._settings.max_bytes
            )
        except FileExistsError:  # a database without its lock: not ours to delete
            _unlink(lock_path)
            os.close(locked)
            return None
        except (OSError, sqlite3.Error) as exc:
            for leftover in (path, path + "-wal", path + "-shm", lock_path):
                _unlink(leftover)
            os.close(locked)
            raise SpoolError(
                f"cannot create a spool file in {self._settings.directory!r}: {exc}", path=path
            ) from exc
        return SpoolFile(next(self._idents), path, lock_path, locked, conn, own=True)

    def replace_own(self, exc: sqlite3.Error) -> SpoolFile:
        """Own file found corrupt: move it aside, report, and carry on with a new one."""
        own = self.own
        assert own is not None
        self._by_ident.pop(own.ident, None)
        self.own = None
        close_quietly(own.conn)
        self._move_aside(own.path, own.lock_path, own.lock_fd, str(exc), count=own.count)
        return self.open_own()

    # ------------------------------------------------------------------ orphans

    def claim(self) -> int:
        """Claim unlocked files of dead processes, oldest file first, within ``max_bytes``.

        An orphan is claimed when what this process holds plus the orphan's size
        fits ``max_bytes``, or when it holds no orphan yet (so that a full process
        still makes progress: the bound then drops the oldest events). The rest is
        left for other processes, or for the next scan once these are drained.
        """
        names = self._list_directory()
        if names is None:
            return 0
        claimed = self._claim_within_bounds(self._candidates(names))
        if claimed:
            self.orphans.sort(key=lambda f: (f.since, f.path))
        return claimed

    def _list_directory(self) -> Optional[List[str]]:
        """The names in ``spool_path``; None (and the error collected) when it cannot be listed."""
        directory = self._settings.directory
        try:
            return os.listdir(directory)
        except OSError as exc:
            self._errors.append(
                SpoolError(f"cannot list spool_path {directory!r}: {exc}", path=directory)
            )
            return None

    def _candidates(self, names: List[str]) -> List[Tuple[float, str, int]]:
        """``(mtime, path, approximate size)`` of the databases not held, oldest first.

        Stale lock files met on the way are cleaned up.
        """
        directory = self._settings.directory
        held = {f.path for f in self.files()} | self.skip
        candidates: List[Tuple[float, str, int]] = []
        for name in names:
            if not name.startswith(PREFIX):
                continue
            path = os.path.join(directory, name)
            if name.endswith(LOCK):
                self._clean_stale_lock(path)
            elif name.endswith(DB) and path not in held:
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                candidates.append((stat.st_mtime, path, stat.st_size + _size(path + "-wal")))
        candidates.sort()
        return candidates

    def _claim_within_bounds(self, candidates: List[Tuple[float, str, int]]) -> int:
        """Claim ``candidates`` in order while they fit ``max_bytes``; how many were claimed."""
        holding = sum(f.size for f in self.files())
        claimed = 0
        for _mtime, path, approx in candidates:
            if len(self.orphans) >= MAX_CLAIMED:
                break
            if self.orphans and holding + approx > self._settings.max_bytes:
                continue
            file = self._claim_one(path)
            if file is None:
                continue
            self.orphans.append(file)
            self._by_ident[file.ident] = file
            holding += file.size
            claimed += 1
        return claimed

    def _clean_stale_lock(self, lock_path: str) -> None:
        """A lock file without its database: left by a process that died while closing."""
        path = lock_path[: -len(LOCK)] + DB
        if os.path.exists(path):
            return
        fd = lock(lock_path, create=False)
        if fd is None:
            return
        if not os.path.exists(path):
            _unlink(lock_path)
        os.close(fd)

    def _claim_one(self, path: str) -> Optional[SpoolFile]:
        """Lock, check and open the orphan at ``path``; None when it is not to be held.

        A file that is not held is released, deleted, moved aside or skipped
        here, with its error collected.
        """
        lock_path = path[: -len(DB)] + LOCK
        fd = lock(lock_path, create=True)
        if fd is None:
            return None  # its process is alive, or another one claimed it
        if not self._has_sqlite_header(path, lock_path, fd):
            return None
        make_files_private(path)  # before SQLite creates a WAL with the file's mode
        contents = self._open_orphan(path, lock_path, fd)
        if contents is None:
            return None
        return self._hold_orphan(path, lock_path, fd, contents)

    def _has_sqlite_header(self, path: str, lock_path: str, fd: int) -> bool:
        """Whether ``path`` starts as an SQLite file; if not, it is dealt with and ``fd`` closed."""
        try:
            with open(path, "rb") as stream:
                header = stream.read(len(HEADER))
        except FileNotFoundError:  # its owner deleted it before we got the lock
            _unlink(lock_path)
            os.close(fd)
            return False
        except OSError as exc:
            self.skip.add(path)
            os.close(fd)
            self._errors.append(SpoolError(f"cannot read spool file {path}: {exc}", path=path))
            return False
        if not header:  # killed right after creating it: nothing was ever stored
            _delete_files(path, lock_path, fd)
            return False
        if header != HEADER:
            self._move_aside(path, lock_path, fd, "not an SQLite file (bad header)", count=0)
            return False
        return True

    def _open_orphan(self, path: str, lock_path: str, fd: int) -> Optional[Contents]:
        """The orphan's contents; None when it cannot be used (dealt with, ``fd`` closed)."""
        try:
            contents = open_existing(path, fsync=self._settings.fsync)
        except UnknownFormat as exc:
            os.close(fd)
            self.skip.add(path)
            self._errors.append(
                SpoolError(
                    f"spool file {path} has format version {exc.version}, this version reads "
                    f"{FORMAT_VERSION}: left in place",
                    path=path,
                )
            )
            return None
        except sqlite3.Error as exc:
            if is_corrupt(exc):
                self._move_aside(path, lock_path, fd, str(exc), count=0)
            else:  # locked by someone else, an I/O error: not ours to judge now
                os.close(fd)
                self.skip.add(path)
                self._errors.append(
                    SpoolError(f"cannot open spool file {path}: {exc}; skipped", path=path)
                )
            return None
        if contents is None:  # killed before the schema was written
            _delete_files(path, lock_path, fd)
            return None
        return contents

    def _hold_orphan(
        self, path: str, lock_path: str, fd: int, contents: Contents
    ) -> Optional[SpoolFile]:
        """The opened orphan as a held file; None (and the file deleted) when it has no events."""
        file = SpoolFile(
            next(self._idents),
            path,
            lock_path,
            fd,
            contents.conn,
            own=False,
            count=contents.events,
            size=contents.size,
            next_id=contents.next_id,
        )
        if file.count == 0:
            self.release(file, delete=True)
            return None
        try:
            file.since = file.head_created() or 0.0
        except sqlite3.Error:
            pass
        return file

    # ------------------------------------------------------------------ faults, release

    def failed(self, file: SpoolFile, exc: sqlite3.Error) -> None:
        """A read or write of ``file`` failed: corrupt files go aside; other errors are reported."""
        if not is_corrupt(exc):
            self._errors.append(SpoolError(f"spool file {file.path} failed: {exc}", path=file.path))
            return
        if file.own:
            self.replace_own(exc)
            return
        self.orphans.remove(file)
        self._by_ident.pop(file.ident, None)
        close_quietly(file.conn)
        self._move_aside(file.path, file.lock_path, file.lock_fd, str(exc), count=file.count)

    def _move_aside(self, path: str, lock_path: str, fd: int, detail: str, *, count: int) -> None:
        target = f"{path}.corrupt-{_stamp()}"
        try:
            os.replace(path, target)
            if os.path.exists(path + "-wal"):
                os.replace(path + "-wal", target + "-wal")
            _unlink(path + "-shm")
            moved = f"moved aside to {os.path.basename(target)}"
        except OSError as exc:
            self.skip.add(path)
            moved = f"could not be moved aside ({exc.strerror or exc}); left in place"
        else:
            _unlink(lock_path)
        os.close(fd)
        lost = f"{count} events lost" if count else "its events could not be read"
        self._errors.append(
            SpoolError(
                f"spool file {os.path.basename(path)} is corrupt ({detail}): {moved}; {lost}",
                count=count,
                path=path,
            )
        )

    def release(self, file: SpoolFile, *, delete: bool) -> None:
        """Close ``file``; delete it (database, then lock) or leave it for another process."""
        if file in self.orphans:
            self.orphans.remove(file)
        self._by_ident.pop(file.ident, None)
        try:
            file.conn.close()
        except sqlite3.Error:
            delete = False
        if delete:
            _delete_files(file.path, file.lock_path, file.lock_fd)
        else:
            os.close(file.lock_fd)

    def release_all(self) -> None:
        """Release every file held; the empty ones are deleted, the others left."""
        for orphan in list(self.orphans):
            self.release(orphan, delete=orphan.count == 0)
        own = self.own
        if own is not None:
            self.release(own, delete=own.count == 0)
            self.own = None

    def forget(self, keep: List[sqlite3.Connection]) -> Set[str]:
        """In a forked child: let go of the parent's files without touching them.

        Their connections go to ``keep``, never to be used or closed here (the
        parent still uses them); the paths returned are never to be claimed.
        """
        files = self.files()
        skip = set(self.skip) | {f.path for f in files}
        for file in files:
            keep.append(file.conn)
            try:
                # The parent's descriptor keeps the flock; this only closes our copy.
                os.close(file.lock_fd)
            except OSError:
                pass
        return skip


def lock(path: str, *, create: bool) -> Optional[int]:
    """Open and ``flock`` ``path`` without waiting; the fd, or None when held or gone.

    After the lock is granted, ``path`` must still name the locked file: if it was
    deleted (and perhaps recreated) in between, the lock protects nothing. The
    file is left with mode 0o600, whoever created it under whatever umask.
    """
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.stat(path)
        held = os.fstat(fd)
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            make_private(fd)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _delete_files(path: str, lock_path: str, fd: int) -> None:
    for leftover in (path + "-wal", path + "-shm", path, lock_path):
        _unlink(leftover)
    os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z"
