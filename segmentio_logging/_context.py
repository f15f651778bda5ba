"""Identity bound to the current context: every record logged inside carries it.

Built on ``contextvars``, so it follows threads started with a copied context
and asyncio tasks exactly as context variables do. Values given explicitly in
a record's ``extra`` win over bound ones.

    with segmentio_logging.identified(user_id="u1", context={"ip": "10.0.0.1"}):
        log.info("Viewed Cart")          # carries userId "u1" and context.ip
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Dict, Iterator, Mapping, MutableMapping, Optional, Tuple

from ._segment import IDENTITY_ATTR
from ._snapshot import snapshot

BINDABLE = ("user_id", "anonymous_id", "context", "integrations")

_identity: ContextVar[Optional[Mapping[str, Any]]] = ContextVar(
    "segmentio_logging_identity", default=None
)


bound_identity = _identity.get  # for the handler: ``None`` when nothing is bound


class BoundIdentityFilter(logging.Filter):
    """Copies the identity bound where a record is logged onto the record.

    A ``QueueHandler`` hands records to a listener thread, where nothing is
    bound: put this filter on the ``QueueHandler`` (it runs on the caller's
    thread) and the ``SegmentHandler`` behind the listener sends each record
    with the identity of the request or task that logged it. Passes every record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        identity = _identity.get()
        if identity:  # a copy, read here: a lazily found user id is looked up on this thread
            setattr(record, IDENTITY_ATTR, dict(identity))
        return True


def current_identity() -> Mapping[str, Any]:
    """What is bound now (an empty mapping when nothing is)."""
    return _identity.get() or {}


def _merged(
    user_id: Any,
    anonymous_id: Any,
    session_id: Any,
    context: Optional[Mapping[str, Any]],
    integrations: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    if anonymous_id is not None and session_id is not None and anonymous_id != session_id:
        raise ValueError("give anonymous_id or session_id, not both")
    for name, value in (("context", context), ("integrations", integrations)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    bound = dict(current_identity())
    if user_id is not None:
        bound["user_id"] = user_id
    if anonymous_id is not None or session_id is not None:
        bound["anonymous_id"] = anonymous_id if anonymous_id is not None else session_id
    if context:
        bound["context"] = {**bound.get("context", {}), **snapshot(dict(context))}
    if integrations:
        bound["integrations"] = {**bound.get("integrations", {}), **snapshot(dict(integrations))}
    return bound


def bind(
    user_id: Any = None,
    anonymous_id: Any = None,
    *,
    session_id: Any = None,
    context: Optional[Mapping[str, Any]] = None,
    integrations: Optional[Mapping[str, Any]] = None,
) -> Token[Optional[Mapping[str, Any]]]:
    """Bind ids (and context fields) until :func:`unbind` with the returned token.

    Bindings nest: inner values are added to outer ones.
    """
    merged = _merged(user_id, anonymous_id, session_id, context, integrations)
    return _identity.set(merged)


def unbind(token: Token[Optional[Mapping[str, Any]]]) -> None:
    """Undo the :func:`bind` that returned ``token``."""
    _identity.reset(token)


@contextmanager
def identified(
    user_id: Any = None,
    anonymous_id: Any = None,
    *,
    session_id: Any = None,
    context: Optional[Mapping[str, Any]] = None,
    integrations: Optional[Mapping[str, Any]] = None,
) -> Iterator[Mapping[str, Any]]:
    """Within the block, records logged without ids carry these.

    Works as ``with identified(user_id=request.user.pk): ...`` in a view, a task
    or an ``async`` handler. Yields what is bound.
    """
    token = bind(
        user_id, anonymous_id, session_id=session_id, context=context, integrations=integrations
    )
    try:
        yield current_identity()
    finally:
        unbind(token)


class SegmentLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A ``LoggerAdapter`` that adds an identity (and any other ``extra``) to each record.

    ``log = SegmentLoggerAdapter(logging.getLogger("shop"), user_id="u1")``;
    ``extra`` given to a call wins over the adapter's.
    """

    def __init__(
        self,
        logger: logging.Logger,
        user_id: Any = None,
        anonymous_id: Any = None,
        **extra: Any,
    ) -> None:
        values = dict(extra)
        if user_id is not None:
            values["user_id"] = user_id
        if anonymous_id is not None:
            values["anonymous_id"] = anonymous_id
        super().__init__(logger, values)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> Tuple[Any, MutableMapping[str, Any]]:
        given = kwargs.get("extra")
        kwargs["extra"] = {**(self.extra or {}), **(given or {})}
        return msg, kwargs
