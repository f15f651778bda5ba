"""What every view of the real-app benchmark does: three events, by the way the app is run.

``REALAPP_MODE`` chooses how: ``none`` (the same ``logger.info`` calls, to a
``NullHandler``), ``handler`` (a ``SegmentHandler`` on the logger) or ``official``
(``segment-analytics-python``'s ``Client.track`` in the view instead of logging).
``REALAPP_URL`` is the receiver. ``REALAPP_NO_ORJSON=1`` runs ``SegmentHandler`` as
it runs without the ``fast`` extra.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict

MODE = os.environ.get("REALAPP_MODE", "none")
URL = os.environ.get("REALAPP_URL", "http://127.0.0.1:9")
WRITE_KEY = "realapp-write-key"

logger = logging.getLogger("realapp.events")
logger.setLevel(logging.INFO)
logger.propagate = False
_handler: Any = None
_client: Any = None
_logged = 0  # events this process logged (one thread at a time serves a request here)


def _full_batches_only() -> None:
    """An experiment on the worker (``--experiment full-batches``): after the first batch
    of a wake, send another only while a full one is queued; a partial one waits for the
    next wake (``batch_size`` reached, ``flush_interval``, a flush or the close)."""
    from segmentio_logging._pipeline import Pipeline

    def drain(self: Any) -> None:
        first = True
        while first or self.closed or len(self._queue) >= self.batch_size:
            first = False
            items = self.take()
            if not items:
                return
            self._process(items)
            self.report_full()

    Pipeline.drain = drain  # type: ignore[method-assign]


if MODE == "handler":
    if os.environ.get("REALAPP_NO_ORJSON"):
        from segmentio_logging import _json

        _json.FAST_JSON = _json.PLAIN_JSON = None
    from segmentio_logging import SegmentHandler

    if os.environ.get("REALAPP_FULL_BATCHES"):
        _full_batches_only()

    # REALAPP_HANDLER_OPTIONS: a JSON object of SegmentHandler options, for exploring.
    _handler = SegmentHandler(
        WRITE_KEY, host=URL, **json.loads(os.environ.get("REALAPP_HANDLER_OPTIONS") or "{}")
    )
    logger.addHandler(_handler)
elif MODE == "official":
    from segment.analytics import Client

    logging.getLogger("segment").setLevel(logging.CRITICAL)
    _client = Client(WRITE_KEY, host=URL)
else:
    logger.addHandler(logging.NullHandler())


def log_events(user: str, song: str) -> None:
    """The three events of one request."""
    global _logged
    _logged += 3
    page = {"path": "/play", "song": song}
    played = {"title": song, "artist": "The Beatles", "plays": 3}
    cart = {"sku": "album-1968", "price": 12.5, "currency": "EUR"}
    if _client is not None:
        _client.track(user_id=user, event="Viewed Page", properties=page)
        _client.track(user_id=user, event="Played a Song", properties=played)
        _client.track(user_id=user, event="Added to Cart", properties=cart)
        return
    logger.info("Viewed Page", extra={"user_id": user, "properties": page})
    logger.info("Played a Song", extra={"user_id": user, "properties": played})
    logger.info("Added to Cart", extra={"user_id": user, "properties": cart})


def stats() -> Dict[str, Any]:
    """The handler's counters (or the official client's queue), for the benchmark."""
    if _handler is not None:
        return {"logged": _logged, **_handler.stats()}
    if _client is not None:
        return {"logged": _logged, "queued": _client.queue.qsize()}
    return {"logged": _logged}
