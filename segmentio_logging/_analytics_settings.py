"""The official client's settings and keywords as this package's options.

The names that differ, requests-style ``proxies``, ``on_error(error, batch)``,
the ``segment`` logger that ``debug`` and ``log_handler`` configure, and the
settings this package does not honour (warned once per process).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Set
from urllib.parse import urlsplit

from ._analytics_errors import ArgumentError, UnsupportedSettingWarning, api_error
from ._client import Client as _PipelineClient
from ._errors import DeliveryError
from ._options import DEFAULT_HOST, env_var, resolve_options

Message = Dict[str, Any]
ErrorCallback = Callable[[Exception, List[Message]], Any]

# The official client's logger: logging configured for it keeps working.
segment_log = logging.getLogger("segment")
_debug_handler: Optional[logging.Handler] = None  # debug=True without a log_handler
_warned: Set[str] = set()
_warned_lock = threading.Lock()

# Segment takes at most 2,500 messages per request (the cap of the batch_size option).
MAX_UPLOAD_SIZE = 2_500

UNSUPPORTED = {
    "oauth": "OAuth (oauth_client_id, oauth_client_key, oauth_key_id...) is not supported and "
    "is ignored: requests authenticate with the write key (HTTP Basic), which a source that "
    "requires OAuth refuses",
    "max_rate_limit_duration": "max_rate_limit_duration is ignored: retries after a 429 count "
    "against max_retries and max_total_backoff_duration like any other retry",
    "upload_size": f"upload_size is capped at {MAX_UPLOAD_SIZE:,}, Segment's limit of messages "
    "per request",
}

# The official keywords that are this package's options of the same name and meaning.
SAME_NAMES = frozenset(
    ("write_key", "host", "max_queue_size", "send", "gzip", "max_retries", "sync_mode", "timeout")
)
# Our option -> the official keyword that sets it (errors name the one the caller used).
OFFICIAL_NAMES = {
    "batch_size": "upload_size",
    "max_in_flight": "thread",
    "flush_interval": "upload_interval",
    "retry_budget": "max_total_backoff_duration",
    "on_failure": "on_error",
}


def pipeline_client(given: Dict[str, Any]) -> _PipelineClient:
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
    for ours, official in OFFICIAL_NAMES.items():
        if given.get(ours) is not None and text.startswith(ours + " "):
            text = official + text[len(ours) :]
    raise type(error)(text) from None


def proxy_option(proxies: Any, host: Optional[str]) -> Optional[str]:
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


def as_on_failure(on_error: Optional[ErrorCallback]) -> Optional[Callable[[Any, Any], None]]:
    """An ``on_failure(data, error)`` that calls the official ``on_error(error, batch)``."""
    if on_error is None:
        return None
    report = on_error

    def on_failure(data: Any, error: Any) -> None:
        if type(error) is DeliveryError and error.status is not None:
            error = api_error(error)
        report(error, data if isinstance(data, list) else [data])

    # The pipeline names a callback that raises by its __qualname__: name the user's.
    on_failure.__qualname__ = getattr(on_error, "__qualname__", repr(on_error))
    return on_failure


def warn_once(setting: str, text: str) -> None:
    """Warn that ``setting`` is not honoured, the first time only (``stacklevel``: the
    caller of ``Client``)."""
    with _warned_lock:
        if setting in _warned:
            return
        _warned.add(setting)
    warnings.warn(f"segmentio_logging.analytics: {text}", UnsupportedSettingWarning, stacklevel=3)


def configure_log(debug: bool, handler: Optional[logging.Handler]) -> None:
    """As the official client: ``log_handler`` joins the ``segment`` logger; ``debug``
    sets it to DEBUG, printing to stderr when no ``log_handler`` is given."""
    global _debug_handler
    if handler is not None and handler not in segment_log.handlers:
        segment_log.addHandler(handler)
    if debug:
        segment_log.setLevel(logging.DEBUG)
        if handler is None:
            _debug_handler = _debug_handler or logging.StreamHandler()
            if _debug_handler not in segment_log.handlers:
                segment_log.addHandler(_debug_handler)
