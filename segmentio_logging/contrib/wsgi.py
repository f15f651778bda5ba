"""``SegmentMiddleware`` for WSGI apps: Flask, Bottle, Pyramid, any other.

    app.wsgi_app = SegmentMiddleware(app.wsgi_app, user_id=current_user_id)   # Flask
    application = SegmentMiddleware(application)                              # any WSGI app

Each request runs with its identity bound (see ``_web``): the
``ajs_anonymous_id`` cookie's id, the user id that ``user_id`` finds,
``context.ip``, ``context.userAgent`` and ``context.page``; so does the
iteration of its response body, where a streaming app goes on logging.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from ._web import DEFAULT_COOKIE, RequestFacts, bind_request, web_options

__all__ = ["SegmentMiddleware"]

Environ = Mapping[str, Any]
WSGIApp = Callable[[Any, Any], Iterable[bytes]]


def default_user_id(environ: Environ) -> Any:
    """``REMOTE_USER``, which the server or an authenticating middleware sets, else None."""
    return environ.get("REMOTE_USER") or None


class SegmentMiddleware:
    """Binds each request's Segment identity and context while the app runs.

    :param app: the WSGI app to wrap.
    :param user_id: ``fn(environ) -> id or None`` (or its dotted path), called on
        the first record that needs the id, inside the app (Flask's ``current_user``
        and ``g`` work there); default: ``REMOTE_USER``.
    :param trusted_proxies: how many proxies in front append to ``X-Forwarded-For``
        (0: the header is ignored, ``context.ip`` is ``REMOTE_ADDR``).
    :param anonymous_id_cookie: the cookie that holds the anonymous id.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        user_id: Any = None,
        trusted_proxies: Any = 0,
        anonymous_id_cookie: str = DEFAULT_COOKIE,
    ) -> None:
        self.app = app
        self.options = web_options(
            "SegmentMiddleware", user_id, trusted_proxies, anonymous_id_cookie
        )
        self._user_id = self.options.user_id or default_user_id

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        # A context of its own for the request: the binding lasts while the body is
        # iterated too (after this call returns) and never leaks into the server's thread.
        context = contextvars.copy_context()
        user_id = self._user_id
        context.run(
            bind_request,
            lambda: RequestFacts.from_environ(environ),
            self.options,
            lambda: user_id(environ),
        )
        body = context.run(self.app, environ, start_response)
        if isinstance(body, (list, tuple)) or _is_file_wrapper(environ, body):
            # Nothing more of the app runs; a server's file wrapper kept as it is lets
            # the server send the file itself (sendfile).
            return body
        return _BoundBody(context, body)


def _is_file_wrapper(environ: Any, body: Any) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


class _BoundBody:
    """A response body whose iteration and ``close()`` run in the request's context."""

    def __init__(self, context: contextvars.Context, body: Iterable[bytes]) -> None:
        self._context = context
        self._body = body
        self._iterator: Optional[Iterator[bytes]] = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)
