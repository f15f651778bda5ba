"""``Client``: the original client's calls (``identify``, ``track``...) on a pipeline of its own.

The module-level calls, on a default client, are in ``_classic``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ._assemble import make_pipeline
from ._errors import InvalidMessage, SegmentError
from ._json import error_text, preview
from ._message import build_message, encode, unreadable
from ._options import resolve_options
from ._outcomes import Callback
from ._snapshot import MUTABLE_FIELDS, snapshot


def _anonymous(session_id: Any, anonymous_id: Any) -> Any:
    """``session_id`` is the original client's name for ``anonymous_id``: one value, two names."""
    if anonymous_id is None:
        return session_id
    if session_id is not None and session_id != anonymous_id:
        raise InvalidMessage(
            f"session_id and anonymous_id are two names for the same field and were given "
            f"different values ({preview(session_id)} and {preview(anonymous_id)}); "
            "pass one of them"
        )
    return anonymous_id


def _built(kind: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """The message for a call's ``fields``, its mutable ones copied first (what the caller
    changes afterwards is not sent).

    Raises :class:`InvalidMessage` and nothing else: a call Segment would reject, or
    a value that raises as it is read (a mapping whose iteration raises, a ``tzinfo``
    whose ``utcoffset()`` does), the original error as its ``__cause__``.
    """
    values = dict(fields)  # fields stay as the caller gave them, for on_failure
    try:
        if "session_id" in values:
            session_id = values.pop("session_id")
            values["anonymous_id"] = _anonymous(session_id, values.get("anonymous_id"))
        for name in MUTABLE_FIELDS:
            value = values.get(name)
            if value is not None:
                try:
                    values[name] = snapshot(value)
                except Exception as exc:
                    raise unreadable(name, exc) from exc
        return build_message(kind, **values)
    except InvalidMessage:
        raise
    except Exception as exc:  # an __eq__ or a __str__ that raises, say
        raise InvalidMessage(f"could not build the message: {error_text(exc)}") from exc


def _call_of(kind: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """What on_failure gets of a call that could not become a message: its type and the
    arguments it was given, by name."""
    return {"type": kind, **{name: value for name, value in fields.items() if value is not None}}


def _not_encoded(exc: Exception) -> InvalidMessage:
    """The error for a message the encoder could not write (it never raises: a bug)."""
    return InvalidMessage(f"could not encode the message: {error_text(exc)}")


def _message_of(item: Any) -> Any:
    """What callbacks get of a queued item: its message (items are (message, bytes))."""
    return item[0] if isinstance(item, tuple) else item


class Client:
    """A Segment client with its own queue, worker and connection pool.

    Every call validates its arguments on the caller's thread (raising
    ``ValueError`` for a call Segment would reject), builds the message, and
    queues it; delivery happens in batches on the worker thread.
    """

    def __init__(self, write_key: Optional[str] = None, **options: Any) -> None:
        self.options = resolve_options({"write_key": write_key, **options})
        self._pipeline = make_pipeline(self.options, describe=_message_of)

    def __repr__(self) -> str:
        return f"<Client host={self.options.host!r} {self._pipeline!r}>"

    # ------------------------------------------------------------------ calls

    def identify(
        self,
        session_id: Any = None,
        user_id: Any = None,
        traits: Optional[Dict[str, Any]] = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
        anonymous_id: Any = None,
    ) -> Optional[str]:
        """Tie a user to their traits. Returns the message id, or None when it was dropped."""
        return self._enqueue(
            "identify",
            user_id=user_id,
            session_id=session_id,
            anonymous_id=anonymous_id,
            traits=traits,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def track(
        self,
        session_id: Any = None,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
        anonymous_id: Any = None,
    ) -> Optional[str]:
        """Record an action a user performed."""
        return self._enqueue(
            "track",
            user_id=user_id,
            session_id=session_id,
            anonymous_id=anonymous_id,
            event=event,
            properties=properties,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def group(
        self,
        session_id: Any = None,
        user_id: Any = None,
        group_id: Any = None,
        traits: Optional[Dict[str, Any]] = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
        anonymous_id: Any = None,
    ) -> Optional[str]:
        """Associate a user with a group (a company, an account)."""
        return self._enqueue(
            "group",
            user_id=user_id,
            session_id=session_id,
            anonymous_id=anonymous_id,
            group_id=group_id,
            traits=traits,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def alias(
        self,
        previous_id: Any = None,
        user_id: Any = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
    ) -> Optional[str]:
        """Merge ``previous_id`` into ``user_id``."""
        return self._enqueue(
            "alias",
            user_id=user_id,
            previous_id=previous_id,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def page(
        self,
        session_id: Any = None,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
        anonymous_id: Any = None,
    ) -> Optional[str]:
        """Record a page view."""
        return self._enqueue(
            "page",
            user_id=user_id,
            session_id=session_id,
            anonymous_id=anonymous_id,
            category=category,
            name=name,
            properties=properties,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def screen(
        self,
        session_id: Any = None,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        *,
        timestamp: Any = None,
        context: Optional[Dict[str, Any]] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Optional[str] = None,
        anonymous_id: Any = None,
    ) -> Optional[str]:
        """Record a screen view in an app."""
        return self._enqueue(
            "screen",
            user_id=user_id,
            session_id=session_id,
            anonymous_id=anonymous_id,
            category=category,
            name=name,
            properties=properties,
            timestamp=timestamp,
            context=context,
            integrations=integrations,
            message_id=message_id,
        )

    def _enqueue(self, kind: str, **fields: Any) -> Optional[str]:
        queued, message = self._queue_message(kind, **fields)
        return message["messageId"] if queued else None

    def _queue_message(self, kind: str, **fields: Any) -> Tuple[bool, Dict[str, Any]]:
        """Build and queue one message: (whether it was queued, the message as built).

        Raises ``InvalidMessage`` (a ``ValueError``), and nothing else, for a call
        Segment would reject or a value that raises as it is read; such a call is
        also counted as dropped and reported to ``on_failure``, as a log record
        would be. A message that cannot be encoded (over 32 KB) is reported to
        ``on_failure``, not queued, and not raised.
        """
        # Before the message gets its messageId: in a child forked without Python's
        # fork hooks, this is where the ids (and the pipeline) start afresh.
        self._pipeline.check_fork()
        try:
            message = _built(kind, fields)
        except InvalidMessage as invalid:
            self._pipeline.reject(_call_of(kind, fields), invalid)
            raise
        try:
            data = encode(message)
        except Exception as exc:  # SegmentError: too large; anything else is a bug, reported
            failure = exc if isinstance(exc, SegmentError) else _not_encoded(exc)
            self._pipeline.reject(message, failure)
            return False, message
        # A right-sized copy to queue: orjson's bytes each hold a 4 KB buffer.
        item: Tuple[Dict[str, Any], bytes] = (message, b"".join((data, b"")))
        return self._pipeline.put(item), message

    # ------------------------------------------------------------------ control

    def on_success(self, fn: Optional[Callback]) -> None:
        """Call ``fn(data, response)`` for each delivered batch (``data``: its messages)."""
        self._pipeline.callbacks.on_success = fn

    def on_failure(self, fn: Optional[Callback]) -> None:
        """Call ``fn(data, error)`` for each batch or message that will not be delivered."""
        self._pipeline.callbacks.on_failure = fn

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until everything queued so far is delivered or failed; False at the timeout."""
        return self._pipeline.flush(timeout)

    def persist(self, timeout: Optional[float] = None) -> bool:
        """Block until every call so far is in the disk spool (or settled); False at the timeout.

        Without ``spool_path`` it is :meth:`flush`.
        """
        return self._pipeline.persist(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver what can be delivered within ``timeout`` (or ``shutdown_timeout``), then stop."""
        return self._pipeline.close(timeout)

    close = shutdown

    def stats(self) -> Dict[str, int]:
        """Counters: enqueued, delivered, failed, dropped, filtered, pending (so that
        ``enqueued == delivered + failed + dropped + filtered + pending``), queued,
        batches, retries; with ``spool_path`` also spooled, recovered, recovered_lost."""
        return self._pipeline.stats()


__all__ = ["Client"]
