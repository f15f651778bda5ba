"""What the route to the host costs: new TLS connections, and requests through a proxy.

Against a LocalCollector over TLS (a trustme CA, whose certificate is added to a
copy of the system's bundle, so that loading it costs what a real bundle costs)
and proxy.py, all on 127.0.0.1. Prints milliseconds per new connection when
urllib3 loads the bundle for each connection (``ca_certs=`` given to a pool)
and when the transport's route shares one context, and microseconds per
request over a kept-alive connection: direct, through a CONNECT tunnel, and
forwarded by the proxy (http). Needs the test extra (trustme, proxy.py).
Run ``python benchmarks/connection.py``.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import urllib3  # noqa: E402

from segmentio_logging._connection import route_for  # noqa: E402
from segmentio_logging.testing import LocalCollector  # noqa: E402
from tests.helpers import PrivateCA, ProxyServer  # noqa: E402

BODY = b'{"batch":[{"type":"track","userId":"u","event":"e"}],"sentAt":"2026-01-01T00:00:00Z"}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Basic azo="}


def _post(pool: urllib3.HTTPConnectionPool) -> None:
    response = pool.urlopen("POST", "/v1/batch", body=BODY, headers=HEADERS, retries=False)
    assert response.status == 200, response.status


def _per_new_connection(make_pool: Callable[[], urllib3.HTTPConnectionPool], count: int) -> float:
    """Milliseconds for a new pool's first request (a new TLS connection), on average."""
    started = time.perf_counter()
    for _ in range(count):
        pool = make_pool()
        _post(pool)
        pool.close()
    return (time.perf_counter() - started) / count * 1000


def _per_request(pool: urllib3.HTTPConnectionPool, count: int) -> float:
    """Microseconds per request over the pool's kept-alive connection."""
    _post(pool)  # the connection (and tunnel) is made outside the timing
    started = time.perf_counter()
    for _ in range(count):
        _post(pool)
    return (time.perf_counter() - started) / count * 1_000_000


def _big_bundle(ca: PrivateCA, directory: Path) -> str:
    system = ssl.get_default_verify_paths().cafile
    text = Path(system).read_text() if system and os.path.exists(system) else ""
    path = directory / "bundle.pem"
    path.write_text(text + Path(ca.bundle).read_text())
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ca = PrivateCA(directory / "ca")
        bundle = _big_bundle(ca, directory)
        proxy = ProxyServer(directory / "proxy")
        try:
            with LocalCollector(ssl_context=ca.server_context()) as https, LocalCollector() as http:
                rows = _measure(args, bundle, proxy, https.url, http.url)
        finally:
            proxy.stop()
    width = max(len(label) for label, _, _ in rows)
    print(f"{'what':<{width}} | {'time':>12} | ratio")
    print(f"{'-' * width}-|-{'-' * 12}-|------")
    for label, value, ratio in rows:
        print(f"{label:<{width}} | {value:>12} | {ratio}")


def _measure(
    args: argparse.Namespace, bundle: str, proxy: ProxyServer, https_url: str, http_url: str
) -> List[Tuple[str, str, str]]:
    count = args.connections
    per_connection = _per_new_connection(
        lambda: urllib3.connection_from_url(https_url, ca_certs=bundle, retries=False), count
    )
    route = route_for(https_url, ca_certs=bundle)
    shared = _per_new_connection(lambda: route.new_pool(maxsize=2), count)
    direct = _per_request(route.new_pool(maxsize=2), args.requests)
    tunnel = route_for(https_url, proxy=proxy.url, ca_certs=bundle).new_pool(maxsize=2)
    tunnelled = _per_request(tunnel, args.requests)
    plain = _per_request(route_for(http_url, proxy="").new_pool(maxsize=2), args.requests)
    forwarding = route_for(http_url, proxy=proxy.url).new_pool(maxsize=2)
    forwarded = _per_request(forwarding, args.requests)
    return [
        ("new TLS connection, bundle loaded per connection", f"{per_connection:.1f} ms", "1.00"),
        ("new TLS connection, the route's shared context", f"{shared:.1f} ms",
         f"{shared / per_connection:.2f}"),
        ("request, https direct (kept alive)", f"{direct:.0f} us", "1.00"),
        ("request, https through a CONNECT tunnel", f"{tunnelled:.0f} us",
         f"{tunnelled / direct:.2f}"),
        ("request, http direct (kept alive)", f"{plain:.0f} us", "1.00"),
        ("request, http forwarded by the proxy", f"{forwarded:.0f} us",
         f"{forwarded / plain:.2f}"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
