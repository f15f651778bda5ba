"""The :class:`Spool`: the interface the pipeline stores events through.

It validates its settings, serializes calls under one lock, resets itself in a
forked child, and runs ``on_drop`` / ``on_error`` after the lock is released;
the files, the claiming and the bounds are the modules below it. The design
and the interface's contract are in docs/spool.md.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import threading
import time
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .. import _report
from .._errors import SpoolError
from .._options import DEFAULT_SPOOL_MAX_BYTES
from ._bounds import Drop, bytes_drop, checked_bounds, enforce
from ._claim import MAX_CLAIMED, HeldFiles
from ._file import SpoolFile, is_corrupt

DEFAULT_MAX_BYTES = DEFAULT_SPOOL_MAX_BYTES  # the spool_max_bytes option's default

# (file number within this Spool, row id within that file)
SpoolKey = Tuple[int, int]
DropCallback = Callable[[int, str], object]
ErrorCallback = Callable[[SpoolError], object]

# Connections inherited through fork: the parent still uses them, so the child
# must neither use nor close them (closing may checkpoint the parent's file).
# Kept referenced so that garbage collection never finalizes them.
_abandoned: List[sqlite3.Connection] = []
_live: weakref.WeakSet[Spool] = weakref.WeakSet()


class Spool:
    """A directory of per-process SQLite files holding encoded events until delivered.

    Every method is thread-safe. No I/O happens before the first call.
    """

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
        max_bytes, max_age = checked_bounds(max_bytes, max_age)
        if not rescan_interval >= 0:
            raise ValueError(f"rescan_interval must be 0 or more, got {rescan_interval}")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.on_drop = on_drop
        self.on_error = on_error
        self.fsync = bool(fsync)
        self.rescan_interval = float(rescan_interval)
        self._clock = clock
        self._closed = False
        self._fresh_state()
        _live.add(self)

    def _fresh_state(self, *, skip: Iterable[str] = ()) -> None:
        self._lock = threading.RLock()
        self._pid: Optional[int] = None  # set by open(): the process the files belong to
        self._held = HeldFiles(self, skip=skip)  # reads directory, max_bytes, fsync at each use
        self._next_scan = float("-inf")  # time.monotonic() of the next look for orphans
        self._drops: List[Drop] = []  # reported after the lock is released

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._own is not None else "unopened")
        count, size = self.pending()
        return (
            f"<Spool {state} {self.directory!r} pending={count} bytes={size} "
            f"orphans={len(self._held.orphans)}>"
        )

    @property
    def _own(self) -> Optional[SpoolFile]:
        """This process's own file, for tests and benchmarks that look at it on disk."""
        return self._held.own

    # ------------------------------------------------------------------ public

    def open(self) -> None:
        """Create the directory and this process's file, and claim orphans; idempotent."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
        finally:
            self._run_callbacks()

    def append(self, parts: Sequence[bytes]) -> List[SpoolKey]:
        """Store ``parts`` in one committed transaction; one key per part, in order.

        Once it returns, the events survive the process being killed (with
        ``fsync``, a power loss too). Raises ``SpoolError`` when nothing was stored.
        """
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
                    if not is_corrupt(exc):
                        raise _write_error(own, exc, len(parts)) from exc
                    own = self._held.replace_own(exc)
                    try:
                        return self._insert(own, parts)
                    except sqlite3.Error as again:
                        raise _write_error(own, again, len(parts)) from again
        finally:
            self._run_callbacks()

    def oldest(self, limit: int, max_bytes: int) -> List[Tuple[SpoolKey, bytes]]:
        """The oldest stored events (orphans first), within ``limit`` and ``max_bytes``.

        ``max_bytes`` counts each event's length plus one (the comma that joins
        them in a batch); at least one event when any is stored. A pure read.
        """
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
                if len(self._held.orphans) < MAX_CLAIMED and time.monotonic() >= self._next_scan:
                    self._claim()
                self._enforce(incoming=0)
                out: List[Tuple[SpoolKey, bytes]] = []
                budget = max_bytes
                for file in self._held.files():
                    if len(out) >= limit:
                        break
                    if file.count == 0:
                        continue
                    try:
                        rows = file.read(limit - len(out))
                    except sqlite3.Error as exc:
                        self._held.failed(file, exc)
                        continue
                    for row_id, data in rows:
                        cost = len(data) + 1
                        if out and cost > budget:
                            return out
                        out.append(((file.ident, int(row_id)), bytes(data)))
                        budget -= cost
                return out
        finally:
            self._run_callbacks()

    def remove(self, keys: Iterable[SpoolKey]) -> List[SpoolKey]:
        """Delete the events of ``keys``; the keys deleted (unknown keys are ignored).

        A key left out was already removed, or dropped by a bound while its
        batch was in flight (and reported through ``on_drop`` then).
        """
        self._check_fork()
        try:
            with self._lock:
                if self._held.own is None:
                    return []
                wanted: Dict[int, List[int]] = {}
                for ident, row_id in keys:
                    wanted.setdefault(ident, []).append(row_id)
                removed: List[SpoolKey] = []
                for ident, row_ids in wanted.items():
                    file = self._held.get(ident)
                    if file is None:
                        continue
                    try:
                        removed.extend((ident, row_id) for row_id in self._delete(file, row_ids))
                    except sqlite3.Error as exc:
                        self._held.failed(file, exc)
                return removed
        finally:
            self._run_callbacks()

    def pending(self) -> Tuple[int, int]:
        """(events, bytes) stored in the files this process holds; no I/O."""
        self._check_fork()
        with self._lock:
            files = self._held.files()
            return sum(f.count for f in files), sum(f.size for f in files)

    def own(self) -> Tuple[Optional[int], int]:
        """(file number of this process's own file, events stored in it); no I/O.

        A key whose first element is that number names an event this spool
        appended; the others came from orphans. The number changes when a
        corrupt own file is replaced (its events are then reported lost).
        """
        self._check_fork()
        with self._lock:
            own = self._held.own
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
                    own.checkpoint()
                except sqlite3.Error as exc:
                    raise SpoolError(
                        f"could not sync the spool file {own.path}: {exc}", path=own.path
                    ) from exc
        finally:
            self._run_callbacks()

    def claim_orphans(self) -> int:
        """Look for orphaned files now (``oldest`` also does every ``rescan_interval``)."""
        self._check_fork()
        try:
            with self._lock:
                self._ensure_open()
                return self._claim()
        finally:
            self._run_callbacks()

    def close(self) -> None:
        """Delete this process's file if empty (else leave it), release every lock."""
        self._check_fork()
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                self._held.release_all()
        finally:
            self._run_callbacks()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's files without touching them.

        A no-op in the process that opened the spool, and when already done.
        """
        if self._pid is None or self._pid == os.getpid():
            return
        # The parent's files stay the parent's, even after it dies: this process's
        # copies of their connections were never closed, so SQLite here would
        # believe it still holds their locks.
        skip = self._held.forget(_abandoned)
        self._fresh_state(skip=skip)

    # ------------------------------------------------------------------ inside the lock

    def _check_fork(self) -> None:
        self.reset_after_fork()

    def _ensure_open(self) -> SpoolFile:
        if self._closed:
            raise SpoolError("the spool is closed", path=self.directory)
        if self._held.own is not None:
            return self._held.own
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
        _warn_if_shared(self.directory)
        self._pid = os.getpid()
        own = self._held.open_own()
        self._claim()
        return own

    def _claim(self) -> int:
        self._next_scan = time.monotonic() + self.rescan_interval
        return self._held.claim()

    def _enforce(self, *, incoming: int) -> None:
        """Apply ``max_age``, then make room for ``incoming`` bytes; oldest first."""
        self._drops.extend(
            enforce(
                self._held,
                max_bytes=self.max_bytes,
                max_age=self.max_age,
                clock=self._clock,
                incoming=incoming,
            )
        )

    def _insert(self, own: SpoolFile, parts: Sequence[bytes]) -> List[SpoolKey]:
        first, dropped = own.insert(parts, now=self._clock(), max_bytes=self.max_bytes)
        if dropped:
            self._drops.append(bytes_drop(dropped, self.max_bytes))
        return [(own.ident, first + i) for i in range(len(parts))]

    def _delete(self, file: SpoolFile, row_ids: List[int]) -> List[int]:
        """Delete the rows of ``row_ids`` still there; their ids."""
        removed = file.delete(row_ids)
        if file.count == 0:
            if file.own:
                file.shrink()
            else:
                self._held.release(file, delete=True)
                self._next_scan = float("-inf")  # more may be waiting: look at the next read
        return removed

    def _run_callbacks(self) -> None:
        """Report drops and errors outside the lock: the callbacks may call the spool."""
        with self._lock:
            drops, self._drops = self._drops, []
            errors = self._held.take_errors()
        for events, reason in drops:
            if self.on_drop is None:
                _report.warn(f"spool-drop-{id(self)}", f"spool: {reason}")
            _call(self.on_drop, events, reason)
        for error in errors:
            if self.on_error is None:
                _report.warn(f"spool-error-{id(self)}", f"spool: {error.reason}")
            else:
                try:
                    self.on_error(error)
                except Exception as exc:
                    _report.warn(f"spool-callback-{id(self)}", f"on_error raised {exc!r}")


_READ_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH
_WRITTEN_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _warn_if_shared(directory: str) -> None:
    """Warn, once per directory and process, when other users may read or write ``directory``.

    Its files are 0o600 whatever the umask, but others could still list them
    (and see how much is waiting), or delete and replace them.
    """
    try:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
    except OSError:
        return  # creating the files will say what is wrong
    risks = []
    if mode & _READ_BY_OTHERS:
        risks.append("list its files (how much is waiting)")
    if mode & _WRITTEN_BY_OTHERS:
        risks.append("delete or replace the files")
    if not risks:
        return
    _report.warn(
        f"spool-folder-{os.path.realpath(directory)}",
        f"spool: spool_path {directory!r} is open to other users (mode {mode:04o}): they can "
        f"{' and '.join(risks)}; the files themselves are 0600. Make the folder private "
        f"(chmod 700)",
        interval=float("inf"),
    )


def _call(callback: Optional[DropCallback], count: int, reason: str) -> None:
    if callback is None:
        return
    try:
        callback(count, reason)
    except Exception as exc:
        _report.warn(f"spool-callback-{id(callback)}", f"on_drop raised {exc!r}")


def _write_error(own: SpoolFile, exc: sqlite3.Error, count: int) -> SpoolError:
    return SpoolError(
        f"could not write {count} events to the spool file {own.path}: {exc}",
        count=count,
        path=own.path,
    )


def _after_fork_in_child() -> None:
    # At once, not at the next call: until then the child's copies of the lock
    # descriptors would keep the parent's files locked after the parent died.
    for spool in list(_live):
        spool._check_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
