"""A drop-in for segment-analytics-python 2.x: ``import segmentio_logging.analytics as analytics``.

The official module settings, calls (argument order, ``(success, message)``
results) and ``Client`` keywords, on this package's pipeline. An unset (``None``)
setting falls back to its ``SEGMENT_*`` variable, then to this package's default;
one that cannot be honoured warns once (:class:`UnsupportedSettingWarning`).
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import TYPE_CHECKING, Callable, Dict, Optional, TypeVar

# This module holds the settings, the default client and the module-level calls; Client,
# the settings' translation into options and the errors each have a private module.
from ._analytics_client import Client
from ._analytics_client import Result as Result
from ._analytics_errors import APIError, ArgumentError, UnsupportedSettingWarning
from ._analytics_settings import ErrorCallback
from ._analytics_settings import Message as Message
from ._version import __version__

if TYPE_CHECKING:
    from typing_extensions import Concatenate, ParamSpec

    _P = ParamSpec("_P")

_R = TypeVar("_R")

VERSION = __version__

# ---------------------------------------------------------------------- settings
# Read when the first call builds the default client, as the official module does.

write_key: Optional[str] = None
host: Optional[str] = None
on_error: Optional[ErrorCallback] = None
debug: bool = False
log_handler: Optional[logging.Handler] = None
send: Optional[bool] = None
sync_mode: Optional[bool] = None
max_queue_size: Optional[int] = None
gzip: Optional[bool] = None
timeout: Optional[float] = None
max_retries: Optional[int] = None
upload_size: Optional[int] = None
upload_interval: Optional[float] = None
proxies: Optional[Dict[str, str]] = None
oauth_client_id: Optional[str] = None
oauth_client_key: Optional[str] = None
oauth_key_id: Optional[str] = None
oauth_auth_server: Optional[str] = None
oauth_scope: Optional[str] = None

_SETTINGS = tuple(__annotations__)  # the names annotated so far: the settings above

default_client: Optional[Client] = None
_default_lock = threading.Lock()


# ---------------------------------------------------------------------- module level


def _default() -> Client:
    """The default client, built at the first call from the settings at that moment."""
    global default_client
    client = default_client
    if client is not None:
        return client
    with _default_lock:
        if default_client is None:
            settings = globals()
            default_client = Client(**{name: settings[name] for name in _SETTINGS})
        return default_client


def _forget(client: Client) -> Client:
    """``client``, no longer the default: the next call builds a new one."""
    global default_client
    with _default_lock:
        if default_client is client:
            default_client = None
    return client


def _on_default_client(method: Callable[Concatenate[Client, _P], _R]) -> Callable[_P, _R]:
    """The module-level form of a ``Client`` call, with its signature, on the default client."""
    name = method.__name__

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return getattr(_default(), name)(*args, **kwargs)  # type: ignore[no-any-return]

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    signature = inspect.signature(method)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    return call


identify = _on_default_client(Client.identify)
track = _on_default_client(Client.track)
group = _on_default_client(Client.group)
alias = _on_default_client(Client.alias)
page = _on_default_client(Client.page)
screen = _on_default_client(Client.screen)


def flush(timeout: Optional[float] = None) -> bool:
    """Block until everything queued is delivered or failed; False at the timeout."""
    return _default().flush(timeout)


def join() -> bool:
    """Stop the default client after delivering what it holds; the next call builds anew."""
    return _forget(_default()).join()


def shutdown(timeout: Optional[float] = None) -> bool:
    """Flush (within ``timeout``; None waits) and stop the default client; the next call
    builds a new one."""
    return _forget(_default()).shutdown(timeout)


__all__ = [
    "VERSION",
    "APIError",
    "ArgumentError",
    "Client",
    "UnsupportedSettingWarning",
    "alias",
    "flush",
    "group",
    "identify",
    "join",
    "page",
    "screen",
    "shutdown",
    "track",
]
