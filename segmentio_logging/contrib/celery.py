"""Celery: the identity bound when a task is sent is bound while it runs, and worker
processes deliver what they logged before they exit.

One call, once per process (a second call changes nothing), where the app is made::

    import segmentio_logging.contrib.celery

    segmentio_logging.contrib.celery.setup()

What it connects (Celery's signals are process-wide, so it needs no app):

- ``before_task_publish``: the identity bound in the sender's context
  (:func:`segmentio_logging.bind`, :func:`segmentio_logging.identified`) goes in
  the task message's headers, under :data:`HEADER`. ``delay``, ``apply_async``,
  ``send_task``, canvas and ``retry`` all publish through it; tasks a worker
  sends (a chain's next step, a retry) carry the identity bound there, which is
  the running task's.
- ``task_prerun`` / ``task_postrun``: the worker binds that identity while the
  task runs and unbinds it afterwards, also when the task raised.
- ``worker_process_shutdown``: a prefork pool process ends with ``os._exit``,
  which skips ``atexit``; every pipeline of the process is closed first (each
  within its ``shutdown_timeout``), so what it queued is delivered.
- ``worker_shutdown``: the worker's main process (which runs the tasks with the
  solo and threads pools) delivers what is queued, within ``shutdown_timeout``,
  and keeps its pipelines open: ``atexit`` closes them, and a worker started
  inside a test process leaves that process's handlers usable.

While a task runs its identity is bound, also for what Celery itself logs there
("Task ... succeeded", a retry, a failure): :class:`CeleryRecordsFilter` keeps
those records (loggers ``celery``, ``kombu``, ``amqp``, ``billiard``) from
becoming events.

``setup(handler={...})`` also adds a :class:`~segmentio_logging.SegmentHandler`
with those options, and that filter, to the root logger once Celery has
configured its logging (``after_setup_logger``); leave it out when the app
configures logging itself (a ``setup_logging`` receiver with ``dictConfig``, which
then lists the filter: ``{"()": "segmentio_logging.contrib.celery.CeleryRecordsFilter"}``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

from celery import signals  # type: ignore[import-untyped]

from .. import _lifecycle, _report
from .._context import bind, bound_identity, unbind
from .._handler import SegmentHandler
from .._json import error_text, to_json_safe

__all__ = ["HEADER", "CeleryRecordsFilter", "setup"]

HEADER = "segmentio_identity"
"""The task message header that carries the sender's identity (a JSON object)."""

# Celery's own loggers and those of the libraries under it: never analytics events.
CELERY_LOGGERS = frozenset({"celery", "kombu", "amqp", "billiard"})


class CeleryRecordsFilter(logging.Filter):
    """Keeps the records of Celery's own loggers (and kombu's, amqp's, billiard's) out of
    a handler: inside a task they would carry its identity and become events."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.partition(".")[0] not in CELERY_LOGGERS


# Where the token of the identity bound for a task waits for task_postrun: on the
# task's request, which Celery keeps pushed from task_prerun to task_postrun.
_TOKEN = "_segmentio_identity_token"

_setup_lock = threading.Lock()
_connected = False
_handler_options: Optional[Mapping[str, Any]] = None


def setup(*, handler: Optional[Mapping[str, Any]] = None) -> None:
    """Carry the bound identity with tasks and deliver before worker processes exit.

    :param handler: options of a :class:`~segmentio_logging.SegmentHandler` to add
        to the root logger after Celery configures logging (``{}``: all from the
        ``SEGMENT_*`` environment variables). None: the app adds its own handler.

    Safe to call more than once: the signals are connected once, and the handler
    of the first call that gives one is the only one added.
    """
    global _connected, _handler_options
    with _setup_lock:
        if handler is not None and _handler_options is None:
            _handler_options = dict(handler)
            signals.after_setup_logger.connect(_add_handler, weak=False)
        if _connected:
            return
        _connected = True
        signals.before_task_publish.connect(_put_identity, weak=False)
        signals.task_prerun.connect(_bind_identity, weak=False)
        signals.task_postrun.connect(_unbind_identity, weak=False)
        signals.worker_process_shutdown.connect(_close_at_process_exit, weak=False)
        signals.worker_shutdown.connect(_flush_at_worker_shutdown, weak=False)


def _put_identity(headers: Optional[Any] = None, **_: Any) -> None:
    """Sender side: the bound identity, as plain JSON, joins the message's headers."""
    identity = bound_identity()
    if identity and isinstance(headers, dict):
        # JSON-safe, so that a UUID user id cannot make the task's serializer fail.
        headers[HEADER] = to_json_safe(dict(identity))


def _bind_identity(task: Any = None, **_: Any) -> None:
    """Worker side, before the task: bind what its sender had bound (its valid fields)."""
    request = getattr(task, "request", None)
    sent = getattr(request, HEADER, None)
    if sent is None:
        return  # sent without an identity, or run eagerly in the sender's own context
    values, ignored = _valid_fields(sent)
    if ignored:  # a header from another producer: the task runs with what is valid in it
        _report.warn("celery-header", f"task identity header: ignored {', '.join(ignored)}")
    if not values:
        return
    try:
        token = bind(**values)
    except (TypeError, ValueError) as exc:  # pragma: no cover - the fields were checked above
        _report.warn("celery-header", f"task identity header ignored: {error_text(exc)}")
        return
    setattr(request, _TOKEN, token)


# What each field of the header may hold; a field that holds anything else is left out.
_ID_FIELDS = ("user_id", "anonymous_id")
_OBJECT_FIELDS = ("context", "integrations")


def _valid_fields(sent: Any) -> Tuple[Dict[str, Any], List[str]]:
    """The fields of header ``sent`` that can be bound, and a description of those ignored.

    Ids are strings or integers (not booleans), ``context`` and ``integrations``
    objects; fields the header does not know are left out silently (a newer sender).
    """
    if not isinstance(sent, Mapping):
        return {}, [f"the whole header (a {type(sent).__name__}, not an object)"]
    values: Dict[str, Any] = {}
    ignored: List[str] = []
    for key in (*_ID_FIELDS, *_OBJECT_FIELDS):
        value = sent.get(key)
        if value is None:
            continue
        if key in _ID_FIELDS:
            valid = isinstance(value, (str, int)) and not isinstance(value, bool)
        else:
            valid = isinstance(value, Mapping)
        if valid:
            values[key] = value
        else:
            ignored.append(f"{key} (a {type(value).__name__})")
    return values, ignored


def _unbind_identity(task: Any = None, **_: Any) -> None:
    """Worker side, after the task (returned or raised): unbind what task_prerun bound."""
    request = getattr(task, "request", None)
    token = getattr(request, _TOKEN, None)
    if token is None:
        return
    setattr(request, _TOKEN, None)
    try:
        unbind(token)
    except ValueError:  # pragma: no cover - bound in another context: nothing to undo here
        pass


def _close_at_process_exit(**_: Any) -> None:
    """A pool process is about to ``os._exit``: close every pipeline, delivering first."""
    _lifecycle.close_all()


def _flush_at_worker_shutdown(**_: Any) -> None:
    """The worker stops: deliver what is queued; the pipelines stay open for ``atexit``."""
    _lifecycle.flush_all()


def _add_handler(logger: Optional[logging.Logger] = None, **_: Any) -> None:
    """After Celery configured logging: add the Segment handler to its root logger, once."""
    target = logger if logger is not None else logging.getLogger()
    if _handler_options is None or any(isinstance(h, SegmentHandler) for h in target.handlers):
        return
    handler = SegmentHandler(**_handler_options)
    handler.addFilter(CeleryRecordsFilter())
    target.addHandler(handler)
