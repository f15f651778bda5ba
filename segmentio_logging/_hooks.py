"""The user's hooks on each message, on the worker: ``default_context``, then ``before_send``.

Both run after the message was built and before it is encoded for sending, on
the worker thread, never on the caller's. Without either, nothing here runs.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from ._errors import Filtered, InvalidMessage
from ._json import decode_json, error_text
from ._message import Encode, Encoded
from ._message import encode as encode_message
from ._options import BeforeSend


def with_hooks(
    encode: Encode,
    before_send: Optional[BeforeSend],
    default_context: Optional[Dict[str, Any]],
) -> Encode:
    """``encode`` followed by the hooks, or ``encode`` itself when there are none.

    The message is decoded when only its bytes were made (or for ``before_send``,
    which gets a dict of its own), ``default_context`` is merged under its own
    ``context`` (nested dicts merged, the message's values winning),
    ``before_send`` returns what to send, and the result is encoded again, its
    size checked. Raises :class:`Filtered` when ``before_send`` returns None, and
    :class:`InvalidMessage` when it raises or returns something else than a dict.
    """
    if before_send is None and not default_context:
        return encode
    defaults = dict(default_context or {})

    def hooked(item: Any) -> Encoded:
        message, data = encode(item)
        if before_send is not None or message is None:
            # A dict of its own, from the bytes: before_send may change anything in it, and
            # the caller may still hold the message (the client returns it).
            message = decode_json(data)
        else:
            message = dict(message)  # only its context is replaced below
        if defaults:
            own = message.get("context")
            context = merged(defaults, own) if isinstance(own, dict) else dict(defaults)
            # before_send may change the context: then not the defaults' own dicts.
            message["context"] = copy.deepcopy(context) if before_send is not None else context
        if before_send is not None:
            message = _call_before_send(before_send, message)
        # No dict goes on: callbacks decode theirs from these bytes, so none can change the
        # defaults or the caller's message.
        return None, encode_message(message)

    return hooked


def merged(defaults: Dict[str, Any], own: Dict[str, Any]) -> Dict[str, Any]:
    """``own`` over ``defaults``, dict by dict: a nested dict in both is merged the same way,
    any other value in ``own`` wins."""
    result = dict(defaults)
    for key, value in own.items():
        base = result.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            result[key] = merged(base, value)
        else:
            result[key] = value
    return result


def _call_before_send(before_send: BeforeSend, message: Dict[str, Any]) -> Dict[str, Any]:
    try:
        result = before_send(message)
    except Exception as exc:  # the user's code: drop this message, report, go on
        raise InvalidMessage(f"before_send raised {error_text(exc)}") from exc
    if result is None:
        raise Filtered
    if not isinstance(result, dict):
        raise InvalidMessage(f"before_send must return a dict or None, got {type(result).__name__}")
    return result
