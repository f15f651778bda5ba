"""What the web middlewares share: a request's identity and context, bound while it runs.

A request gives three things to every record logged while it is handled: the
anonymous id of Segment's browser cookie (``ajs_anonymous_id``, set by
analytics.js, so server-side events join the browser's), the signed-in user's
id, and ``context.ip``, ``context.userAgent`` and ``context.page``. The
middlewares (Django, ASGI, WSGI) only read their request into
:class:`RequestFacts`; everything else is here.

The user id is looked up lazily: on the first record that needs it, on the
thread that logs it. A request that logs nothing never asks for its user, so a
framework's lazy user object (Django's ``request.user``) is never loaded for it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional
from urllib.parse import quote, unquote

from .. import _report
from .._context import _identity, bind, unbind
from .._options import resolve_dotted

DEFAULT_COOKIE = "ajs_anonymous_id"
# analytics.js writes a UUID (or the site's own id): a cookie far longer is not one it wrote.
MAX_ID_LENGTH = 200
_BARE_ID = re.compile(rf"[A-Za-z0-9._:@+-]{{1,{MAX_ID_LENGTH}}}\Z")
# Each of context.page's texts and context.userAgent is cut to this many UTF-8 bytes: a
# long query string would otherwise push every event of its request past Segment's 32 KB.
MAX_CONTEXT_TEXT = 2048
# A user id longer than this is no id (a token, a serialised object): Segment's ids are short.
MAX_USER_ID_LENGTH = 1024
# What a path keeps as it is when it is quoted for context.page (RFC 3986's pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"

UserIdHook = Callable[[Any], Any]
Binding = Any  # the token that unbind takes back


@dataclass(frozen=True)
class WebOptions:
    """The options every middleware takes.

    :param user_id: ``fn(request) -> id or None``, called with the framework's
        request (Django's ``HttpRequest``, the ASGI scope, the WSGI environ) on the
        first record that needs the id; None for the middleware's default.
    :param trusted_proxies: how many proxies in front of the app append to
        ``X-Forwarded-For``; 0 (the default) ignores the header and takes the peer's
        address, since any client can send one.
    :param anonymous_id_cookie: the cookie that holds the anonymous id.
    """

    user_id: Optional[UserIdHook] = None
    trusted_proxies: int = 0
    anonymous_id_cookie: str = DEFAULT_COOKIE


def web_options(
    where: str,
    user_id: Any = None,
    trusted_proxies: Any = 0,
    anonymous_id_cookie: Any = DEFAULT_COOKIE,
) -> WebOptions:
    """Checked :class:`WebOptions`; a clear ``TypeError`` or ``ValueError`` names ``where``."""
    if isinstance(user_id, str):
        user_id = resolve_dotted(f"{where} user_id", user_id)
    if user_id is not None and not callable(user_id):
        raise TypeError(f"{where} user_id must be a callable or a dotted path, got {user_id!r}")
    if isinstance(trusted_proxies, str) and trusted_proxies.strip().isdigit():
        trusted_proxies = int(trusted_proxies)
    if isinstance(trusted_proxies, bool) or not isinstance(trusted_proxies, int):
        raise TypeError(f"{where} trusted_proxies must be an integer, got {trusted_proxies!r}")
    if trusted_proxies < 0:
        raise ValueError(f"{where} trusted_proxies must be at least 0, got {trusted_proxies}")
    if not isinstance(anonymous_id_cookie, str) or not anonymous_id_cookie.strip():
        raise TypeError(
            f"{where} anonymous_id_cookie must be a cookie name, got {anonymous_id_cookie!r}"
        )
    return WebOptions(user_id, trusted_proxies, anonymous_id_cookie.strip())


@dataclass(frozen=True)
class RequestFacts:
    """What a request says about its client, as text; missing headers are None.

    ``path`` is percent-encoded, as a browser's ``location.pathname``; ``query``
    comes without its ``?``; ``peer`` is an IP address or None (a Unix socket, a
    test client's made-up name).
    """

    scheme: str
    host: Optional[str]
    path: str
    query: str
    peer: Optional[str]
    cookie: Optional[str] = None
    user_agent: Optional[str] = None
    referrer: Optional[str] = None
    forwarded_for: Optional[str] = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, Any], *, scheme: Optional[str] = None, path: Optional[str] = None
    ) -> RequestFacts:
        """The facts of a WSGI environ (or Django's ``request.META``, which has its keys)."""
        if path is None:
            raw = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
            # PEP 3333: the path's bytes, each as one latin-1 character.
            path = raw.encode("latin-1", "replace").decode("utf-8", "replace")
        host = environ.get("HTTP_HOST") or _server(
            environ.get("SERVER_NAME"), environ.get("SERVER_PORT")
        )
        return cls(
            scheme=scheme or str(environ.get("wsgi.url_scheme", "http")),
            host=host or None,
            path=quote(path, safe=_PATH_SAFE) or "/",
            query=str(environ.get("QUERY_STRING", "")),
            peer=_address(str(environ.get("REMOTE_ADDR") or "")),
            cookie=environ.get("HTTP_COOKIE"),
            user_agent=environ.get("HTTP_USER_AGENT"),
            referrer=environ.get("HTTP_REFERER"),
            forwarded_for=environ.get("HTTP_X_FORWARDED_FOR"),
        )

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> RequestFacts:
        """The facts of an ASGI ``http`` or ``websocket`` scope."""
        headers: Dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            key = bytes(name).decode("latin-1").lower()
            text = bytes(value).decode("latin-1")
            joiner = "; " if key == "cookie" else ", "
            headers[key] = f"{headers[key]}{joiner}{text}" if key in headers else text
        raw_path = scope.get("raw_path")
        if raw_path:
            path = bytes(raw_path).decode("latin-1").partition("?")[0]
        else:
            path = quote(str(scope.get("root_path", "")) + str(scope.get("path", "")), _PATH_SAFE)
        client = scope.get("client")
        server = scope.get("server")
        return cls(
            scheme=str(scope.get("scheme") or "http"),
            host=headers.get("host") or (_server(*server) if server else None),
            path=path or "/",
            query=bytes(scope.get("query_string") or b"").decode("latin-1"),
            peer=_address(str(client[0])) if client else None,
            cookie=headers.get("cookie"),
            user_agent=headers.get("user-agent"),
            referrer=headers.get("referer"),
            forwarded_for=headers.get("x-forwarded-for"),
        )


def _server(name: Any, port: Any) -> Optional[str]:
    if not name:
        return None
    return f"{name}:{port}" if port not in (None, "", "80", "443", 80, 443) else str(name)


def cookie_value(header: Optional[str], name: str) -> Optional[str]:
    """The raw value of cookie ``name`` in a ``Cookie`` header, or None.

    Parsed by hand: ``http.cookies`` gives up on the whole header at the first
    cookie it dislikes, and a browser sends whatever its sites set.
    """
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def anonymous_id_of(cookie: Optional[str]) -> Optional[str]:
    """The id in an ``ajs_anonymous_id`` cookie value, or None when it is not one.

    analytics.js stores it JSON-quoted, and percent-encoded by some versions:
    ``%22abc%22`` or ``"abc"``; a bare ``abc`` (set by hand, or by older
    versions) is taken when it looks like an id (letters, digits, ``-._:@+``).
    Anything else is ignored, never an error.
    """
    if not cookie:
        return None
    text = (unquote(cookie) if "%" in cookie else cookie).strip()
    if not text.startswith('"'):
        return text if _BARE_ID.match(text) else None
    if text.endswith('"') and _BARE_ID.match(text, 1, len(text) - 1):
        return text[1:-1]  # the common case, without the JSON parser
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable() or '"' in value:
        return None
    return value


def client_ip(peer: Optional[str], forwarded_for: Optional[str], trusted_proxies: int) -> Any:
    """The client's address: the peer's, or the one ``trusted_proxies`` proxies forwarded.

    Each proxy appends the address it got the request from, so the client is the
    ``trusted_proxies``-th entry from the right; entries left of it are whatever
    the client wrote. A header with fewer entries, or a value that is not an
    address, is ignored, as werkzeug's ``ProxyFix`` does.
    """
    if trusted_proxies and forwarded_for:
        entries = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
        if len(entries) >= trusted_proxies:
            address = _address(entries[-trusted_proxies])
            if address is not None:
                return address
    return peer


def _address(text: str) -> Optional[str]:
    """``text`` as an IP address (a port or IPv6 brackets removed), or None."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def context_of(facts: RequestFacts, trusted_proxies: int) -> Dict[str, Any]:
    """``context.ip``, ``context.userAgent`` and ``context.page`` of a request.

    ``page`` has ``url`` and ``path`` always, ``search`` (with its ``?``) and
    ``referrer`` when the request has them, as analytics.js names them; each text
    is :func:`capped`.
    """
    search = f"?{facts.query}" if facts.query else ""
    page: Dict[str, Any] = {"path": capped(facts.path)}
    if facts.host:
        page["url"] = capped(f"{facts.scheme}://{facts.host}{facts.path}{search}")
    else:
        page["url"] = capped(f"{facts.path}{search}")
    if search:
        page["search"] = capped(search)
    if facts.referrer:
        page["referrer"] = capped(facts.referrer)
    context: Dict[str, Any] = {"page": page}
    ip = client_ip(facts.peer, facts.forwarded_for, trusted_proxies)
    if ip:
        context["ip"] = ip
    if facts.user_agent:
        context["userAgent"] = capped(facts.user_agent)
    return context


def capped(text: str, limit: int = MAX_CONTEXT_TEXT) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    if len(text) * 4 <= limit:  # the common case: short enough whatever its characters
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


class LazyIdentity(Mapping[str, Any]):
    """A bound identity whose ``user_id`` is asked for on first use, once.

    The handler reads ``user_id`` on the thread that logs (never on its worker,
    which only reads ``context`` and ``integrations``), so the lookup runs where
    the request's user lives. An id of None or "" leaves the outer binding's.
    """

    __slots__ = ("_base", "_lock", "_resolve", "_user_id")

    def __init__(self, base: Mapping[str, Any], resolve: Callable[[], Any]) -> None:
        self._base = base
        self._resolve: Optional[Callable[[], Any]] = resolve
        self._user_id: Any = None
        self._lock = threading.Lock()

    def _user(self) -> Any:
        if self._resolve is not None:
            with self._lock:
                resolve, self._resolve = self._resolve, None
                if resolve is not None:
                    self._user_id = _call_hook(resolve)
        if self._user_id is None or self._user_id == "":
            return self._base.get("user_id")
        return self._user_id

    def __getitem__(self, key: str) -> Any:
        if key != "user_id":
            return self._base[key]
        value = self._user()
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        yield from (key for key in self._base if key != "user_id")
        if self._user() is not None:
            yield "user_id"

    def __len__(self) -> int:
        # Without the lookup: the worker tests the identity's truth and must not run it.
        others = sum(1 for key in self._base if key != "user_id")
        if self._resolve is not None:
            return others + 1
        return others + (self._user() is not None)

    def __repr__(self) -> str:
        user = "<not looked up>" if self._resolve is not None else repr(self._user())
        return f"<LazyIdentity user_id={user} {dict(self._base)!r}>"


def _call_hook(resolve: Callable[[], Any]) -> Any:
    """The user id, or None when the lookup raises: logging must not break the request."""
    try:
        return user_id_of(resolve())
    except Exception as exc:
        _report.warn(
            "contrib-user-id",
            f"looking up the request's user id raised {type(exc).__name__}: {exc}; "
            "its records carry no user id",
        )
        return None


def user_id_of(value: Any) -> Any:
    """A lookup's result as a user id: a text of at most :data:`MAX_USER_ID_LENGTH`
    characters, an int or a UUID (as its text); None or "" for no user.

    Anything else is no user id, with a warning: a dict or a huge text would make
    every event of the request too big to send, and an object's ``str()`` would
    merge unrelated users under one id. The anonymous id stays.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if len(value) <= MAX_USER_ID_LENGTH:
            return value
        problem = f"a text of {len(value)} characters (at most {MAX_USER_ID_LENGTH})"
    else:
        problem = f"a {type(value).__name__}, not a str or an int"
    _report.warn(
        "contrib-user-id-type",
        f"the request's user id lookup returned {problem}; its records carry no user id",
    )
    return None


def bind_request(
    read: Callable[[], RequestFacts],
    options: WebOptions,
    resolve_user: Optional[Callable[[], Any]],
) -> Binding:
    """Bind the request's anonymous id, context and (lazy) user id; :func:`unbind_request`.

    ``read`` gives the request's facts. A request this cannot read (a framework's
    request object of a shape not foreseen) runs without a binding, with a
    warning: logging must not fail the request.
    """
    try:
        facts = read()
        anonymous_id = anonymous_id_of(cookie_value(facts.cookie, options.anonymous_id_cookie))
        context = context_of(facts, options.trusted_proxies)
    except Exception as exc:
        _report.warn(
            "contrib-request",
            f"could not read the request ({type(exc).__name__}: {exc}); "
            "its records carry no request identity",
        )
        return None
    token = bind(anonymous_id=anonymous_id, context=context)
    if resolve_user is not None:
        # Set over bind's value; resetting bind's token restores what was there before both.
        _identity.set(LazyIdentity(_identity.get() or {}, resolve_user))
    return token


def unbind_request(binding: Binding) -> None:
    """Undo :func:`bind_request`."""
    if binding is not None:
        unbind(binding)
