"""The user's hooks on each message, on the worker: ``default_context``, then ``before_send``.

Both run after the message was built and before it is encoded for sending, on
the worker thread, never on the caller's. Without either, nothing here runs.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from ._errors import InvalidMessage
from ._json import decode_json
from ._message import Encode, Encoded
from ._message import encode as encode_message
from ._options import BeforeSend


class Filtered(Exception):
    """``before_send`` returned None: the message is not sent, and that is no error."""


def with_hooks(
    encode: Encode,
    before_send: Optional[BeforeSend],
    default_context: Optional[Dict[str, Any]],
) -> Encode:
    """``encode`` followed by the hooks, or ``encode`` itself when there are none.

    The message is decoded when only its bytes were made, ``default_context`` is
    merged under its own ``context`` (nested dicts merged, the message's values
    winning), ``before_send``
    gets it and returns what to send, and the result is encoded again, its size
    checked. Raises :class:`Filtered` when ``before_send`` returns None, and
    :class:`InvalidMessage` when it raises or returns something else than a dict.
    """
    if before_send is None and not default_context:
        return encode
    defaults = dict(default_context or {})

    def hooked(item: Any) -> Encoded:
        message, data = encode(item)
        # A copy: the caller may still hold the message (the client returns it).
        message = dict(decode_json(data) if message is None else message)
        if defaults:
            own = message.get("context")
            message["context"] = merged(defaults, own) if isinstance(own, dict) else dict(defaults)
            if before_send is not None:  # it may change the context: not the defaults' dicts
                message["context"] = copy.deepcopy(message["context"])
        if before_send is not None:
            message = _call_before_send(before_send, message)
        return message, encode_message(message)

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
        raise InvalidMessage(f"before_send raised {type(exc).__name__}: {exc}") from exc
    if result is None:
        raise Filtered
    if not isinstance(result, dict):
        raise InvalidMessage(f"before_send must return a dict or None, got {type(result).__name__}")
    return result
