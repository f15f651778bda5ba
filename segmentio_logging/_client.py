"""``Client``, and the original client's module-level calls (``init``, ``track``...)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._errors import InvalidMessage, SegmentError
from ._message import build_message, encode
from ._options import resolve_options
from ._outcomes import Ledger
from ._pipeline import make_pipeline
from ._snapshot import MUTABLE_FIELDS, snapshot

Callback = Callable[[Any, Any], Any]


def _anonymous(session_id: Any, anonymous_id: Any) -> Any:
    """``session_id`` is the original client's name for ``anonymous_id``: one value, two names."""
    if anonymous_id is None:
        return session_id
    if session_id is not None and session_id != anonymous_id:
        raise InvalidMessage(
            f"session_id and anonymous_id are two names for the same field and were given "
            f"different values ({session_id!r} and {anonymous_id!r}); pass one of them"
        )
    return anonymous_id


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
            anonymous_id=_anonymous(session_id, anonymous_id),
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
            anonymous_id=_anonymous(session_id, anonymous_id),
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
            anonymous_id=_anonymous(session_id, anonymous_id),
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
            anonymous_id=_anonymous(session_id, anonymous_id),
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
            anonymous_id=_anonymous(session_id, anonymous_id),
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

        Raises ``InvalidMessage`` for a call Segment would reject; a message that
        cannot be encoded (over 32 KB) is reported to ``on_failure``, not queued.
        """
        # Before the message gets its messageId: in a child forked without Python's
        # fork hooks, this is where the ids (and the pipeline) start afresh.
        self._pipeline.check_fork()
        for name in MUTABLE_FIELDS:  # what the caller changes afterwards is not sent
            if fields.get(name) is not None:
                fields[name] = snapshot(fields[name])
        message = build_message(kind, **fields)  # raises InvalidMessage (a ValueError)
        try:
            data = encode(message)
        except SegmentError as error:
            self._pipeline.reject(message, error)
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
        """Counters: enqueued, delivered, failed, dropped, pending, batches, retries."""
        return self._pipeline.stats()


# ---------------------------------------------------------------------- module level

_default: Optional[Client] = None
_default_lock = threading.Lock()
_callbacks: Dict[str, Optional[Callback]] = {}


def init(write_key: Optional[str] = None, **options: Any) -> Client:
    """Create (or replace) the default client that the module-level calls use."""
    global _default
    client = Client(write_key, **options)
    with _default_lock:
        old, _default = _default, client
        for name, fn in _callbacks.items():
            if options.get(name) is None:
                getattr(client, name)(fn)
    if old is not None:
        old.shutdown()
    return client


def default_client() -> Client:
    """The client of the module-level calls; without ``init``, made from ``SEGMENT_*`` variables."""
    global _default
    client = _default
    if client is not None:
        return client
    with _default_lock:
        if _default is None:
            try:
                _default = Client()
            except ValueError as exc:
                raise ValueError(f"call segmentio_logging.init(write_key) first: {exc}") from None
            for name, fn in _callbacks.items():
                getattr(_default, name)(fn)
        return _default


# The module-level calls repeat the Client signatures so that type checkers and
# editors check them; each only forwards to the default client.


def identify(
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
    return default_client().identify(
        session_id,
        user_id,
        traits,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
        anonymous_id=anonymous_id,
    )


def track(
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
    return default_client().track(
        session_id,
        user_id,
        event,
        properties,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
        anonymous_id=anonymous_id,
    )


def group(
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
    return default_client().group(
        session_id,
        user_id,
        group_id,
        traits,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
        anonymous_id=anonymous_id,
    )


def alias(
    previous_id: Any = None,
    user_id: Any = None,
    *,
    timestamp: Any = None,
    context: Optional[Dict[str, Any]] = None,
    integrations: Optional[Dict[str, Any]] = None,
    message_id: Optional[str] = None,
) -> Optional[str]:
    return default_client().alias(
        previous_id,
        user_id,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
    )


def page(
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
    return default_client().page(
        session_id,
        user_id,
        category,
        name,
        properties,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
        anonymous_id=anonymous_id,
    )


def screen(
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
    return default_client().screen(
        session_id,
        user_id,
        category,
        name,
        properties,
        timestamp=timestamp,
        context=context,
        integrations=integrations,
        message_id=message_id,
        anonymous_id=anonymous_id,
    )


for _method in (identify, track, group, alias, page, screen):
    _method.__doc__ = getattr(Client, _method.__name__).__doc__


def on_success(fn: Optional[Callback]) -> None:
    """Set the default client's success callback, ``fn(data, response)``."""
    _set_callback("on_success", fn)


def on_failure(fn: Optional[Callback]) -> None:
    """Set the default client's failure callback, ``fn(data, error)``."""
    _set_callback("on_failure", fn)


def _set_callback(name: str, fn: Optional[Callback]) -> None:
    with _default_lock:
        _callbacks[name] = fn
        client = _default
    if client is not None:
        getattr(client, name)(fn)


def flush(timeout: Optional[float] = None) -> bool:
    """Flush the default client; True when nothing is left pending (or there is no client)."""
    client = _default
    return True if client is None else client.flush(timeout)


def persist(timeout: Optional[float] = None) -> bool:
    """The default client's :meth:`Client.persist` (True when there is no client)."""
    client = _default
    return True if client is None else client.persist(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """Flush and stop the default client and forget its callbacks; the next call starts afresh."""
    global _default
    with _default_lock:
        client, _default = _default, None
        _callbacks.clear()
    return True if client is None else client.shutdown(timeout)


def stats() -> Dict[str, int]:
    """The default client's counters (zeros before the first call)."""
    client = _default
    if client is None:
        return Ledger().counts(queued=0)  # every counter, at zero
    return client.stats()


__all__: List[str] = [
    "Client",
    "alias",
    "default_client",
    "flush",
    "group",
    "identify",
    "init",
    "on_failure",
    "on_success",
    "page",
    "persist",
    "screen",
    "shutdown",
    "stats",
    "track",
]
