"""One SQLite spool file: opening or creating it, and the reads and writes of its events.

A spool file holds one table, ``events (id, created, data)``: ``id`` orders the
events, ``created`` is their time of first write (for ``spool_max_age``), ``data``
the encoded message. Each write is one committed transaction in WAL mode. The
design is in docs/spool.md.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

FORMAT_VERSION = 1

HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite database file
_SCHEMA = "CREATE TABLE events (id INTEGER PRIMARY KEY, created REAL NOT NULL, data BLOB NOT NULL)"
_WAL_LIMIT = 1 << 20  # bytes: WAL size kept after a checkpoint, and checkpoint interval
_VACUUM_AT = 1 << 20  # free bytes in an emptied file that make it shrink
_BUSY_TIMEOUT = 0.2  # seconds; only a foreign opener can hold our file's lock
PRIVATE = 0o600  # every spool file: it holds user data, for its owner's eyes only
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT and SQLITE_NOTADB surface as exactly ``sqlite3.DatabaseError``."""
    return type(exc) is sqlite3.DatabaseError


class UnknownFormat(Exception):
    """A spool file of another format version: this version neither reads nor moves it."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


class Contents(NamedTuple):
    """An existing spool file, opened: the connection that holds it and what it stores."""

    conn: sqlite3.Connection
    events: int
    size: int
    next_id: int


def create_private(path: str) -> int:
    """Create ``path``, which must not exist, with mode :data:`PRIVATE`; its descriptor.

    Whatever the umask: it can only take bits away, and may take the owner's
    too, so the mode is set again on the descriptor. Raises ``OSError``
    (``FileExistsError`` when ``path`` exists, a symbolic link included).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(fd: int) -> None:
    """Set the file of ``fd`` to mode :data:`PRIVATE` if it is not; quietly, when not ours."""
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE:
            os.fchmod(fd, PRIVATE)
    except OSError:
        pass  # another user's file (a shared spool_path): the folder's warning covers it


def make_files_private(path: str) -> None:
    """Set an existing database, its WAL and its shared-memory file to :data:`PRIVATE`.

    For a file left by an earlier version or by another umask, before SQLite
    opens it: the WAL and shared-memory files SQLite creates take the mode of
    the database file.
    """
    for name in (path, path + "-wal", path + "-shm"):
        try:
            # O_NONBLOCK: a FIFO planted under one of these names must not hang us.
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                make_private(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """A connection that holds ``path`` exclusively, in autocommit mode."""
    uri = f"file:{urllib.parse.quote(path)}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
    )
    # Before the first access in WAL mode: the WAL index then lives in this
    # process's memory (no -shm file) and SQLite holds the file for good.
    conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
    return conn


def configure(conn: sqlite3.Connection, *, fsync: bool) -> None:
    """WAL mode, the durability ``fsync`` asks for, and a WAL kept near ``_WAL_LIMIT``."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint={max(_WAL_LIMIT // page_size, 16)}")


def create_database(path: str, *, fsync: bool, max_bytes: int) -> sqlite3.Connection:
    """A new, empty spool file at ``path``, held by the connection returned.

    The file is created here with mode :data:`PRIVATE` before SQLite opens it:
    SQLite would create it under the umask (0o644 by default), and gives its
    WAL and shared-memory files the mode of the database file. Raises
    ``OSError`` when ``path`` cannot be created (``FileExistsError`` when it
    exists; nothing was created then), or ``sqlite3.Error`` with the connection
    closed; deleting what was created is the caller's.
    """
    os.close(create_private(path))
    conn: Optional[sqlite3.Connection] = None
    try:
        conn = connect(path, create=False)
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        configure(conn, fsync=fsync)
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        # A hard cap well above the bound: a bookkeeping slip still cannot fill
        # the disk (the insert fails instead).
        cap = (2 * max_bytes + (4 << 20)) // page_size + 1
        conn.execute(f"PRAGMA max_page_count={cap}")
    except sqlite3.Error:
        if conn is not None:
            conn.close()
        raise
    return conn


def open_existing(path: str, *, fsync: bool) -> Optional[Contents]:
    """Open a spool file another process left; None when it never got its schema.

    Raises :class:`UnknownFormat` for another format version and
    ``sqlite3.Error`` otherwise (``sqlite3.DatabaseError`` exactly when the file
    is corrupt, a failed ``quick_check`` included); the connection is closed
    whenever none is returned.
    """
    conn: Optional[sqlite3.Connection] = None
    try:
        conn = connect(path, create=False)
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in check[:3])
            raise sqlite3.DatabaseError(f"quick_check failed: {detail}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='events'"
        ).fetchone()[0]
        if version == 0 and not tables:  # killed before the schema was written
            conn.close()
            return None
        if version != FORMAT_VERSION:
            conn.close()
            raise UnknownFormat(version)
        configure(conn, fsync=fsync)
        count, size, last = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0) FROM events"
        ).fetchone()
    except sqlite3.Error:
        if conn is not None:
            conn.close()
        raise
    return Contents(conn, int(count), int(size), int(last) + 1)


class SpoolFile:
    """One SQLite spool file this process holds the lock of, and what it stores.

    ``count`` and ``size`` (events, and the sum of their lengths) are kept in
    step with every write, so that the bounds need no query.
    """

    __slots__ = (
        "conn",
        "count",
        "ident",
        "lock_fd",
        "lock_path",
        "next_id",
        "own",
        "path",
        "since",
        "size",
    )

    def __init__(
        self,
        ident: int,
        path: str,
        lock_path: str,
        lock_fd: int,
        conn: sqlite3.Connection,
        *,
        own: bool,
        count: int = 0,
        size: int = 0,
        next_id: int = 1,
    ) -> None:
        self.ident = ident
        self.path = path
        self.lock_path = lock_path
        self.lock_fd = lock_fd
        self.conn = conn
        self.own = own
        self.count = count
        self.size = size
        self.next_id = next_id
        self.since = 0.0  # an orphan's oldest event: orphans drain in this order

    def __repr__(self) -> str:
        kind = "own" if self.own else "orphan"
        name = os.path.basename(self.path)
        return f"<SpoolFile {kind} {name} count={self.count} bytes={self.size}>"

    def head_created(self) -> Optional[float]:
        """The time of first write of the oldest event; None when empty."""
        row = self.conn.execute("SELECT created FROM events ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def read(self, limit: int) -> List[Tuple[int, bytes]]:
        """The oldest ``limit`` events as (row id, data) rows."""
        rows: List[Tuple[int, bytes]] = self.conn.execute(
            "SELECT id, data FROM events ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return rows

    def insert(self, parts: Sequence[bytes], *, now: float, max_bytes: int) -> Tuple[int, int]:
        """Store ``parts`` in one committed transaction; (first row id, events dropped).

        When the file would hold more than ``max_bytes``, its oldest events are
        deleted in the same transaction, the new ones last.
        """
        conn = self.conn
        first = self.next_id
        size = sum(len(part) for part in parts)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO events (id, created, data) VALUES (?, ?, ?)",
                _rows(first, now, parts),
            )
            dropped, freed = 0, 0
            if self.size + size > max_bytes:  # this batch alone is over the bound
                dropped, freed = self._trim_rows(need=self.size + size - max_bytes)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self.next_id = first + len(parts)
        self.count += len(parts) - dropped
        self.size += size - freed
        return first, dropped

    def trim(self, *, need: int = 0, cutoff: Optional[float] = None) -> int:
        """Delete the oldest events in one committed transaction; how many were deleted.

        Those created before ``cutoff`` when given, otherwise ``need`` bytes' worth.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            dropped, freed = self._trim_rows(need=need, cutoff=cutoff)
            self.conn.execute("COMMIT")
        except BaseException:
            rollback(self.conn)
            raise
        self.count -= dropped
        self.size -= freed
        return dropped

    def _trim_rows(self, *, need: int = 0, cutoff: Optional[float] = None) -> Tuple[int, int]:
        """:meth:`trim` inside the caller's transaction; (rows, bytes) deleted."""
        cursor = self.conn.execute("SELECT id, created, length(data) FROM events ORDER BY id")
        dropped = freed = 0
        last: Optional[int] = None
        try:
            for row_id, created, length in cursor:
                if cutoff is not None:
                    if created >= cutoff:
                        break
                elif freed >= need:
                    break
                dropped += 1
                freed += int(length)
                last = int(row_id)
        finally:
            cursor.close()
        if last is not None:
            self.conn.execute("DELETE FROM events WHERE id <= ?", (last,))
        return dropped, freed

    def delete(self, row_ids: List[int]) -> List[int]:
        """Delete the rows of ``row_ids`` still there, in one transaction; their ids."""
        conn = self.conn
        removed: List[int] = []
        freed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for low, high in _ranges(row_ids):
                found = conn.execute(
                    "SELECT id, length(data) FROM events WHERE id BETWEEN ? AND ?", (low, high)
                ).fetchall()
                if found:
                    conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (low, high))
                    removed.extend(int(row_id) for row_id, _ in found)
                    freed += sum(int(length) for _, length in found)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self.count -= len(removed)
        self.size -= freed
        return removed

    def shrink(self) -> None:
        """Give back the pages of an emptied file once an outage's backlog is gone."""
        try:
            free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
            page_size = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
            if free * page_size >= _VACUUM_AT:
                self.conn.execute("PRAGMA incremental_vacuum").fetchall()
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # only space: the next append reuses the pages anyway

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, with the fsyncs that make it durable."""
        self.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction; a rollback that fails too leaves nothing to undo."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def close_quietly(conn: sqlite3.Connection) -> None:
    """Close a connection to a file given up on (corrupt): its errors say nothing more."""
    try:
        conn.close()
    except sqlite3.Error:
        pass


def _rows(first: int, now: float, parts: Sequence[bytes]) -> Iterator[Tuple[int, float, bytes]]:
    for offset, part in enumerate(parts):
        yield first + offset, now, part


def _ranges(row_ids: List[int]) -> Iterator[Tuple[int, int]]:
    """Sorted runs of consecutive ids, so that a batch is deleted by one range."""
    ordered = sorted(set(row_ids))
    if not ordered:
        return
    low = high = ordered[0]
    for row_id in ordered[1:]:
        if row_id == high + 1:
            high = row_id
            continue
        yield low, high
        low = high = row_id
    yield low, high
