"""A drop-in for segment-analytics-python 2.x: ``import segmentio_logging.analytics as analytics``.

The official module settings, calls (argument order, ``(success, message)``
results) and ``Client`` keywords, on this package's pipeline. An unset (``None``)
setting falls back to its ``SEGMENT_*`` variable, then to this package's default;
one that cannot be honoured warns once (:class:`UnsupportedSettingWarning`).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import numbers
import os
import reprlib
import threading
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
)
from urllib.parse import urlsplit

from ._client import Client as _PipelineClient
from ._errors import DeliveryError, InvalidMessage
from ._options import DEFAULT_HOST, env_var, resolve_options
from ._version import __version__

if TYPE_CHECKING:
    from typing_extensions import Concatenate, ParamSpec

    _P = ParamSpec("_P")

_R = TypeVar("_R")

Message = Dict[str, Any]
Result = Tuple[bool, Message]
ErrorCallback = Callable[[Exception, List[Message]], Any]

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

# The official client's logger: logging configured for it keeps working.
_log = logging.getLogger("segment")
_debug_handler: Optional[logging.Handler] = None  # debug=True without a log_handler
_default_lock = threading.Lock()
_warned: Set[str] = set()
_warned_lock = threading.Lock()

# Segment takes at most 2,500 messages per request (the cap of the batch_size option).
_MAX_UPLOAD_SIZE = 2_500
_ID_TYPES = (numbers.Number, str)
_LOCAL_NOW_WINDOW = dt.timedelta(seconds=5)

_UNSUPPORTED = {
    "oauth": "OAuth (oauth_client_id, oauth_client_key, oauth_key_id...) is not supported and "
    "is ignored: requests authenticate with the write key (HTTP Basic), which a source that "
    "requires OAuth refuses",
    "max_rate_limit_duration": "max_rate_limit_duration is ignored: retries after a 429 count "
    "against max_retries and max_total_backoff_duration like any other retry",
    "upload_size": f"upload_size is capped at {_MAX_UPLOAD_SIZE:,}, Segment's limit of messages "
    "per request",
}

# The official keywords that are this package's options of the same name and meaning.
_SAME_NAMES = frozenset(
    ("write_key", "host", "max_queue_size", "send", "gzip", "max_retries", "sync_mode", "timeout")
)
# Our option -> the official keyword that sets it (errors name the one the caller used).
_OFFICIAL_NAMES = {
    "batch_size": "upload_size",
    "max_in_flight": "thread",
    "flush_interval": "upload_interval",
    "retry_budget": "max_total_backoff_duration",
    "on_failure": "on_error",
}


class ArgumentError(InvalidMessage, AssertionError):
    """A call the official client refuses with ``AssertionError`` (or Segment would reject):
    an ``AssertionError``, as there, and an ``InvalidMessage`` (a ``ValueError``), as here."""


class APIError(DeliveryError):
    """What ``on_error`` gets for a batch the receiver refused: a ``DeliveryError`` with
    the official ``code`` and ``message`` (of the JSON error body, else "unknown" and the text)."""

    code = "unknown"
    message = ""
    response = None  # the official client's requests.Response; there is none here


class UnsupportedSettingWarning(UserWarning):
    """An official setting that this package does not honour; warned once per process."""


# ---------------------------------------------------------------------- the client


class Client:
    """A client with the official constructor and calls, on a pipeline of its own.

    ``upload_size`` sets the option ``batch_size``, ``upload_interval`` ``flush_interval``,
    ``thread`` ``max_in_flight`` (requests at once), ``max_total_backoff_duration``
    ``retry_budget``, ``proxies`` (a requests-style dict) ``proxy``; ``on_error(error, batch)``
    is called
    for what ``on_failure(data, error)`` would get. Other keyword arguments are this
    package's other options (``shutdown_timeout``, ``spool_path``...).
    """

    log = _log

    def __init__(
        self,
        write_key: Optional[str] = None,
        host: Optional[str] = None,
        debug: bool = False,
        max_queue_size: Optional[int] = None,
        send: Optional[bool] = None,
        on_error: Optional[ErrorCallback] = None,
        gzip: Optional[bool] = None,
        max_retries: Optional[int] = None,
        sync_mode: Optional[bool] = None,
        timeout: Optional[float] = None,
        proxies: Optional[Dict[str, str]] = None,
        thread: Optional[int] = None,
        upload_size: Optional[int] = None,
        upload_interval: Optional[float] = None,
        log_handler: Optional[logging.Handler] = None,
        oauth_client_id: Optional[str] = None,
        oauth_client_key: Optional[str] = None,
        oauth_key_id: Optional[str] = None,
        oauth_auth_server: Optional[str] = None,
        oauth_scope: Optional[str] = None,
        max_total_backoff_duration: Optional[float] = None,
        max_rate_limit_duration: Optional[float] = None,
        **options: Any,
    ) -> None:
        if write_key is not None and not isinstance(write_key, str):
            raise ArgumentError(f"write_key must be a string, got {reprlib.repr(write_key)}")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be a callable fn(error, batch), got {on_error!r}")
        renamed = sorted(set(options) & set(_OFFICIAL_NAMES))
        if renamed:
            raise TypeError(f"{renamed[0]} is spelled {_OFFICIAL_NAMES[renamed[0]]} here")
        oauth = (oauth_client_id, oauth_client_key, oauth_key_id, oauth_auth_server, oauth_scope)
        unsupported = {
            "oauth": any(value is not None for value in oauth),
            "max_rate_limit_duration": max_rate_limit_duration is not None,
            "upload_size": isinstance(upload_size, int) and upload_size > _MAX_UPLOAD_SIZE,
        }
        for setting in (name for name, given in unsupported.items() if given):
            _warn_once(setting, _UNSUPPORTED[setting])
        if unsupported["upload_size"]:
            upload_size = _MAX_UPLOAD_SIZE
        given = {name: value for name, value in locals().items() if name in _SAME_NAMES}
        given.update(batch_size=upload_size, flush_interval=upload_interval, max_in_flight=thread)
        given.update(retry_budget=max_total_backoff_duration, on_failure=_as_on_failure(on_error))
        given.update(proxy=_proxy_option(proxies, host))
        self._client = _pipeline_client({**given, **options})
        # The official client's attributes; as there, changing them changes nothing.
        resolved = self._client.options
        self.write_key, self.host, self.send = resolved.write_key, resolved.host, resolved.send
        self.sync_mode, self.gzip = resolved.sync_mode, resolved.gzip
        self.timeout, self.on_error = resolved.timeout, on_error
        self.debug, self.proxies = bool(debug), proxies
        _configure_log(self.debug, log_handler)

    def __repr__(self) -> str:
        return f"<analytics.Client host={self.host!r} {self._client._pipeline!r}>"

    # ------------------------------------------------------------------ calls
    # Each passes its arguments, by their official names, to _queue, which checks them.

    def identify(
        self,
        user_id: Any = None,
        traits: Optional[Dict[str, Any]] = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Tie a user to their traits: ``(queued, message)``."""
        return self._queue("identify", locals())

    def track(
        self,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Record an action a user performed: ``(queued, message)``."""
        return self._queue("track", locals())

    def alias(
        self,
        previous_id: Any = None,
        user_id: Any = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Merge ``previous_id`` into ``user_id``: ``(queued, message)``."""
        return self._queue("alias", locals())

    def group(
        self,
        user_id: Any = None,
        group_id: Any = None,
        traits: Optional[Dict[str, Any]] = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Associate a user with a group (a company, an account): ``(queued, message)``."""
        return self._queue("group", locals())

    def page(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Record a page view: ``(queued, message)``."""
        return self._queue("page", locals())

    def screen(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Dict[str, Any]] = None,
        context: Optional[Dict[str, Any]] = None,
        timestamp: Optional[dt.datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Dict[str, Any]] = None,
        message_id: Any = None,
    ) -> Result:
        """Record a screen view in an app: ``(queued, message)``."""
        return self._queue("screen", locals())

    def _queue(self, kind: str, arguments: Dict[str, Any]) -> Result:
        """Check a call's arguments as the official client does, then build and queue it."""
        fields = {name: value for name, value in arguments.items() if name != "self"}
        if kind == "alias":
            _require_id("previous_id", fields["previous_id"])
            _require_id("user_id", fields["user_id"])
        else:
            _require_id("user_id or anonymous_id", fields["user_id"] or fields["anonymous_id"])
        if kind == "group":
            _require_id("group_id", fields["group_id"])
        for name in ("traits", "properties", "context", "integrations"):
            if name in fields:  # a false value is no value, anything else must be a dict
                fields[name] = fields[name] or None
                _require(name, fields[name], (dict, type(None)), "a dict")
        if kind == "track":
            _require("event", fields["event"], str, "a string")
        for name in ("name", "category"):
            if name in fields:  # page and screen: optional, a string when given
                fields[name] = fields[name] or None
                _require(name, fields[name], (str, type(None)), "a string")
        if fields["timestamp"] is not None:
            _require("timestamp", fields["timestamp"], dt.datetime, "a datetime")
            fields["timestamp"] = _local_if_now(fields["timestamp"])
        try:
            queued, message = self._client._queue_message(kind, **fields)
        except InvalidMessage as exc:
            raise ArgumentError(exc.reason) from None
        _log.debug("%s %s: %s", "queued" if queued else "not queued", kind, message)
        return queued, message

    # ------------------------------------------------------------------ control

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until everything queued is delivered or failed; False at the timeout."""
        return self._client.flush(timeout)

    def join(self) -> bool:
        """Stop the worker: what is still queued is delivered within ``shutdown_timeout``."""
        return self._client.shutdown()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush (within ``timeout``; None waits), then stop: True when all was delivered."""
        flushed = self.flush(timeout)
        return self.join() and flushed


def _pipeline_client(given: Dict[str, Any]) -> _PipelineClient:
    """The pipeline client of ``given``; errors name the official keyword the caller used."""
    try:
        return _PipelineClient(**given)
    except (TypeError, ValueError) as exc:
        error: Exception = exc
    if isinstance(error, ValueError):
        try:
            checked = resolve_options({**given, "send": False})
        except (TypeError, ValueError) as exc:
            error = exc
        else:
            if checked.write_key is None:  # the only check that send=False lifts
                raise ArgumentError(
                    "write_key is required: set analytics.write_key, pass Client(write_key), "
                    "or set SEGMENT_WRITE_KEY (or send=False to deliver nothing)"
                ) from None
    text = str(error)
    for ours, official in _OFFICIAL_NAMES.items():
        if given.get(ours) is not None and text.startswith(ours + " "):
            text = official + text[len(ours) :]
    raise type(error)(text) from None


def _proxy_option(proxies: Any, host: Optional[str]) -> Optional[str]:
    """The ``proxy`` option that requests-style ``proxies`` give for the host, as requests
    picks: the entry for ``scheme://hostname``, the scheme, ``all://hostname``, then ``all``.

    None (the proxy variables apply) when no entry matches; an entry of None: no proxy.
    """
    if not proxies:
        return None
    if not isinstance(proxies, Mapping):
        raise TypeError(
            "proxies must be a dict such as {'https': 'http://proxy.example:3128'}, "
            f"got {type(proxies).__name__}"
        )
    text = host if host is not None else os.environ.get(env_var("host")) or DEFAULT_HOST
    target = urlsplit(text.strip() if "://" in text else "https://" + text.strip())
    scheme, name = target.scheme.lower(), (target.hostname or "")
    for key in (f"{scheme}://{name}", scheme, f"all://{name}", "all"):
        if key in proxies:
            chosen = proxies[key]
            return "" if chosen is None else chosen
    return None


def _as_on_failure(on_error: Optional[ErrorCallback]) -> Optional[Callable[[Any, Any], None]]:
    """An ``on_failure(data, error)`` that calls the official ``on_error(error, batch)``."""
    if on_error is None:
        return None
    report = on_error

    def on_failure(data: Any, error: Any) -> None:
        if type(error) is DeliveryError and error.status is not None:
            error = _api_error(error)
        report(error, data if isinstance(data, list) else [data])

    # The pipeline names a callback that raises by its __qualname__: name the user's.
    on_failure.__qualname__ = getattr(on_error, "__qualname__", repr(on_error))
    return on_failure


def _api_error(error: DeliveryError) -> APIError:
    counts = {"count": error.count, "attempts": error.attempts}
    api_error = APIError(error.reason, status=error.status, body=error.body, **counts)
    try:
        payload = json.loads(error.body)
    except ValueError:
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    api_error.code = str(payload.get("code", "unknown"))
    api_error.message = str(payload.get("message", error.body))
    return api_error


def _require(name: str, value: Any, kinds: Any, what: str) -> None:
    if not isinstance(value, kinds):
        raise ArgumentError(f"{name} must be {what}, got {reprlib.repr(value)}")


def _require_id(name: str, value: Any) -> None:
    _require(name, value, _ID_TYPES, "a string or a number")


def _local_if_now(stamp: dt.datetime) -> dt.datetime:
    """A naive ``datetime.now()`` is local time, as the official client guesses; any
    other naive datetime (``utcnow()`` outside UTC) is UTC, as this package takes them."""
    if stamp.tzinfo is not None and stamp.utcoffset() is not None:
        return stamp
    naive = stamp.replace(tzinfo=None)
    try:
        if abs(dt.datetime.now() - naive) < _LOCAL_NOW_WINDOW:
            return naive.astimezone()
    except (OverflowError, ValueError, OSError):  # years at the edges of what datetime holds
        pass
    return naive


def _warn_once(setting: str, text: str) -> None:
    with _warned_lock:
        if setting in _warned:
            return
        _warned.add(setting)
    warnings.warn(f"segmentio_logging.analytics: {text}", UnsupportedSettingWarning, stacklevel=3)


def _configure_log(debug: bool, handler: Optional[logging.Handler]) -> None:
    """As the official client: ``log_handler`` joins the ``segment`` logger; ``debug``
    sets it to DEBUG, printing to stderr when no ``log_handler`` is given."""
    global _debug_handler
    if handler is not None and handler not in _log.handlers:
        _log.addHandler(handler)
    if debug:
        _log.setLevel(logging.DEBUG)
        if handler is None:
            _debug_handler = _debug_handler or logging.StreamHandler()
            if _debug_handler not in _log.handlers:
                _log.addHandler(_debug_handler)


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
