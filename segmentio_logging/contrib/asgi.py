"""``SegmentMiddleware`` for ASGI apps: Starlette, FastAPI, Django's ASGI handler, any other.

    app.add_middleware(SegmentMiddleware)              # FastAPI, Starlette
    application = SegmentMiddleware(application)       # any ASGI app

Each ``http`` and ``websocket`` request runs with its identity bound (see
``_web``): the ``ajs_anonymous_id`` cookie's id, the user id that ``user_id``
finds in the scope, ``context.ip``, ``context.userAgent`` and ``context.page``.

It also answers the lifespan ``shutdown``: uvicorn, after its graceful shutdown,
ends the process by raising SIGTERM again, so no ``atexit`` hook runs and what
the pipelines still hold would be lost. Once the app has run its own shutdown,
the middleware delivers what every pipeline holds (each within its
``shutdown_timeout``), then passes the app's answer on to the server.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional

from .. import _lifecycle
from ._web import DEFAULT_COOKIE, RequestFacts, bind_request, unbind_request, web_options

__all__ = ["SegmentMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHUTDOWN_ACTIONS = ("flush", "close", "none")
_SHUTDOWN_ANSWERS = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


def default_user_id(scope: Scope) -> Any:
    """The ``identity`` of an authenticated ``scope["user"]`` (Starlette's
    ``AuthenticationMiddleware`` sets it), else None.

    A user class without one (``BaseUser`` leaves it to subclasses, and older
    Starlette's ``SimpleUser`` has none) gives its ``username``, if it has one.
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return getattr(user, "identity", None)
    except NotImplementedError:
        return getattr(user, "username", None)


def deliver_held(action: str) -> None:
    """Deliver what every pipeline holds, each within its ``shutdown_timeout``.

    ``"flush"`` leaves them open (a test client may run the lifespan again in the
    same process); ``"close"`` closes them, as at exit.
    """
    if action == "close":
        _lifecycle.close_all()
        return
    waits = []
    for pipeline in _lifecycle.live_pipelines():
        flush = getattr(pipeline, "flush", None)
        if flush is not None:  # one thread each, so that the waits overlap
            timeout = float(getattr(pipeline, "shutdown_timeout", 5.0))
            thread = threading.Thread(
                target=flush, args=(timeout,), name="segmentio-logging-shutdown", daemon=True
            )
            thread.start()
            waits.append((thread, timeout))
    for thread, timeout in waits:
        thread.join(timeout + _lifecycle.CLOSE_GRACE)


class SegmentMiddleware:
    """Binds each request's Segment identity and context; delivers at lifespan shutdown.

    :param app: the ASGI app to wrap.
    :param user_id: ``fn(scope) -> id or None`` (or its dotted path), called on the
        first record that needs the id; default: the ``identity`` of an
        authenticated ``scope["user"]``.
    :param trusted_proxies: how many proxies in front append to ``X-Forwarded-For``
        (0: the header is ignored, ``context.ip`` is the peer's address).
    :param anonymous_id_cookie: the cookie that holds the anonymous id.
    :param on_shutdown: at the lifespan shutdown, ``"flush"`` (deliver what every
        pipeline holds, leave them open), ``"close"`` (deliver and close them) or
        ``"none"``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        user_id: Any = None,
        trusted_proxies: Any = 0,
        anonymous_id_cookie: str = DEFAULT_COOKIE,
        on_shutdown: str = "flush",
    ) -> None:
        self.app = app
        self.options = web_options(
            "SegmentMiddleware", user_id, trusted_proxies, anonymous_id_cookie
        )
        if on_shutdown not in SHUTDOWN_ACTIONS:
            raise ValueError(
                f"SegmentMiddleware on_shutdown must be one of {', '.join(SHUTDOWN_ACTIONS)}, "
                f"got {on_shutdown!r}"
            )
        self.on_shutdown = on_shutdown
        self._user_id = self.options.user_id or default_user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan" and self.on_shutdown != "none":
            await _Lifespan(self.app, self.on_shutdown).run(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        user_id = self._user_id
        binding = bind_request(
            lambda: RequestFacts.from_scope(scope), self.options, lambda: user_id(scope)
        )
        try:
            await self.app(scope, receive, send)
        finally:
            unbind_request(binding)


class _Lifespan:
    """One lifespan: passed through to the app, with the delivery before its shutdown answer.

    An app that does not speak the protocol (it raises before reading a message,
    as Django's ASGI handler does, or returns without reading or sending one) gets
    it spoken for it, so that the shutdown still reaches the middleware.
    """

    def __init__(self, app: ASGIApp, action: str) -> None:
        self.app = app
        self.action = action
        self.read: List[str] = []
        self.answered = False
        self.delivered = False

    async def _deliver(self) -> None:
        if not self.delivered:
            self.delivered = True
            await asyncio.get_running_loop().run_in_executor(None, deliver_held, self.action)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_seen() -> Message:
            message = await receive()
            self.read.append(str(message.get("type")))
            return message

        async def send_after_delivery(message: Message) -> None:
            self.answered = True
            if message.get("type") in _SHUTDOWN_ANSWERS:
                await self._deliver()
            await send(message)

        try:
            await self.app(scope, receive_seen, send_after_delivery)
        except Exception:
            if self.read or self.answered:
                raise
            await self._speak_for_the_app(receive, send)
            return
        if not self.read and not self.answered:
            # The common "if scope['type'] != 'http': return": it ignores the lifespan.
            await self._speak_for_the_app(receive, send)
        elif "lifespan.shutdown" in self.read:  # it returned without answering the shutdown
            await self._deliver()

    async def _speak_for_the_app(self, receive: Receive, send: Send) -> None:
        answers: Dict[str, str] = {
            "lifespan.startup": "lifespan.startup.complete",
            "lifespan.shutdown": "lifespan.shutdown.complete",
        }
        while True:
            kind: Optional[str] = (await receive()).get("type")
            if kind == "lifespan.shutdown":
                await self._deliver()
            answer = answers.get(str(kind))
            if answer is not None:
                await send({"type": answer})
            if kind == "lifespan.shutdown":
                return
