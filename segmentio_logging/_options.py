"""Options: keyword arguments, then ``SEGMENT_*`` environment variables, then defaults.

Every option takes a JSON-friendly value so that ``dictConfig``, ``fileConfig``,
Django settings and YAML files can set it; numbers and booleans may also be
given as strings, and a callable as a dotted path (``"package.module.function"``).

Each option is one field of :class:`Options`, which holds its default and the
check a given value must pass; :func:`resolve_options` reads the checks from
those fields, so adding an option is adding one field.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, TypeVar
from urllib.parse import urlsplit

from ._segment import MAX_BATCH_COUNT, RESERVED_FIELDS, SESSION_ID, STANDARD_RECORD_ATTRS

DEFAULT_HOST = "https://api.segment.io"
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024  # also the disk spool's default (_spool imports it)
MIN_SPOOL_MAX_BYTES = 64 * 1024  # two Segment-sized messages, with room to spare
# Chosen by measurement (docs/delivery-network.md): full requests, several at once,
# carry a receiver 100 ms away as fast as loopback.
DEFAULT_BATCH_SIZE = 1000
DEFAULT_MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT = 64  # threads and connections per pipeline

SuccessCallback = Callable[[Any, Any], Any]
FailureCallback = Callable[[Any, Any], Any]
# fn(message) -> the message to send (changed or not), or None to send nothing.
BeforeSend = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]

Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value to keep for option ``name``, or TypeError (wrong
type) or ValueError (out of range) with a message that starts with ``name``."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise TypeError(f"{name} must be a boolean (true/false), got {value!r}")


def _number(kind: type, low: float, high: Optional[float] = None) -> Check:
    """The check of a number of type ``kind`` (int or float) from ``low`` to ``high``."""
    what = "an integer" if kind is int else "a number"
    bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"

    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                raise TypeError(f"{name} must be {what}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be {what}, got {value!r}")
        if value != value or value < low or (high is not None and value > high):  # type: ignore[operator]
            raise ValueError(f"{name} must be {bound}, got {value!r}")
        return value

    return check


def _optional(check: Check) -> Check:
    """``check``, letting None (the option unset) through."""

    def check_unless_none(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_unless_none


def _callback(name: str, value: Any) -> Optional[Callable[..., Any]]:
    if value is None:
        return None
    if isinstance(value, str):
        value = resolve_dotted(name, value)
    if not callable(value):
        raise TypeError(f"{name} must be a callable or a dotted path to one, got {value!r}")
    return value  # type: ignore[no-any-return]


def _json_object(name: str, value: Any) -> Dict[str, Any]:
    """A JSON object: a mapping with string keys that JSON can carry, or its JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be a JSON object, got {value!r}: {exc}") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict (a JSON object), got {type(value).__name__}")
    if not all(isinstance(key, str) for key in value):
        raise TypeError(f"{name} must have string keys")
    try:
        return dict(json.loads(json.dumps(dict(value))))  # a copy the caller cannot change
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must hold only JSON values: {exc}") from None


def _field_names(name: str, value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    result: Dict[str, str] = {}
    for key, attr in _field_names_mapping(name, value).items():
        result[key] = _field_name_attribute(name, key, attr)
    _check_attributes_not_shared(name, result)
    return result


def _field_names_mapping(name: str, value: Any) -> Mapping[Any, Any]:
    """``value`` as a mapping: a JSON object given as a string is parsed (an empty one is {})."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise TypeError(f"{name} must be a JSON object of strings, got {value!r}") from None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a mapping of reserved key to attribute name, got {value!r}"
        )
    return value


def _field_name_attribute(name: str, key: Any, attr: Any) -> str:
    """``attr``, checked as the record attribute that carries the reserved ``key``."""
    if key not in RESERVED_FIELDS:
        known = ", ".join(sorted(RESERVED_FIELDS))
        raise ValueError(f"{name}: {key!r} is not a reserved key; the keys are {known}")
    if not isinstance(attr, str) or not attr.isidentifier():
        raise ValueError(f"{name}: the attribute for {key!r} must be an identifier, got {attr!r}")
    if attr in STANDARD_RECORD_ATTRS:
        raise ValueError(f"{name}: {attr!r} is a LogRecord attribute and cannot carry {key!r}")
    return attr


def _check_attributes_not_shared(name: str, result: Dict[str, str]) -> None:
    """No two reserved keys read one attribute, counting the keys ``result`` leaves as they are.

    ``session_id`` is read for ``anonymous_id`` while that key keeps its own name.
    """
    names = {key: key for key in RESERVED_FIELDS}
    names.update(result)
    taken: Dict[str, str] = {}
    for key in sorted(names):
        attr = names[key]
        if attr in taken or (attr == SESSION_ID and names["anonymous_id"] == "anonymous_id"):
            other = taken.get(attr, "session_id")
            raise ValueError(f"{name}: {key!r} and {other!r} would both read attribute {attr!r}")
        taken[attr] = key


def _host(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a URL such as 'https://api.segment.io', got {value!r}")
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    text = text.rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{name} is not a valid URL: {value!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{name} must be an http:// or https:// URL, got {value!r}")
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"{name} must be a URL with a host name and no query, such as "
            f"'https://api.segment.io', got {value!r}"
        )
    return text


class ProxyURL(str):
    """A proxy's URL, whole; its ``repr`` (and :attr:`masked`) hide the password it may hold."""

    __slots__ = ()

    @property
    def masked(self) -> str:
        return mask_password(self)

    def __repr__(self) -> str:
        return repr(mask_password(self))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_AND_PORT = re.compile(r"^[A-Za-z0-9.\[\]:_-]*$")


def mask_password(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part, if any, as ``***``.

    The user info ends at the last ``@`` before the first ``/?#``. An ``@`` after
    those means a password holding one of them, not percent-encoded: where it ends
    is a guess, so only the scheme, ``***@`` and a host after the last ``@`` show.
    """
    found = _SCHEME.match(url)
    scheme = found.group() if found else ""
    rest = url[len(scheme) :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in rest[len(authority) :]:
        host = rest.rpartition("@")[2]
        return f"{scheme}***@{host if _HOST_AND_PORT.match(host) else ''}"
    userinfo, at, _ = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return str(url)  # no password; a plain str, for ProxyURL's repr
    return f"{scheme}{userinfo.partition(':')[0]}:***@{rest[len(userinfo) + 1 :]}"


def check_proxy(name: str, value: Any) -> ProxyURL:
    """An ``http://[user:password@]host[:port]`` proxy URL (no scheme: http://), or ``""``:
    no proxy at all. Messages never show the password."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a proxy URL such as 'http://proxy.example:3128', "
            f"got {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        return ProxyURL("")  # given empty: no proxy, whatever the environment says
    if "://" not in text:
        text = "http://" + text
    shown = mask_password(text)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{name} is not a valid URL: {shown!r}") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"{name}: {_UNSUPPORTED_PROXY.get(scheme[:5], _OTHER_PROXY)}, got {shown!r}"
        )
    after_port = parts.path not in ("", "/") or parts.query or parts.fragment
    if after_port or not is_host(parts.hostname or ""):
        raise ValueError(
            f"{name} must be a URL with a host name or IP address and nothing after the "
            f"port, such as 'http://user:password@proxy.example:3128', got {shown!r}"
        )
    return ProxyURL(text.rstrip("/"))


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


def is_host(name: str) -> bool:
    """A host name (letters, digits, ``-`` and ``_`` in dot-separated labels; IDNA) or an
    IP address."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_name) <= 253 and _HOST_NAME.match(ascii_name.lower()) is not None


_OTHER_PROXY = "must be an http:// proxy URL"
_UNSUPPORTED_PROXY = {
    "https": "https:// proxies (TLS to the proxy itself) are not supported; an http:// proxy "
    "still carries HTTPS end to end, through CONNECT",
    "socks": "SOCKS proxies are not supported; use an HTTP proxy (http://host:port)",
}


def _file_path(name: str, value: Any) -> str:
    """A file's path (``str`` or ``os.PathLike``), ``~`` expanded; read when the transport is
    built."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a file path, got {type(value).__name__}")
    text = value.strip()
    if not text or "\x00" in text:
        raise ValueError(f"{name} must be a file path, got {value!r}")
    return os.path.expanduser(text)


def _write_key(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _spool_path(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a directory path, got {type(value).__name__}")
    text = value.strip()
    if not text or "\x00" in text:
        raise ValueError(f"{name} must be a directory path, got {value!r}")
    return os.path.expanduser(text)


_CHECK = "check"  # the key of a field's check in its metadata
_T = TypeVar("_T")


def _option(default: _T, check: Check, *, secret: bool = False) -> _T:
    """A field of :class:`Options`: its default and the check of a given value.

    It returns ``dataclasses.field(...)`` (pyproject.toml tells ruff's RUF009 so).
    """
    return field(default=default, repr=not secret, metadata={_CHECK: check})


def _option_made_by(factory: Callable[[], _T], check: Check) -> _T:
    """A field whose default is mutable: each instance gets its own from ``factory``."""
    return field(default_factory=factory, metadata={_CHECK: check})


@dataclass(frozen=True)
class Options:
    """Validated settings of a handler or client. Build it with :func:`resolve_options`.

    Each field is one option: its default, then the check that a keyword argument
    or the text of its ``SEGMENT_<NAME>`` variable passes, bounds included.
    """

    write_key: Optional[str] = _option(None, _write_key, secret=True)  # kept out of reprs
    host: str = _option(DEFAULT_HOST, _host)
    gzip: bool = _option(True, _bool)
    batch_size: int = _option(DEFAULT_BATCH_SIZE, _number(int, 1, MAX_BATCH_COUNT))
    flush_interval: float = _option(0.5, _number(float, 0.001, 3600))
    max_queue_size: int = _option(10_000, _number(int, 1))
    timeout: float = _option(15.0, _number(float, 0.001, 3600))
    # Unset: a batch that failed for a retryable reason waits for the receiver, however
    # long; set, it is given up (failed, reported) after that many retries or seconds.
    max_retries: Optional[int] = _option(None, _optional(_number(int, 0)))
    retry_budget: Optional[float] = _option(None, _optional(_number(float, 0)))
    max_in_flight: int = _option(DEFAULT_MAX_IN_FLIGHT, _number(int, 1, MAX_IN_FLIGHT))
    max_backoff: float = _option(30.0, _number(float, 0.001, 3600))
    max_retry_after: float = _option(300.0, _number(float, 0, 86_400))
    shutdown_timeout: float = _option(5.0, _number(float, 0, 86_400))
    on_success: Optional[SuccessCallback] = _option(None, _callback)
    on_failure: Optional[FailureCallback] = _option(None, _callback)
    send: bool = _option(True, _bool)
    sync_mode: bool = _option(False, _bool)
    capture_extra: bool = _option(False, _bool)
    field_names: Dict[str, str] = _option_made_by(dict, _field_names)
    spool_path: Optional[str] = _option(None, _optional(_spool_path))
    spool_max_bytes: int = _option(DEFAULT_SPOOL_MAX_BYTES, _number(int, MIN_SPOOL_MAX_BYTES))
    spool_max_age: Optional[float] = _option(None, _optional(_number(float, 0.001)))
    before_send: Optional[BeforeSend] = _option(None, _callback)
    default_context: Dict[str, Any] = _option_made_by(dict, _json_object)
    handle_sigterm: bool = _option(True, _bool)
    # None: the standard proxy variables; "" no proxy. Its repr hides a password.
    proxy: Optional[str] = _option(None, _optional(check_proxy))
    ca_certs: Optional[str] = _option(None, _optional(_file_path))
    client_cert: Optional[str] = _option(None, _optional(_file_path))
    client_key: Optional[str] = _option(None, _optional(_file_path))


OPTION_NAMES = tuple(f.name for f in fields(Options))

# The check of each option, read from its field; a field without one fails here, at import.
OPTION_CHECKS: Mapping[str, Check] = MappingProxyType(
    {f.name: f.metadata[_CHECK] for f in fields(Options)}
)


def env_var(name: str) -> str:
    """The environment variable that sets option ``name``."""
    return "SEGMENT_" + name.upper()


def resolve_dotted(name: str, path: str) -> Any:
    """Import ``"package.module.attr"`` (or ``"package.module:attr"``, or ``"ext://..."``).

    The attribute may be nested (``"package.module.Class.method"``): the longest
    importable module prefix is imported and the rest is looked up on it.
    """
    text = path.strip()
    if text.startswith("ext://"):
        text = text[len("ext://") :]
    parts = text.replace(":", ".").split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(
            f"{name} must be a dotted path such as 'package.module.function', got {path!r}"
        )
    module = None
    error: Optional[ImportError] = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError as exc:
            error = error or exc
            continue
        break
    if module is None:
        raise ValueError(f"{name}: cannot import {parts[0]!r} from {path!r}: {error}") from None
    found: Any = module
    for attr in parts[cut:]:
        try:
            found = getattr(found, attr)
        except AttributeError:
            owner = ".".join(parts[: parts.index(attr, cut)])
            raise ValueError(f"{name}: {owner!r} has no attribute {attr!r} ({path!r})") from None
    return found


def resolve_options(
    given: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None
) -> Options:
    """Validate keyword options, filling the unset ones from the environment.

    Raises ``TypeError`` for an unknown option or a value of the wrong type and
    ``ValueError`` for a value out of range, naming the option (and the
    environment variable it came from).
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the options are {', '.join(OPTION_NAMES)}"
        )
    values: Dict[str, Any] = {}
    for name, check in OPTION_CHECKS.items():
        variable = env_var(name)
        if given.get(name) is not None:
            values[name] = check(name, given[name])
        elif env.get(variable) not in (None, ""):
            label = f"{name} (from {variable})"
            try:
                values[name] = check(name, env[variable])
            except (TypeError, ValueError) as exc:
                raise type(exc)(str(exc).replace(name, label, 1)) from None
    options = Options(**values)
    if options.spool_path is not None and options.sync_mode:
        raise ValueError(
            "spool_path cannot be combined with sync_mode: sync_mode delivers on the caller's "
            "thread, while the spool is written by the worker thread; choose one"
        )
    if options.send and not options.write_key:
        raise ValueError(
            "write_key is required: pass write_key=... or set SEGMENT_WRITE_KEY "
            "(or pass send=False to build messages without delivering them)"
        )
    return options
