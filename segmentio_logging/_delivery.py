"""Where a pipeline's batches go: the interface between the two, and the in-memory delivery.

A :class:`~segmentio_logging._pipeline.Pipeline` holds one :class:`Delivery`
(composition, as a batch processor holds its exporter): :class:`MemoryDelivery`
by default, ``segmentio_logging._spool.SpoolDelivery`` with ``spool_path``. A
delivery sees its pipeline only as a :class:`Host`: the few public methods the
pipeline offers to it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol

from ._lifecycle import end_of
from ._outcomes import Callbacks, Ledger
from ._transport import Deadline, Outcome, Transport


class Host(Protocol):
    """What a delivery may use of its pipeline."""

    transport: Transport
    ledger: Ledger
    callbacks: Callbacks
    deadline: Deadline
    serial: int
    batch_size: int
    flush_interval: float
    max_bytes: int
    sync_mode: bool
    closed: bool
    inline: bool

    def start(self) -> None: ...
    def wake(self) -> None: ...
    def worker_alive(self) -> bool: ...
    def take(self, limit: Optional[int] = None) -> List[Any]: ...
    def drain(self) -> None: ...
    def encode_all(self, items: List[Any]) -> Batch: ...
    def send_cut(self, messages: List[Optional[Dict[str, Any]]], parts: List[bytes]) -> None: ...
    def deliver(self, parts: List[bytes]) -> List[Outcome]: ...
    def goal(self) -> int: ...
    def wait_settled(self, end: float, *, gave_up: Optional[Callable[[], bool]] = None) -> bool: ...
    def wait(
        self,
        done: Callable[[], bool],
        end: float,
        *,
        probe: Optional[Callable[[], object]] = None,
        gave_up: Optional[Callable[[], bool]] = None,
    ) -> bool: ...


class Batch(NamedTuple):
    """Items encoded on the worker: messages and bytes side by side; how many failed to
    encode (dropped, reported) and how many ``before_send`` filtered out."""

    messages: List[Optional[Dict[str, Any]]]
    parts: List[bytes]
    dropped: int
    filtered: int


class Delivery(Protocol):
    """Where a pipeline's batches go (composition: the pipeline holds one).

    ``attach`` runs once at the end of the pipeline's construction; ``begin``,
    ``work`` (each time the worker wakes) and ``end`` (closed, queue empty) on the
    worker; ``flush``, ``persist`` and ``stats`` on the caller; ``closing`` in
    ``begin_close``; ``release`` and ``holds_nothing`` (under the pipeline's lock)
    in ``wait_closed``; ``after_fork_in_child`` after the pipeline started afresh.
    """

    name: str

    def attach(self, pipeline: Host) -> None: ...
    def begin(self) -> None: ...
    def work(self) -> None: ...
    def end(self) -> None: ...
    def flush(self, timeout: Optional[float]) -> bool: ...
    def persist(self, timeout: Optional[float]) -> bool: ...
    def closing(self) -> None: ...
    def release(self) -> None: ...
    def holds_nothing(self) -> bool: ...
    def after_fork_in_child(self) -> None: ...
    def stats(self) -> Dict[str, int]: ...


def outage_since_now(transport: Transport) -> Callable[[], bool]:
    """Whether a request failed for a retryable reason since this call: what ``flush()``
    without a timeout gives up on (the events stay queued, retried as long as it takes)."""
    backoff = transport.backoff
    seen = backoff.outages
    return lambda: backoff.outages > seen


class MemoryDelivery:
    """Batches go from the queue to the transport; nothing is kept anywhere else."""

    name = "memory"

    def __init__(self) -> None:
        self._host: Optional[Host] = None

    @property
    def host(self) -> Host:
        assert self._host is not None, "attach() first"
        return self._host

    def attach(self, pipeline: Host) -> None:
        self._host = pipeline

    def begin(self) -> None:
        pass

    def work(self) -> None:
        self.host.drain()

    def end(self) -> None:
        """Close idle sockets (also when close() handed the end to the worker, as under
        dictConfig)."""
        self.host.transport.close()

    def flush(self, timeout: Optional[float]) -> bool:
        """Wait until what was queued is settled; without a timeout, not through an outage."""
        host = self.host
        gave_up = None if timeout is not None else outage_since_now(host.transport)
        return host.wait_settled(end_of(timeout), gave_up=gave_up)

    def persist(self, timeout: Optional[float]) -> bool:
        """In memory nothing is safe before it was delivered: this is :meth:`flush`."""
        return self.flush(timeout)

    def closing(self) -> None:
        pass

    def release(self) -> None:
        pass

    def holds_nothing(self) -> bool:
        return True

    def after_fork_in_child(self) -> None:
        pass

    def stats(self) -> Dict[str, int]:
        return {}
