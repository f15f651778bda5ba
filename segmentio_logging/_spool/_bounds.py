"""The spool's bounds: ``spool_max_bytes`` and ``spool_max_age``, oldest events first.

The bounds count the files one process holds (its own and the orphans it
claimed, orphans first: they are the oldest), so ``max_bytes`` is per live
process. Every deletion is returned as a :class:`Drop` for the caller to
report. The design is in docs/spool.md.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, List, NamedTuple, Optional, Tuple

from ._claim import HeldFiles
from ._file import SpoolFile


class Drop(NamedTuple):
    """Events a bound deleted: how many, and why (for ``on_drop``)."""

    events: int
    reason: str


def checked_bounds(max_bytes: object, max_age: object) -> Tuple[int, Optional[float]]:
    """``max_bytes`` and ``max_age`` validated; ``TypeError``/``ValueError`` name the option."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"spool_max_bytes must be an int, not {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"spool_max_bytes must be at least 1, got {max_bytes}")
    if max_age is None:
        return max_bytes, None
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
        raise TypeError(f"spool_max_age must be seconds, not {type(max_age).__name__}")
    if not max_age > 0:
        raise ValueError(f"spool_max_age must be positive, got {max_age}")
    return max_bytes, float(max_age)


def bytes_drop(count: int, max_bytes: int) -> Drop:
    """The report of ``count`` events deleted to stay within ``max_bytes``."""
    reason = f"{count} oldest events deleted to stay within spool_max_bytes={max_bytes:,}"
    return Drop(count, reason)


def enforce(
    held: HeldFiles,
    *,
    max_bytes: int,
    max_age: Optional[float],
    clock: Callable[[], float],
    incoming: int,
) -> List[Drop]:
    """Apply ``max_age``, then make room for ``incoming`` bytes; oldest first.

    A file that fails on the way is handed to :meth:`HeldFiles.failed`; an
    orphan emptied by a bound is deleted.
    """
    drops: List[Drop] = []
    if max_age is not None:
        expired = _expire(held, cutoff=clock() - max_age)
        if expired:
            reason = f"{expired} events older than spool_max_age={max_age:g}s deleted"
            drops.append(Drop(expired, reason))
    total = sum(f.size for f in held.files())
    dropped = _make_room(held, excess=total + incoming - max_bytes)
    if dropped:
        drops.append(bytes_drop(dropped, max_bytes))
    return drops


def _expire(held: HeldFiles, *, cutoff: float) -> int:
    """Delete the events created before ``cutoff``; how many were deleted."""
    expired = 0
    for file in held.files():
        if file.count == 0:
            continue
        try:
            head = file.head_created()
            if head is None or head >= cutoff:
                continue
            expired += _trim(held, file, cutoff=cutoff)
        except sqlite3.Error as exc:
            held.failed(file, exc)
    return expired


def _make_room(held: HeldFiles, *, excess: int) -> int:
    """Delete the oldest events until ``excess`` bytes are freed; how many were deleted."""
    dropped = 0
    for file in held.files():
        if excess <= 0:
            break
        if file.count == 0:
            continue
        try:
            before = file.size
            dropped += _trim(held, file, need=excess)
            excess -= before - file.size
        except sqlite3.Error as exc:
            held.failed(file, exc)
    return dropped


def _trim(
    held: HeldFiles, file: SpoolFile, *, need: int = 0, cutoff: Optional[float] = None
) -> int:
    """:meth:`SpoolFile.trim`, then let go of an orphan it emptied."""
    dropped = file.trim(need=need, cutoff=cutoff)
    if file.count == 0 and not file.own:
        held.release(file, delete=True)
    return dropped
