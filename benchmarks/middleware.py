"""What the web middlewares cost per request, on the caller's thread, as ratios within one run.

    python benchmarks/middleware.py [--requests 20000]

Calls an ASGI and a WSGI app directly (no server, no network), with and
without ``SegmentMiddleware``, on a request with a browser's headers and the
analytics.js cookie: once with a view that logs nothing, once with a view that
logs one event (without the middleware it passes its ids in ``extra``). The
handler builds messages without sending them (``send=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List

try:
    import segmentio_logging
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import segmentio_logging

from segmentio_logging import SegmentHandler
from segmentio_logging.contrib import asgi, wsgi

log = logging.getLogger("bench.web")
HEADERS = {
    "host": "shop.example",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0",
    "cookie": "_ga=GA1.1.1; ajs_anonymous_id=%2275f1c6a0-3f5e-4b8c-9d1e-2a3b4c5d6e7f%22; s=1",
    "referer": "https://shop.example/",
    "x-user-id": "u1",
}
IDS = {"user_id": "u1", "anonymous_id": "75f1c6a0-3f5e-4b8c-9d1e-2a3b4c5d6e7f"}


def asgi_runner(logs: bool, wrapped: bool, requests: int) -> float:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if logs:
            log.info("Cart Viewed", extra=None if wrapped else dict(IDS))

    def user_id(scope: Dict[str, Any]) -> Any:
        return dict(scope["headers"]).get(b"x-user-id", b"").decode() or None

    target: Any = asgi.SegmentMiddleware(app, user_id=user_id) if wrapped else app
    scope = {
        "type": "http",
        "scheme": "https",
        "path": "/cart",
        "raw_path": b"/cart",
        "query_string": b"a=1",
        "client": ("10.0.0.1", 5000),
        "headers": [(k.encode(), v.encode()) for k, v in HEADERS.items()],
    }

    async def loop() -> float:
        start = time.perf_counter()
        for _ in range(requests):
            await target(scope, None, None)
        return time.perf_counter() - start

    return asyncio.run(loop())


def wsgi_runner(logs: bool, wrapped: bool, requests: int) -> float:
    def app(environ: Any, start_response: Any) -> List[bytes]:
        if logs:
            log.info("Cart Viewed", extra=None if wrapped else dict(IDS))
        return [b""]

    def user_id(environ: Dict[str, Any]) -> Any:
        return environ.get("HTTP_X_USER_ID")

    target: Any = wsgi.SegmentMiddleware(app, user_id=user_id) if wrapped else app
    environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in HEADERS.items()}
    environ.update(
        {"PATH_INFO": "/cart", "QUERY_STRING": "a=1", "REMOTE_ADDR": "10.0.0.1"},
        **{"wsgi.url_scheme": "https"},
    )
    start = time.perf_counter()
    for _ in range(requests):
        target(environ, None)
    return time.perf_counter() - start


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    handler = SegmentHandler(send=False, flush_interval=3600, max_queue_size=10**7)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    runners: Dict[str, Callable[[bool, bool, int], float]] = {
        "asgi": asgi_runner,
        "wsgi": wsgi_runner,
    }
    print(f"segmentio-logging {segmentio_logging.__version__}, {args.requests} requests each")
    print(f"{'protocol':<8} {'view':<14} {'bare us':>8} {'wrapped us':>10} {'ratio':>6}")
    for name, runner in runners.items():
        for logs in (False, True):
            runner(logs, True, args.requests // 10)  # warm up
            bare = runner(logs, False, args.requests) / args.requests * 1e6
            wrapped = runner(logs, True, args.requests) / args.requests * 1e6
            view = "logs 1 event" if logs else "logs nothing"
            print(f"{name:<8} {view:<14} {bare:>8.2f} {wrapped:>10.2f} {wrapped / bare:>6.2f}")
    handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
