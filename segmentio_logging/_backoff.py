"""The pipeline-wide backoff: while the receiver is down, the senders back off together.

One :class:`Backoff` per transport, shared by every request in flight. While
the receiver answers, it costs one lock-free attribute read per request. Once
a request fails for a retryable reason the pipeline is *in an outage*: every
sender waits until the backoff delay (or the ``Retry-After`` the receiver
asked for) has passed, then exactly one of them sends a probe; the others wait
for its answer. A probe that gets through ends the outage and everyone sends
again; one that fails doubles the delay (capped at ``max_backoff``, jittered).

Requests that were already in flight when the outage began fail too; they do
not double the delay again: each failure carries the *epoch* its request was
sent in, and only a failure of the current epoch counts.
"""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Callable, Optional

DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_MAX_RETRY_AFTER = 300.0


class Backoff:
    """Outage state shared by every sender of one transport.

    :param max_backoff: the longest delay between two probes, in seconds.
    :param max_retry_after: the longest pause a ``Retry-After`` may ask for.
    """

    __slots__ = (
        "_cond",
        "_failures",
        "_probing",
        "_resume_at",
        "epoch",
        "max_backoff",
        "max_retry_after",
        "outages",
    )

    def __init__(
        self,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._cond = threading.Condition(threading.Lock())
        self._failures = 0  # consecutive probes that failed; 0: the receiver answers
        self._resume_at = 0.0  # monotonic time before which nobody sends
        self._probing = False  # a probe is in flight: the others wait for its answer
        self.epoch = 0  # bumped by each counted failure
        self.outages = 0  # failures counted since the transport was made (flush watches it)

    def __repr__(self) -> str:
        state = "down" if self._failures else "up"
        return f"<Backoff {state} failures={self._failures} epoch={self.epoch}>"

    @property
    def down(self) -> bool:
        """Whether the last counted answer was a retryable failure."""
        return self._failures > 0 or self._resume_at > time.monotonic()

    def wait_turn(self, limit: Callable[[], float]) -> Optional[int]:
        """Wait until this sender may send; its epoch, or None once ``limit()`` is reached.

        Returns at once while the receiver is up. During an outage it waits for
        the end of the pause, then lets one caller through as the probe; a
        pause that would end past ``limit()`` gives up at once rather than wait
        for nothing.
        """
        if self._failures == 0 and self._resume_at == 0.0:
            return self.epoch  # the common case: no lock
        with self._cond:
            while True:
                now = time.monotonic()
                end = limit()
                if now >= end:
                    return None
                if self._failures == 0 and now >= self._resume_at:
                    return self.epoch
                if now < self._resume_at:
                    if self._resume_at > end:
                        return None
                    self._cond.wait(self._resume_at - now)
                elif self._probing:
                    self._cond.wait(end - now if math.isfinite(end) else None)
                else:
                    self._probing = True
                    return self.epoch

    def wait_resumed(self, limit: Callable[[], float]) -> bool:
        """Wait, without taking a turn, until a request may be sent (the pause is over and
        no probe is out); False once ``limit()`` is reached. For a sender that reads its
        batch from storage only when it can send it at once."""
        if self._failures == 0 and self._resume_at == 0.0:
            return True
        with self._cond:
            while True:
                now = time.monotonic()
                end = limit()
                if now >= end:
                    return False
                if now < self._resume_at:
                    self._cond.wait(min(self._resume_at, end) - now)
                elif self._probing:
                    self._cond.wait(end - now if math.isfinite(end) else None)
                else:
                    return True

    def answered(self, epoch: int) -> None:
        """The receiver answered (accepted, or refused for good): the outage is over."""
        if self._failures == 0 and self._resume_at == 0.0:
            return
        with self._cond:
            self._failures = 0
            self._resume_at = 0.0
            self._probing = False
            self._cond.notify_all()

    def release(self, epoch: int) -> None:
        """A probe ended without an answer that tells anything (it could not be made):
        let another sender probe."""
        with self._cond:
            if self._probing and epoch == self.epoch:
                self._probing = False
                self._cond.notify_all()

    def failed(self, epoch: int, base: float, retry_after: Optional[float] = None) -> float:
        """A request of ``epoch`` failed for a retryable reason; seconds until the next probe.

        ``retry_after`` (what a 429 or 503 asked for) pauses every sender that long,
        capped at ``max_retry_after``; otherwise the delay doubles from ``base`` per
        counted failure, capped at ``max_backoff``, with jitter (half to all of it)
        so that many processes behind one receiver do not probe in step.
        """
        with self._cond:
            now = time.monotonic()
            if epoch == self.epoch:  # not a request that left before the outage was known
                self.epoch += 1
                self.outages += 1
                self._failures += 1
                if retry_after is not None:
                    delay = min(max(retry_after, 0.0), self.max_retry_after)
                else:
                    ceiling = min(self.max_backoff, base * 2 ** min(self._failures - 1, 30))
                    delay = random.uniform(ceiling / 2, ceiling)
                self._resume_at = max(self._resume_at, now + delay)
                self._probing = False
                self._cond.notify_all()
            elif retry_after is not None:  # a later answer may still ask for a longer pause
                wanted = now + min(max(retry_after, 0.0), self.max_retry_after)
                self._resume_at = max(self._resume_at, wanted)
            return max(self._resume_at - now, 0.0)

    def poke(self) -> None:
        """Wake every waiting sender to look at its limit again (the deadline moved)."""
        with self._cond:
            self._cond.notify_all()
