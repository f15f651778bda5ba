"""The durable disk spool: events wait on disk until the receiver accepted them.

The model
---------
``spool_path`` is a directory. Each process writes its own SQLite file,
``spool-<pid>-<random>.sqlite3``, and holds an exclusive ``flock`` on the
sidecar ``spool-<pid>-<random>.lock`` for as long as it lives. SQLite itself is
opened in WAL mode with ``locking_mode=EXCLUSIVE`` (no ``-shm`` file; a second
opener gets "database is locked" even if the lock file was tampered with).

A file whose lock can be taken belongs to a process that died (crash, SIGKILL,
an outage that outlived it) or exited with events left: an *orphan*. A live
process claims orphans by taking their lock (at ``open()``, then whenever one
it held is drained, and every ``rescan_interval`` seconds), drains them first,
oldest file first, then deletes them. It claims an orphan while what it holds
plus that orphan fits ``max_bytes``, and always at least one, so that the
workers of a restarted server share the backlog instead of the first one
taking it all and dropping most of it. ``flock`` is atomic, so two processes
never claim the same file, and an event is never handed out by two processes
on purpose. The only duplicates are the at-least-once kind: a batch whose
acceptance was not recorded (a crash between the receiver's 200 and
:meth:`Spool.remove`) is sent again with the same ``messageId``, which
Segment deduplicates.

Why SQLite in WAL mode: a commit appends to the WAL without rewriting pages
or a rollback journal, so a batch of 100 messages costs one sequential write and no
fsync (``synchronous=NORMAL``: what was committed survives a killed process;
``fsync=True`` makes each commit survive a power loss too). Measured with
``benchmarks/spool_bench.py`` (append, read back and remove 100-message
batches of 300-byte events), it costs about 5 to 8 microseconds per message
on an ext4 disk, two to three times less than SQLite with a rollback journal;
on tmpfs, where writes cost nothing, the two are even.

The lock is taken before the database file exists and deleted after it, and
every lock is checked to still be the file at its path after ``flock``
returned, so that a lock file deleted and recreated by someone else in between
never lets two processes believe they own the same file.

Interface (for the worker)
--------------------------
All methods are thread-safe; the worker calls them from its own thread.

``Spool(directory, *, max_bytes, max_age, on_drop, on_error, fsync, rescan_interval)``
    No I/O here; arguments are validated (``ValueError``/``TypeError``).
    ``on_drop(count, reason)`` and ``on_error(SpoolError)`` report losses and
    faults; ``clock`` (default ``time.time``) dates events for ``max_age``.
``open()``
    Creates the directory and this process's file, claims orphans. Called
    lazily (every other method calls it when needed). Raises
    :class:`~segmentio_logging._errors.SpoolError` when the directory cannot
    be used: the caller then keeps events in memory.
``append(parts) -> keys``
    Stores encoded messages in one committed transaction and returns one key
    per part, in order. When ``append`` returns, the events survive the
    process being killed; with ``fsync=True`` they also survive a power loss
    (``sync()`` gets there on demand otherwise). Raises ``SpoolError`` when
    nothing could be stored (disk full, I/O error): keep those in memory.
``oldest(limit, max_bytes) -> [(key, bytes)]``
    The oldest stored events: claimed orphans first, then this process's own,
    at most ``limit`` of them and at most ``max_bytes`` counting each event's
    length plus one (the comma that joins them in a batch); at least one when
    any is stored. A pure read: called twice without ``remove`` it returns the
    same events.
``remove(keys) -> keys``
    Deletes events once the receiver accepted them (or refused them for good)
    and returns the keys it deleted. Unknown keys (already removed, dropped by
    a bound while their batch was in flight) are ignored and left out of the
    result: those events were already reported through ``on_drop``.
``pending() -> (count, bytes)``
    What is stored in the files this process holds; no I/O.
``own() -> (file number, count)``
    This process's own file: the first element of the keys of the events
    appended here, and how many of them are stored; no I/O. The worker uses
    it to tell its own events from recovered ones and to count bound drops.
``sync()``
    Returns once everything appended is on stable storage (a WAL checkpoint,
    which fsyncs); a no-op with ``fsync=True``, where every commit already is.
``close()``
    Deletes this process's file when it is empty, otherwise leaves it for the
    next process; releases every lock. Idempotent; the spool is then closed.
``reset_after_fork()``
    In a forked child: forget the parent's files and connections without
    touching them (the parent still uses them); the next call opens a new
    file. An ``os.register_at_fork`` hook does this for every spool, and every
    method also checks the pid, so calling it is only needed where fork hooks
    are skipped; it is a no-op in the process that opened the spool.

Every method but ``pending`` may raise ``SpoolError`` when the directory
becomes unusable; ``on_drop`` and ``on_error`` run on the calling thread, after
the spool's lock is released, and an exception they raise is reported to
stderr and otherwise ignored. Without them, drops and errors go to stderr
(rate-limited).

A wiring that keeps at-least-once::

    keys = spool.append(parts)                 # within flush_interval of the log call
    while True:
        batch = spool.oldest(batch_size, max_body_bytes)
        if not batch:
            break
        outcome = deliver([data for _, data in batch])
        if accepted_or_refused_for_good(outcome):
            spool.remove([key for key, _ in batch])
        else:
            break                              # retry later: the events stay on disk

:class:`~segmentio_logging._spooled.SpooledPipeline` wires it so: its worker thread
appends what was queued every ``flush_interval``, a sender thread runs the loop
above (backing off while the receiver is down), every call of both runs under
one pipeline lock (also held across ``fork``), and the pipeline replaces
``on_drop`` and ``on_error`` to count and report what is lost.

Bounds
------
Before each append and each read, events older than ``max_age`` seconds
(their time of first write) are deleted; before each append, the oldest events
are deleted until the new ones fit in ``max_bytes``, counted as the sum of the
stored messages' lengths over this process's own file and the orphans it
claimed (orphans first: they are the oldest). A batch larger than
``max_bytes`` on its own keeps only its newest events. Each deletion is
reported as ``on_drop(count, reason)``. ``max_bytes`` is per live process: N
processes on one directory hold about N times it, however many died before
(their files are claimed and trimmed within the claimers' bounds). SQLite's
own overhead comes on top (page slack, the WAL: checkpointed every 1 MiB and
truncated to 1 MiB); the database file also gets a hard ``max_page_count`` of
twice ``max_bytes`` plus 4 MiB, so a bookkeeping slip still cannot fill the
disk (the append then raises ``SpoolError``). Deleted pages are reused; when
the spool empties after a backlog of over 1 MiB, the file shrinks.

Faults
------
A file that is not a spool (bad header, ``sqlite3.DatabaseError``, a failed
``PRAGMA quick_check``) is renamed ``<name>.corrupt-<UTC timestamp>`` and
reported as ``on_error(SpoolError)`` whose ``count`` is the events known lost
(0 when unknown); the spool carries on, with a fresh file if it was its own.
Events lost are the sum of the ``on_drop`` counts and the ``on_error`` counts.
A file of an unknown format version is left alone and reported once.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sqlite3
import sys
import threading
import time
import urllib.parse
import weakref
from typing import (
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from . import _report
from ._errors import SpoolError

if sys.platform != "win32":
    import fcntl

__all__ = ["DEFAULT_MAX_BYTES", "FORMAT_VERSION", "Spool", "SpoolKey"]

# (file number within this Spool, row id within that file)
SpoolKey = Tuple[int, int]
DropCallback = Callable[[int, str], object]
ErrorCallback = Callable[[SpoolError], object]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
FORMAT_VERSION = 1

_HEADER = b"SQLite format 3\x00"
_PREFIX = "spool-"
_DB = ".sqlite3"
_LOCK = ".lock"
_MAX_CLAIMED = 16  # orphans held open at once; more are claimed as these drain
_WAL_LIMIT = 1 << 20  # bytes: WAL size kept after a checkpoint, and checkpoint interval
_VACUUM_AT = 1 << 20  # free bytes in an emptied file that make it shrink
_BUSY_TIMEOUT = 0.2  # seconds; only a foreign opener can hold our file's lock

_SCHEMA = "CREATE TABLE events (id INTEGER PRIMARY KEY, created REAL NOT NULL, data BLOB NOT NULL)"

# Connections inherited through fork: the parent still uses them, so the child
# must neither use nor close them (closing may checkpoint the parent's file).
# Kept referenced so that garbage collection never finalizes them.
_abandoned: List[sqlite3.Connection] = []
_live: weakref.WeakSet[Spool] = weakref.WeakSet()


def _corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT and SQLITE_NOTADB surface as exactly ``sqlite3.DatabaseError``."""
    return type(exc) is sqlite3.DatabaseError


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock(path: str, *, create: bool) -> Optional[int]:
    """Open and ``flock`` ``path`` without waiting; the fd, or None when held or gone.

    After the lock is granted, ``path`` must still name the locked file: if it was
    deleted (and perhaps recreated) in between, the lock protects nothing.
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
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z"


class _File:
    """One SQLite spool file this process holds the lock of."""

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
        return f"<_File {kind} {os.path.basename(self.path)} count={self.count} bytes={self.size}>"

    def head_created(self) -> Optional[float]:
        row = self.conn.execute("SELECT created FROM events ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])


class Spool:
    """A directory of per-process SQLite files holding encoded events until delivered."""

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: Optional[float] = None,
        on_drop: Optional[DropCallback] = None,
        on_error: Optional[ErrorCallback] = None,
        fsync: bool = False,
        rescan_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"spool_path must be a path, not {type(directory).__name__}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"spool_max_bytes must be an int, not {type(max_bytes).__name__}")
        if max_bytes < 1:
            raise ValueError(f"spool_max_bytes must be at least 1, got {max_bytes}")
        if max_age is not None:
            if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
                raise TypeError(f"spool_max_age must be seconds, not {type(max_age).__name__}")
            if not max_age > 0:
                raise ValueError(f"spool_max_age must be positive, got {max_age}")
        if not rescan_interval >= 0:
            raise ValueError(f"rescan_interval must be 0 or more, got {rescan_interval}")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.max_age = None if max_age is None else float(max_age)
        self.on_drop = on_drop
        self.on_error = on_error
        self.fsync = bool(fsync)
        self.rescan_interval = float(rescan_interval)
        self._clock = clock
        self._closed = False
        self._fresh_state()
        _live.add(self)

    def _fresh_state(self) -> None:
        self._lock = threading.RLock()
        self._pid: Optional[int] = None  # set by open(): the process the files belong to
        self._own: Optional[_File] = None
        self._orphans: List[_File] = []  # oldest first
        self._by_ident: Dict[int, _File] = {}
        self._idents = itertools.count(1)
        self._next_scan = float("-inf")  # time.monotonic() of the next look for orphans
        self._skip: Set[str] = set()  # paths never to claim in this process
        self._drops: List[Tuple[int, str]] = []  # reported after the lock is released
        self._errors: List[SpoolError] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._own is not None else "unopened")
        count, size = self.pending()
        return (
            f"<Spool {state} {self.directory!r} pending={count} bytes={size} "
            f"orphans={len(self._orphans)}>"
        )

    # ------------------------------------------------------------------ public

    def open(self) -> None:
        """Create the directory and this process's file, and claim orphans; idempotent."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
        finally:
            self._report()

    def append(self, parts: Sequence[bytes]) -> List[SpoolKey]:
        """Store ``parts`` in one committed transaction; one key per part, in order."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
                if not parts:
                    return []
                self._enforce(incoming=sum(len(part) for part in parts))
                own = self._ensure_open()  # a fault found by _enforce may have replaced it
                try:
                    return self._insert(own, parts)
                except sqlite3.Error as exc:
                    if not _corrupt(exc):
                        raise self._write_error(own, exc, len(parts)) from exc
                    own = self._replace_own(exc)
                    try:
                        return self._insert(own, parts)
                    except sqlite3.Error as again:
                        raise self._write_error(own, again, len(parts)) from again
        finally:
            self._report()

    def oldest(self, limit: int, max_bytes: int) -> List[Tuple[SpoolKey, bytes]]:
        """The oldest stored events (orphans first), within ``limit`` and ``max_bytes``."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
                if len(self._orphans) < _MAX_CLAIMED and time.monotonic() >= self._next_scan:
                    self._claim()
                self._enforce(incoming=0)
                out: List[Tuple[SpoolKey, bytes]] = []
                budget = max_bytes
                for file in self._files():
                    if len(out) >= limit:
                        break
                    if file.count == 0:
                        continue
                    try:
                        rows = file.conn.execute(
                            "SELECT id, data FROM events ORDER BY id LIMIT ?", (limit - len(out),)
                        ).fetchall()
                    except sqlite3.Error as exc:
                        self._file_failed(file, exc)
                        continue
                    for row_id, data in rows:
                        cost = len(data) + 1
                        if out and cost > budget:
                            return out
                        out.append(((file.ident, int(row_id)), bytes(data)))
                        budget -= cost
                return out
        finally:
            self._report()

    def remove(self, keys: Iterable[SpoolKey]) -> List[SpoolKey]:
        """Delete the events of ``keys``; the keys deleted (unknown keys are ignored)."""
        self._check_fork()
        try:
            with self._lock:
                if self._own is None:
                    return []
                wanted: Dict[int, List[int]] = {}
                for ident, row_id in keys:
                    wanted.setdefault(ident, []).append(row_id)
                removed: List[SpoolKey] = []
                for ident, row_ids in wanted.items():
                    file = self._by_ident.get(ident)
                    if file is None:
                        continue
                    try:
                        removed.extend((ident, row_id) for row_id in self._delete(file, row_ids))
                    except sqlite3.Error as exc:
                        self._file_failed(file, exc)
                return removed
        finally:
            self._report()

    def pending(self) -> Tuple[int, int]:
        """(events, bytes) stored in the files this process holds; no I/O."""
        self._check_fork()
        with self._lock:
            files = self._files()
            return sum(f.count for f in files), sum(f.size for f in files)

    def own(self) -> Tuple[Optional[int], int]:
        """(file number of this process's own file, events stored in it); no I/O.

        A key whose first element is that number names an event this spool
        appended; the others came from orphans. The number changes when a
        corrupt own file is replaced (its events are then reported lost).
        """
        self._check_fork()
        with self._lock:
            own = self._own
            return (None, 0) if own is None else (own.ident, own.count)

    def sync(self) -> None:
        """Return once everything appended so far is on stable storage."""
        self._check_fork()
        try:
            with self._lock:
                own = self._ensure_open()
                if self.fsync:
                    return
                try:
                    own.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
                except sqlite3.Error as exc:
                    raise SpoolError(
                        f"could not sync the spool file {own.path}: {exc}", path=own.path
                    ) from exc
        finally:
            self._report()

    def claim_orphans(self) -> int:
        """Look for orphaned files now (``oldest`` also does every ``rescan_interval``)."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
                return self._claim()
        finally:
            self._report()

    def close(self) -> None:
        """Delete this process's file if empty (else leave it), release every lock."""
        self._check_fork()
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                for orphan in list(self._orphans):
                    self._release(orphan, delete=orphan.count == 0)
                own = self._own
                if own is not None:
                    self._release(own, delete=own.count == 0)
                    self._own = None
        finally:
            self._report()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's files without touching them.

        A no-op in the process that opened the spool, and when already done.
        """
        if self._pid is None or self._pid == os.getpid():
            return
        files = list(self._orphans)
        if self._own is not None:
            files.append(self._own)
        skip = set(self._skip) | {f.path for f in files}
        for file in files:
            _abandoned.append(file.conn)
            try:
                # The parent's descriptor keeps the flock; this only closes our copy.
                os.close(file.lock_fd)
            except OSError:
                pass
        self._fresh_state()
        # The parent's files stay the parent's, even after it dies: this process's
        # copies of their connections were never closed, so SQLite here would
        # believe it still holds their locks.
        self._skip = skip

    # ------------------------------------------------------------------ opening

    def _check_fork(self) -> None:
        self.reset_after_fork()

    def _files(self) -> List[_File]:
        files = list(self._orphans)
        if self._own is not None:
            files.append(self._own)
        return files

    def _ensure_open(self) -> _File:
        if self._closed:
            raise SpoolError("the spool is closed", path=self.directory)
        if self._own is not None:
            return self._own
        if sys.platform == "win32":
            raise SpoolError("the disk spool needs flock (POSIX systems)", path=self.directory)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"spool_path {self.directory!r} cannot be used as a directory: "
                f"{exc.strerror or exc}",
                path=self.directory,
            ) from exc
        self._pid = os.getpid()
        self._own = self._create_own()
        self._claim()
        return self._own

    def _create_own(self) -> _File:
        for _attempt in range(8):
            base = os.path.join(self.directory, f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            lock_path = base + _LOCK
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpoolError(
                    f"spool_path {self.directory!r} is not writable: {exc.strerror or exc}",
                    path=self.directory,
                ) from exc
            os.close(fd)
            locked = _lock(lock_path, create=False)
            if locked is None:  # a cleaner took it for a stale lock in between: new name
                continue
            path = base + _DB
            conn: Optional[sqlite3.Connection] = None
            try:
                conn = self._connect(path, create=True)
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._configure(conn)
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                cap = (2 * self.max_bytes + (4 << 20)) // page_size + 1
                conn.execute(f"PRAGMA max_page_count={cap}")
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                for leftover in (path, path + "-wal", path + "-shm", lock_path):
                    _unlink(leftover)
                os.close(locked)
                raise SpoolError(
                    f"cannot create a spool file in {self.directory!r}: {exc}", path=path
                ) from exc
            own = _File(next(self._idents), path, lock_path, locked, conn, own=True)
            self._by_ident[own.ident] = own
            return own
        raise SpoolError(
            f"cannot create a spool file in {self.directory!r}: names kept colliding",
            path=self.directory,
        )

    @staticmethod
    def _connect(path: str, *, create: bool) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(path)}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
        )
        # Before the first access in WAL mode: the WAL index then lives in this
        # process's memory (no -shm file) and SQLite holds the file for good.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint={max(_WAL_LIMIT // page_size, 16)}")

    # ------------------------------------------------------------------ orphans

    def _claim(self) -> int:
        """Claim unlocked files of dead processes, oldest file first, within ``max_bytes``.

        An orphan is claimed when what this process holds plus the orphan's size
        fits ``max_bytes``, or when it holds no orphan yet (so that a full process
        still makes progress: the bound then drops the oldest events). The rest is
        left for other processes, or for the next scan once these are drained.
        """
        self._next_scan = time.monotonic() + self.rescan_interval
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            self._errors.append(
                SpoolError(f"cannot list spool_path {self.directory!r}: {exc}", path=self.directory)
            )
            return 0
        held = {f.path for f in self._files()} | self._skip
        candidates: List[Tuple[float, str, int]] = []
        for name in names:
            if not name.startswith(_PREFIX):
                continue
            path = os.path.join(self.directory, name)
            if name.endswith(_LOCK):
                self._clean_stale_lock(path)
            elif name.endswith(_DB) and path not in held:
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                candidates.append((stat.st_mtime, path, stat.st_size + _size(path + "-wal")))
        candidates.sort()
        holding = sum(f.size for f in self._files())
        claimed = 0
        for _mtime, path, approx in candidates:
            if len(self._orphans) >= _MAX_CLAIMED:
                break
            if self._orphans and holding + approx > self.max_bytes:
                continue
            file = self._claim_one(path)
            if file is None:
                continue
            self._orphans.append(file)
            self._by_ident[file.ident] = file
            holding += file.size
            claimed += 1
        if claimed:
            self._orphans.sort(key=lambda f: (f.since, f.path))
        return claimed

    def _clean_stale_lock(self, lock_path: str) -> None:
        """A lock file without its database: left by a process that died while closing."""
        path = lock_path[: -len(_LOCK)] + _DB
        if os.path.exists(path):
            return
        fd = _lock(lock_path, create=False)
        if fd is None:
            return
        if not os.path.exists(path):
            _unlink(lock_path)
        os.close(fd)

    def _claim_one(self, path: str) -> Optional[_File]:
        lock_path = path[: -len(_DB)] + _LOCK
        fd = _lock(lock_path, create=True)
        if fd is None:
            return None  # its process is alive, or another one claimed it
        try:
            with open(path, "rb") as stream:
                header = stream.read(len(_HEADER))
        except FileNotFoundError:  # its owner deleted it before we got the lock
            _unlink(lock_path)
            os.close(fd)
            return None
        except OSError as exc:
            self._skip.add(path)
            os.close(fd)
            self._errors.append(SpoolError(f"cannot read spool file {path}: {exc}", path=path))
            return None
        if not header:  # killed right after creating it: nothing was ever stored
            self._delete_files(path, lock_path, fd)
            return None
        if header != _HEADER:
            self._move_aside(path, lock_path, fd, "not an SQLite file (bad header)", count=0)
            return None
        conn: Optional[sqlite3.Connection] = None
        try:
            conn = self._connect(path, create=False)
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
                self._delete_files(path, lock_path, fd)
                return None
            if version != FORMAT_VERSION:
                conn.close()
                os.close(fd)
                self._skip.add(path)
                self._errors.append(
                    SpoolError(
                        f"spool file {path} has format version {version}, this version reads "
                        f"{FORMAT_VERSION}: left in place",
                        path=path,
                    )
                )
                return None
            self._configure(conn)
            count, size, last = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0) FROM events"
            ).fetchone()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if _corrupt(exc):
                self._move_aside(path, lock_path, fd, str(exc), count=0)
            else:  # locked by someone else, an I/O error: not ours to judge now
                os.close(fd)
                self._skip.add(path)
                self._errors.append(
                    SpoolError(f"cannot open spool file {path}: {exc}; skipped", path=path)
                )
            return None
        file = _File(
            next(self._idents),
            path,
            lock_path,
            fd,
            conn,
            own=False,
            count=int(count),
            size=int(size),
            next_id=int(last) + 1,
        )
        if file.count == 0:
            self._release(file, delete=True)
            return None
        try:
            file.since = file.head_created() or 0.0
        except sqlite3.Error:
            pass
        return file

    # ------------------------------------------------------------------ writing

    def _insert(self, own: _File, parts: Sequence[bytes]) -> List[SpoolKey]:
        conn = own.conn
        first = own.next_id
        now = self._clock()
        size = sum(len(part) for part in parts)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO events (id, created, data) VALUES (?, ?, ?)",
                _rows(first, now, parts),
            )
            dropped, freed = 0, 0
            if own.size + size > self.max_bytes:  # this batch alone is over the bound
                dropped, freed = self._trim(own, need=own.size + size - self.max_bytes)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        own.next_id = first + len(parts)
        own.count += len(parts) - dropped
        own.size += size - freed
        if dropped:
            self._drops.append((dropped, self._bytes_reason(dropped)))
        return [(own.ident, first + i) for i in range(len(parts))]

    def _enforce(self, *, incoming: int) -> None:
        """Apply ``max_age``, then make room for ``incoming`` bytes; oldest first."""
        if self.max_age is not None:
            cutoff = self._clock() - self.max_age
            expired = 0
            for file in self._files():
                if file.count == 0:
                    continue
                try:
                    head = file.head_created()
                    if head is None or head >= cutoff:
                        continue
                    expired += self._trim_committed(file, cutoff=cutoff)
                except sqlite3.Error as exc:
                    self._file_failed(file, exc)
            if expired:
                self._drops.append(
                    (
                        expired,
                        f"{expired} events older than spool_max_age={self.max_age:g}s deleted",
                    )
                )
        total = sum(f.size for f in self._files())
        excess = total + incoming - self.max_bytes
        if excess <= 0:
            return
        dropped = 0
        for file in self._files():
            if excess <= 0:
                break
            if file.count == 0:
                continue
            try:
                before = file.size
                dropped += self._trim_committed(file, need=excess)
                excess -= before - file.size
            except sqlite3.Error as exc:
                self._file_failed(file, exc)
        if dropped:
            self._drops.append((dropped, self._bytes_reason(dropped)))

    def _bytes_reason(self, count: int) -> str:
        return f"{count} oldest events deleted to stay within spool_max_bytes={self.max_bytes:,}"

    def _trim_committed(self, file: _File, *, need: int = 0, cutoff: Optional[float] = None) -> int:
        file.conn.execute("BEGIN IMMEDIATE")
        try:
            dropped, freed = self._trim(file, need=need, cutoff=cutoff)
            file.conn.execute("COMMIT")
        except BaseException:
            _rollback(file.conn)
            raise
        file.count -= dropped
        file.size -= freed
        if file.count == 0 and not file.own:
            self._release(file, delete=True)
        return dropped

    @staticmethod
    def _trim(file: _File, *, need: int = 0, cutoff: Optional[float] = None) -> Tuple[int, int]:
        """Delete the oldest rows: those created before ``cutoff``, or ``need`` bytes' worth.

        Inside the caller's transaction; returns (rows, bytes) deleted.
        """
        cursor = file.conn.execute("SELECT id, created, length(data) FROM events ORDER BY id")
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
            file.conn.execute("DELETE FROM events WHERE id <= ?", (last,))
        return dropped, freed

    def _delete(self, file: _File, row_ids: List[int]) -> List[int]:
        """Delete the rows of ``row_ids`` still there; their ids."""
        conn = file.conn
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
            _rollback(conn)
            raise
        file.count -= len(removed)
        file.size -= freed
        if file.count == 0:
            if file.own:
                self._shrink(file)
            else:
                self._release(file, delete=True)
                self._next_scan = float("-inf")  # more may be waiting: look at the next read
        return removed

    @staticmethod
    def _shrink(file: _File) -> None:
        """Give back the pages of an emptied file once an outage's backlog is gone."""
        try:
            free = int(file.conn.execute("PRAGMA freelist_count").fetchone()[0])
            page_size = int(file.conn.execute("PRAGMA page_size").fetchone()[0])
            if free * page_size >= _VACUUM_AT:
                file.conn.execute("PRAGMA incremental_vacuum").fetchall()
                file.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # only space: the next append reuses the pages anyway

    # ------------------------------------------------------------------ faults, release

    def _write_error(self, own: _File, exc: sqlite3.Error, count: int) -> SpoolError:
        return SpoolError(
            f"could not write {count} events to the spool file {own.path}: {exc}",
            count=count,
            path=own.path,
        )

    def _replace_own(self, exc: sqlite3.Error) -> _File:
        """Own file found corrupt: move it aside, report, and carry on with a new one."""
        own = self._own
        assert own is not None
        self._by_ident.pop(own.ident, None)
        self._own = None
        _abandon_quietly(own.conn)
        self._move_aside(own.path, own.lock_path, own.lock_fd, str(exc), count=own.count)
        self._own = self._create_own()
        return self._own

    def _file_failed(self, file: _File, exc: sqlite3.Error) -> None:
        """A read or delete failed: corrupt files go aside; other errors are reported."""
        if not _corrupt(exc):
            self._errors.append(SpoolError(f"spool file {file.path} failed: {exc}", path=file.path))
            return
        if file.own:
            self._replace_own(exc)
            return
        self._orphans.remove(file)
        self._by_ident.pop(file.ident, None)
        _abandon_quietly(file.conn)
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
            self._skip.add(path)
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

    def _release(self, file: _File, *, delete: bool) -> None:
        """Close ``file``; delete it (database, then lock) or leave it for another process."""
        if file in self._orphans:
            self._orphans.remove(file)
        self._by_ident.pop(file.ident, None)
        try:
            file.conn.close()
        except sqlite3.Error:
            delete = False
        if delete:
            self._delete_files(file.path, file.lock_path, file.lock_fd)
        else:
            os.close(file.lock_fd)

    @staticmethod
    def _delete_files(path: str, lock_path: str, fd: int) -> None:
        for leftover in (path + "-wal", path + "-shm", path, lock_path):
            _unlink(leftover)
        os.close(fd)

    def _report(self) -> None:
        """Run the callbacks outside the lock: they may call back into the spool."""
        with self._lock:
            drops, self._drops = self._drops, []
            errors, self._errors = self._errors, []
        for count, reason in drops:
            if self.on_drop is None:
                _report.warn(f"spool-drop-{id(self)}", f"spool: {reason}")
            _call(self.on_drop, count, reason)
        for error in errors:
            if self.on_error is None:
                _report.warn(f"spool-error-{id(self)}", f"spool: {error.reason}")
            else:
                try:
                    self.on_error(error)
                except Exception as exc:
                    _report.warn(f"spool-callback-{id(self)}", f"on_error raised {exc!r}")


def _call(callback: Optional[DropCallback], count: int, reason: str) -> None:
    if callback is None:
        return
    try:
        callback(count, reason)
    except Exception as exc:
        _report.warn(f"spool-callback-{id(callback)}", f"on_drop raised {exc!r}")


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


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _abandon_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


def _after_fork_in_child() -> None:
    # At once, not at the next call: until then the child's copies of the lock
    # descriptors would keep the parent's files locked after the parent died.
    for spool in list(_live):
        spool._check_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
