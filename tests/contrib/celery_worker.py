"""The Celery app of the worker tests: the docs page's ``tasks.py`` and a few more tasks.

``tasks`` (written from docs/celery-gevent-uwsgi.md) and ``celeryconfig`` (beside
this file: a broker in files) come from the path the test sets.
"""

from __future__ import annotations

from typing import Any, Dict

from tasks import app, log  # type: ignore[import-not-found]

import segmentio_logging


@app.task
def order_shipped(order_id: str) -> str:
    """The second step of a chain: its event carries the identity the first step had."""
    log.info("Order Shipped", extra={"properties": {"order_id": order_id}})
    return order_id


@app.task(bind=True, max_retries=1)
def payment_attempted(self: Any, order_id: str) -> str:
    """Fails once, then succeeds on its retry: both attempts log an event."""
    attempt = self.request.retries
    log.info("Payment Attempted", extra={"properties": {"order_id": order_id, "attempt": attempt}})
    if attempt == 0:
        raise self.retry(countdown=0)
    return order_id


@app.task
def order_failed(order_id: str) -> str:
    """Logs an event and raises: the identity is unbound all the same."""
    log.info("Order Failed", extra={"properties": {"order_id": order_id}})
    raise RuntimeError("card declined")


@app.task
def identity_now() -> Dict[str, Any]:
    """What is bound in the worker for a task sent without an identity."""
    return dict(segmentio_logging.current_identity())
