"""The spool called one call at a time, with what it drops or loses counted.

The spool says how many events a bound (``spool_max_bytes``, ``spool_max_age``)
or a corrupt file took, not which: this process's own are those missing from
its own file beyond what was removed after delivery, and the rest came from
orphans. Its lock is also held across a fork, so that no thread of ours is then
inside SQLite, whose internal mutexes a child would otherwise inherit locked.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, List, Optional, Sequence, TypeVar

from .._errors import SpoolError
from ._store import Spool, SpoolKey

_T = TypeVar("_T")
# Told after each call: the losses the spool reported, and how many of them were ours.
OnLosses = Callable[[List[SpoolError], int], None]

_live: weakref.WeakSet[CountedSpool] = weakref.WeakSet()


class CountedSpool:
    """A :class:`Spool` whose calls run one at a time, each followed by its losses."""

    def __init__(self, spool: Spool, on_losses: OnLosses) -> None:
        self.spool = spool
        self._on_losses = on_losses
        spool.on_drop = self._dropped
        spool.on_error = self._error
        self._fresh_state()
        _live.add(self)

    def _fresh_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one spool call and its bookkeeping at a time
        self._closed = False
        self.own_on_disk = 0  # own events in the spool, under self._lock
        self._losses: List[SpoolError] = []  # reported by the spool during a call

    def do(self, call: Callable[[Spool], _T], *, reconcile: bool = True) -> _T:
        """Run ``call(spool)`` alone, then count and report what the spool dropped or lost."""
        spool = self.spool
        lost_own = 0
        losses: List[SpoolError] = []
        try:
            with self._lock:
                try:
                    return call(spool)
                finally:
                    losses, self._losses = self._losses, []
                    if reconcile:
                        _, stored = spool.own()
                        lost_own = max(self.own_on_disk - stored, 0)
                        self.own_on_disk = stored
        finally:
            if losses or lost_own:
                self._on_losses(losses, lost_own)

    def _dropped(self, count: int, reason: str) -> None:
        """The spool's ``on_drop``: runs inside a :meth:`do` call."""
        self._losses.append(SpoolError(reason, count=count, path=self.spool.directory))

    def _error(self, error: SpoolError) -> None:
        """The spool's ``on_error``: runs inside a :meth:`do` call."""
        self._losses.append(error)

    def append(self, parts: List[bytes]) -> int:
        """Store ``parts`` as this process's events; how many were stored."""

        def append(spool: Spool) -> int:
            keys = spool.append(parts)
            self.own_on_disk += len(keys)  # a bound may have dropped some: do() counts them
            return len(keys)

        return self.do(append)

    def remove(self, keys: Sequence[SpoolKey], own: Optional[int]) -> List[SpoolKey]:
        """Remove delivered (or refused) rows; the keys removed. ``own``: our file's id."""

        def remove(spool: Spool) -> List[SpoolKey]:
            removed = spool.remove(keys)
            self.own_on_disk -= sum(1 for key in removed if key[0] == own)
            return removed

        return self.do(remove)

    def close(self) -> Optional[int]:
        """Release the spool once: how many events it still holds (None when closed before)."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True

        def close(spool: Spool) -> int:
            left = spool.pending()[0]
            spool.close()
            return left

        return self.do(close, reconcile=False)

    def after_fork_in_child(self) -> None:
        """A file of its own: the parent's stay the parent's (the spool's fork hook has
        usually done this already; it is idempotent)."""
        if self._pid == os.getpid():
            return
        self._fresh_state()
        self.spool.reset_after_fork()


# Spool locks taken before a fork (see the module docstring).
_held_at_fork: List[threading.Lock] = []
FORK_WAIT = 2.0  # seconds a fork waits for a spool call in progress, at most


def _before_fork() -> None:
    pid = os.getpid()
    for counted in list(_live):
        if counted._pid == pid:
            lock = counted._lock
            if lock.acquire(timeout=FORK_WAIT):
                _held_at_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_at_fork.clear()  # the child's spools get new locks


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
