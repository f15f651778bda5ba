"""What the drop-in (``segmentio_logging.analytics``) raises, warns and hands to ``on_error``,
as the official client's errors, and each also one of this package's."""

from __future__ import annotations

import json

from ._errors import DeliveryError, InvalidMessage


class ArgumentError(InvalidMessage, AssertionError):
    """A call the official client refuses with ``AssertionError`` (or Segment would reject):
    an ``AssertionError``, as there, and an ``InvalidMessage`` (a ``ValueError``), as here."""


class APIError(DeliveryError):
    """What ``on_error`` gets for a batch the receiver refused: a ``DeliveryError`` with
    the official ``code`` and ``message`` (of the JSON error body, else "unknown" and the text)."""

    code = "unknown"
    message = ""
    response = None  # the official client's requests.Response; there is none here


class UnsupportedSettingWarning(UserWarning):
    """An official setting that this package does not honour; warned once per process."""


def api_error(error: DeliveryError) -> APIError:
    """``error``, a refusal by the receiver, as the official ``APIError``."""
    counts = {"count": error.count, "attempts": error.attempts}
    api_error = APIError(error.reason, status=error.status, body=error.body, **counts)
    try:
        payload = json.loads(error.body)
    except ValueError:
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    api_error.code = str(payload.get("code", "unknown"))
    api_error.message = str(payload.get("message", error.body))
    return api_error
