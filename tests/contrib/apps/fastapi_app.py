"""A FastAPI app configured at import, as deployed: served by uvicorn in the tests."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request

from segmentio_logging import SegmentHandler
from segmentio_logging.contrib.asgi import SegmentMiddleware

log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(SegmentHandler())  # SEGMENT_* from the environment


def user_id(scope: Dict[str, Any]) -> Optional[str]:
    """The user a test names in the X-User-Id header (an app reads its session here)."""
    for name, value in scope["headers"]:
        if name == b"x-user-id":
            return value.decode("latin-1")
    return None


app = FastAPI()
app.add_middleware(SegmentMiddleware, user_id=user_id, trusted_proxies=1)


@app.get("/orders/{n}")
async def order(n: int, request: Request) -> Dict[str, int]:
    for step in ("Cart Viewed", "Checkout Started", "Order Completed"):
        log.info(step, extra={"properties": {"n": n}})
    return {"n": n}


@app.get("/health")
async def health() -> Dict[str, str]:
    return {"status": "ok"}
