"""The original client's module-level calls (``init``, ``track``, ``flush``...), on a
default :class:`~segmentio_logging._client.Client`."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from ._client import Client
from ._outcomes import Callback, Ledger

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
