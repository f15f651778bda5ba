"""``SegmentHandler``: log records that carry a user become Segment messages.

A plain ``logging.Handler`` that owns its queue and worker, so that
``dictConfig`` on every Python version builds it from keyword options (3.12
and later treat ``QueueHandler`` subclasses specially and reject those).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import threading
from typing import Any, Dict, List, Optional, Tuple, Union

from ._client import make_pipeline
from ._message import RecordMapper, encode
from ._options import resolve_options
from ._worker import guard

# Records from these loggers are the handler's own traffic: never events.
OWN_LOGGERS = ("urllib3", "segmentio_logging")


class SegmentHandler(logging.Handler):
    """Sends log records that carry a ``user_id`` or ``anonymous_id`` to Segment.

    ``logger.info("Played a Song", extra={"user_id": "u1", "properties": {...}})``
    becomes a ``track`` call; see the README for every reserved ``extra`` key
    and every option. Records without an id are skipped and counted.
    """

    def __init__(
        self,
        write_key: Optional[str] = None,
        *,
        host: Optional[str] = None,
        level: Union[int, str] = logging.NOTSET,
        **options: Any,
    ) -> None:
        super().__init__(level)
        self.options = resolve_options({"write_key": write_key, "host": host, **options})
        self._mapper = RecordMapper(self.options.field_names, self.options.capture_extra)
        self._pipeline = make_pipeline(self.options, self._prepare)
        self._count_lock = threading.Lock()
        self._skipped = 0
        self._ignored = 0

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<SegmentHandler {self.options.host} ({level})>"

    def _prepare(self, captured: Dict[str, Any]) -> Tuple[Dict[str, Any], bytes]:
        message = self._mapper.build(captured)
        return message, encode(message)

    def handle(self, record: logging.LogRecord) -> Any:
        # Like Handler.handle, without the handler lock: emit only appends to a deque.
        result = self.filter(record)
        if result:
            if isinstance(result, logging.LogRecord):
                record = result
            self.emit(record)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(guard, "active", False):
            return  # the worker's own records, or a record logged from inside emit
        guard.active = True
        try:
            captured = self._mapper.capture(record)
            if captured is None:
                with self._count_lock:
                    self._skipped += 1
            elif record.name.startswith(OWN_LOGGERS):
                with self._count_lock:
                    self._ignored += 1
            else:
                self._pipeline.put(captured)
        except Exception:
            self.handleError(record)
        finally:
            guard.active = False

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Block until every record emitted so far is delivered or failed; False at the timeout."""
        return self._pipeline.flush(timeout)

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
    itself, stops at exit, and respects each handler's level.
    """

    def __init__(
        self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = True
    ) -> None:
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
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


def _stop_listeners() -> None:
    """At exit, before the handlers close: hand every queued record to its handlers."""
    while _listeners:
        listener = _listeners.pop()
        try:
            listener.stop()
        except Exception:  # pragma: no cover - exit must go on
            pass


atexit.register(_stop_listeners)
