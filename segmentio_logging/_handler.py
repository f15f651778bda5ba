"""``SegmentHandler``: log records that carry a user become Segment messages.

A plain ``logging.Handler`` that owns its queue and worker, so that
``dictConfig`` on every Python version builds it from keyword options (3.12
and later treat ``QueueHandler`` subclasses specially and reject those).
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
import weakref
from typing import Any, Dict, List, Optional, Union

from ._assemble import make_pipeline
from ._capture import RecordMapper
from ._context import bound_identity
from ._errors import InvalidMessage
from ._json import safe_str
from ._lifecycle import before_close_all, busy_threads, marked_busy, on_fork_in_child
from ._options import resolve_options

# Records from these loggers (and their children) are the handler's own traffic: never events.
OWN_LOGGERS = frozenset({"urllib3", "segmentio_logging"})


_own_names: Dict[str, bool] = {}


def _learn_own(name: str) -> bool:
    """Whether logger ``name`` is one of OWN_LOGGERS, remembered in ``_own_names``."""
    own = name.partition(".")[0] in OWN_LOGGERS
    if len(_own_names) < 10_000:  # logger names are few; a bound all the same
        _own_names[name] = own
    return own


class SegmentHandler(logging.Handler):
    """Sends log records that carry a ``user_id`` or ``anonymous_id`` to Segment.

    ``logger.info("Played a Song", extra={"user_id": "u1", "properties": {...}})``
    becomes a ``track`` call; every reserved ``extra`` key is in docs/extra.md,
    every option in docs/options.md. Records without an id are skipped and counted.
    """

    def __init__(
        self,
        write_key: Optional[str] = None,
        *,
        host: Optional[str] = None,
        level: Union[int, str] = logging.NOTSET,
        **options: Any,
    ) -> None:
        # Everything that can raise (the options, the route's CA bundle and client
        # certificate, the spool) runs before Handler.__init__ registers the handler
        # with logging: a half-built handler in logging's list breaks dictConfig and
        # logging.shutdown at exit.
        resolved = resolve_options({"write_key": write_key, "host": host, **options})
        self._mapper = mapper = RecordMapper(resolved.field_names, resolved.capture_extra)
        pipeline = make_pipeline(resolved, mapper.encode, self._describe)
        super().__init__(level)
        self.options = resolved
        self._pipeline = pipeline
        # Bound once: emit runs on the caller's thread.
        self._capture = mapper.capture
        self._put = pipeline.put
        self._count_lock = threading.Lock()
        self._skipped = 0
        self._ignored = 0
        _handlers.add(self)

    def _after_fork_in_child(self) -> None:
        # The pipeline starts afresh in the child (see _pipeline); so do these counters.
        self._count_lock = threading.Lock()
        self._skipped = 0
        self._ignored = 0

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<SegmentHandler {self.options.host} ({level})>"

    def _describe(self, item: Any) -> Dict[str, Any]:
        """What on_failure gets of a record it will not send: its fields by name."""
        if isinstance(item, logging.LogRecord):  # it broke before it could be captured
            return {"logger": item.name, "created": item.created, "text": safe_str(item.msg)}
        return self._mapper.describe(item)

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter and emit ``record``; never raises into the application.

        Like ``Handler.handle`` without the handler lock (emit only appends to a
        deque). Records made on a thread the handler marked busy are ignored:
        the worker's (urllib3 logs its requests) and those logged by user code
        the handler runs (a filter, an object's ``__str__``), which would recurse.
        """
        thread = record.thread
        if (thread if thread is not None else threading.get_ident()) in busy_threads:
            self._count_ignored()
            return False
        result: Any = True
        if self.filters:
            try:
                with marked_busy():
                    result = self.filter(record)
            except Exception as exc:
                self._reject(record, exc, "a filter raised")
                return False
            if not result:
                return result
            if isinstance(result, logging.LogRecord):
                record = result
        self._emit(record)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        thread = record.thread
        if (thread if thread is not None else threading.get_ident()) in busy_threads:
            self._count_ignored()
            return
        self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        try:
            own = _own_names.get(record.name)
            if own or (own is None and _learn_own(record.name)):
                self._count_ignored()
                return
            captured = self._capture(record, bound_identity())
            if captured is None:
                with self._count_lock:
                    self._skipped += 1
            else:
                self._put(captured)
        except Exception as exc:
            self._reject(record, exc, "could not read the record")

    def _reject(self, record: Any, exc: Exception, what: str) -> None:
        """Count and report a record that broke on the caller's side, then ``handleError``."""
        try:
            error = InvalidMessage(f"{what}: {type(exc).__name__}: {safe_str(exc)}")
            self._pipeline.reject(record, error, warn=False)  # handleError says it below
        except Exception:  # pragma: no cover - reporting must not raise into the app either
            pass
        self.handleError(record)

    def _count_ignored(self) -> None:
        with self._count_lock:
            self._ignored += 1

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Block until every record emitted so far is delivered or failed; False at the timeout."""
        return self._pipeline.flush(timeout)

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Block until every record emitted so far is in the disk spool (or settled).

        False at the timeout. Without ``spool_path`` it is :meth:`flush`.
        """
        return self._pipeline.persist(timeout)

    def close(self) -> None:
        """Deliver what can be delivered within ``shutdown_timeout``. Safe to call twice."""
        try:
            self._pipeline.close()
        finally:
            super().close()

    def stats(self) -> Dict[str, int]:
        """Counters: enqueued, delivered, failed, dropped, pending; skipped (no id) and ignored."""
        counts = self._pipeline.stats()
        with self._count_lock:
            counts["skipped"] = self._skipped
            counts["ignored"] = self._ignored
        return counts


class SegmentQueueListener(logging.handlers.QueueListener):
    """A ``QueueListener`` for the 3.12+ ``dictConfig`` ``listener:`` key.

    ``dictConfig`` builds the listener but never starts it; this one starts
    itself, stops at exit, and always respects each handler's level:
    ``dictConfig`` passes ``respect_handler_level=False`` unless the config
    says otherwise, which would hand DEBUG records to a handler set to INFO.
    The argument is accepted for compatibility and ignored.
    """

    def __init__(
        self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = True
    ) -> None:
        super().__init__(queue, *handlers, respect_handler_level=True)
        self._started = False
        self.start()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        super().start()
        _listeners.append(self)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        super().stop()
        if self in _listeners:
            _listeners.remove(self)


_listeners: List[SegmentQueueListener] = []
_handlers: weakref.WeakSet[SegmentHandler] = weakref.WeakSet()


def _stop_listeners() -> None:
    """At exit, before the handlers close: hand every queued record to its handlers."""
    while _listeners:
        listener = _listeners.pop()
        try:
            listener.stop()
        except Exception:  # pragma: no cover - exit must go on
            pass


def _after_fork_in_child() -> None:
    """The child has no listener threads and may have inherited held locks: start afresh."""
    for handler in list(_handlers):
        handler._after_fork_in_child()
    for listener in list(_listeners):
        # The parent's listener thread was waiting on the queue: its waiter is still
        # registered and would swallow the next notify. Nobody waits in the child yet.
        for name in ("not_empty", "not_full", "all_tasks_done"):
            waiters = getattr(getattr(listener.queue, name, None), "_waiters", None)
            if waiters is not None:
                waiters.clear()
        listener._thread = None
        listener._started = False
        _listeners.remove(listener)
        try:
            listener.start()
        except Exception:  # pragma: no cover - a child must not die of its logging
            pass


before_close_all(_stop_listeners)  # at exit and at a multiprocessing child's end
on_fork_in_child(_after_fork_in_child)
