"""A WSGI app for tests/test_uwsgi.py: one event per request, the user from the query string.

uWSGI loads it in its master process and then forks the workers: the event logged
here at load time stays the master's.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, List, Tuple

import segmentio_logging

log = logging.getLogger("shop.uwsgi")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(segmentio_logging.SegmentHandler())  # SEGMENT_* from the environment
log.info("App Loaded", extra={"user_id": "master", "properties": {"pid": os.getpid()}})

StartResponse = Callable[[str, List[Tuple[str, str]]], Any]


def application(environ: Any, start_response: StartResponse) -> Iterable[bytes]:
    user = environ.get("QUERY_STRING") or "anonymous"
    log.info("Page Viewed", extra={"user_id": user, "properties": {"pid": os.getpid()}})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()}\n".encode()]
