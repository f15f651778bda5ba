"""The drop-in's ``Client``: the official constructor and calls, on a pipeline of its own.

Each call checks its arguments as the official client does (an
:class:`ArgumentError` where it asserts) and returns ``(queued, message)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import numbers
import reprlib
from typing import Any, Dict, Optional, Tuple

from ._analytics_errors import ArgumentError
from ._analytics_settings import (
    MAX_UPLOAD_SIZE,
    OFFICIAL_NAMES,
    SAME_NAMES,
    UNSUPPORTED,
    ErrorCallback,
    Message,
    as_on_failure,
    configure_log,
    pipeline_client,
    proxy_option,
    segment_log,
    warn_once,
)
from ._errors import InvalidMessage

Result = Tuple[bool, Message]

_ID_TYPES = (numbers.Number, str)
_LOCAL_NOW_WINDOW = dt.timedelta(seconds=5)


class Client:
    """A client with the official constructor and calls, on a pipeline of its own.

    ``upload_size`` sets the option ``batch_size``, ``upload_interval`` ``flush_interval``,
    ``thread`` ``max_in_flight`` (requests at once), ``max_total_backoff_duration``
    ``retry_budget``, ``proxies`` (a requests-style dict) ``proxy``; ``on_error(error, batch)``
    is called for what ``on_failure(data, error)`` would get. Other keyword arguments are
    this package's other options (``shutdown_timeout``, ``spool_path``...).
    """

    log = segment_log

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
        renamed = sorted(set(options) & set(OFFICIAL_NAMES))
        if renamed:
            raise TypeError(f"{renamed[0]} is spelled {OFFICIAL_NAMES[renamed[0]]} here")
        oauth = (oauth_client_id, oauth_client_key, oauth_key_id, oauth_auth_server, oauth_scope)
        unsupported = {
            "oauth": any(value is not None for value in oauth),
            "max_rate_limit_duration": max_rate_limit_duration is not None,
            "upload_size": isinstance(upload_size, int) and upload_size > MAX_UPLOAD_SIZE,
        }
        for setting in (name for name, given in unsupported.items() if given):
            warn_once(setting, UNSUPPORTED[setting])
        if unsupported["upload_size"]:
            upload_size = MAX_UPLOAD_SIZE
        given = {name: value for name, value in locals().items() if name in SAME_NAMES}
        given.update(batch_size=upload_size, flush_interval=upload_interval, max_in_flight=thread)
        given.update(retry_budget=max_total_backoff_duration, on_failure=as_on_failure(on_error))
        given.update(proxy=proxy_option(proxies, host))
        self._client = pipeline_client({**given, **options})
        # The official client's attributes; as there, changing them changes nothing.
        resolved = self._client.options
        self.write_key, self.host, self.send = resolved.write_key, resolved.host, resolved.send
        self.sync_mode, self.gzip = resolved.sync_mode, resolved.gzip
        self.timeout, self.on_error = resolved.timeout, on_error
        self.debug, self.proxies = bool(debug), proxies
        configure_log(self.debug, log_handler)

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
        segment_log.debug("%s %s: %s", "queued" if queued else "not queued", kind, message)
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
