"""``SegmentMiddleware`` for Django, sync and async.

In ``settings.py``, after ``AuthenticationMiddleware``::

    MIDDLEWARE = [..., "segmentio_logging.contrib.django.SegmentMiddleware"]

Each request runs with its identity bound (see ``_web``): the signed-in
user's ``pk``, the ``ajs_anonymous_id`` cookie's id, ``context.ip``,
``context.userAgent`` and ``context.page``. Optional settings, all in one
dict::

    SEGMENT_MIDDLEWARE = {
        "user_id": "shop.segment.user_id",   # fn(request) -> id or None, or its dotted path
        "trusted_proxies": 1,                # proxies that append to X-Forwarded-For
        "anonymous_id_cookie": "ajs_anonymous_id",
    }

In a sync request the user is looked up on the first record that needs it: a
request that logs nothing never loads ``request.user`` (no session read, no
query). An async request cannot look it up from a log call on the event loop
(Django refuses database access there), so the default lookup awaits
``request.auser()`` before the view runs.
"""

from __future__ import annotations

import contextvars
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Optional

try:
    from asgiref.sync import (  # type: ignore[import-not-found,unused-ignore]
        iscoroutinefunction,
        markcoroutinefunction,
        sync_to_async,
    )
except ImportError as exc:  # Django installs asgiref
    raise ImportError(
        "segmentio_logging.contrib.django needs Django: pip install 'segmentio-logging[django]'"
    ) from exc

from .. import _report
from .._context import _identity
from ._web import RequestFacts, WebOptions, bind_request, unbind_request, web_options

__all__ = ["SETTING", "SegmentMiddleware"]

SETTING = "SEGMENT_MIDDLEWARE"
_KEYS = ("user_id", "trusted_proxies", "anonymous_id_cookie")


def default_user_id(request: Any) -> Any:
    """The ``pk`` of ``request.user`` when it is authenticated, else None."""
    return _user_pk(getattr(request, "user", None))


def _user_pk(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def options_from_settings() -> WebOptions:
    """The middleware's options from ``settings.SEGMENT_MIDDLEWARE`` (a dict, all optional)."""
    from django.conf import settings  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from django.core.exceptions import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
        ImproperlyConfigured,
    )

    given = getattr(settings, SETTING, None) or {}
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict, got {type(given).__name__}")
    unknown = sorted(set(given) - set(_KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING} has unknown keys {', '.join(map(repr, unknown))}; "
            f"the keys are {', '.join(_KEYS)}"
        )
    try:
        return web_options(SETTING, **given)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(str(exc)) from None


def _facts(request: Any) -> RequestFacts:
    # request.path, not build_absolute_uri(): that validates the host against
    # ALLOWED_HOSTS and raises, and logging must not fail a request.
    return RequestFacts.from_environ(request.META, scheme=request.scheme, path=request.path)


class SegmentMiddleware:
    """Binds each request's Segment identity and context while the view runs."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.options = options_from_settings()
        self._user_id = self.options.user_id or default_user_id
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)  # Django then calls it as a coroutine function

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self._acall(request)
        user_id = self._user_id
        binding = bind_request(lambda: _facts(request), self.options, lambda: user_id(request))
        try:
            return _streamed_in_request(self.get_response(request))
        finally:
            unbind_request(binding)

    async def _acall(self, request: Any) -> Any:
        resolve = await self._async_user(request)
        binding = bind_request(lambda: _facts(request), self.options, resolve)
        try:
            return _streamed_in_request(await self.get_response(request))
        finally:
            unbind_request(binding)

    async def _async_user(self, request: Any) -> Optional[Callable[[], Any]]:
        """What looks the user up in an async request: the user is loaded here, before
        the view, unless a ``user_id`` of the settings does the lookup itself."""
        if self.options.user_id is not None:
            hook = self.options.user_id
            return lambda: hook(request)
        try:
            pk = await _load_user_pk(request)
        except Exception as exc:
            # A session store or database that is down costs the user id, never the request.
            _report.warn(
                "contrib-user-id",
                f"looking up the request's user id raised {type(exc).__name__}: {exc}; "
                "its records carry no user id",
            )
            return None
        return lambda: pk


async def _load_user_pk(request: Any) -> Any:
    auser: Optional[Callable[[], Awaitable[Any]]] = getattr(request, "auser", None)
    if auser is not None:
        return _user_pk(await auser())  # Django 5.0+
    return await sync_to_async(default_user_id)(request)


def _streamed_in_request(response: Any) -> Any:
    """``response``, its streamed body (if it has one) iterated with the request's identity.

    A ``StreamingHttpResponse``'s body runs after the middleware returned, when
    the request is no longer bound; a ``FileResponse`` of a file is left alone:
    the server sends the file itself (``wsgi.file_wrapper``), and a file logs nothing.
    """
    if getattr(response, "streaming", False) is not True:
        return response
    if getattr(response, "file_to_stream", None) is not None:
        return response
    if getattr(response, "is_async", False):  # Django 4.2+
        response.streaming_content = _async_steps(_identity.get(), response.streaming_content)
    else:
        snapshot = contextvars.copy_context()  # holds the request's binding, made above
        response.streaming_content = _steps(snapshot, iter(response.streaming_content))
    return response


def _steps(snapshot: contextvars.Context, chunks: Iterator[Any]) -> Iterator[Any]:
    while True:
        try:
            chunk = snapshot.run(next, chunks)
        except StopIteration:
            return
        yield chunk


async def _async_steps(identity: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # Bound around each step only: between steps the server's code runs in this task.
    while True:
        token = _identity.set(identity)
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        finally:
            _identity.reset(token)
        yield chunk
