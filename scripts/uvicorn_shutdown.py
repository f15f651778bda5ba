"""What a FastAPI app under uvicorn delivers of what it logged, once SIGTERM stops it.

    python scripts/uvicorn_shutdown.py [--requests 400] [--runs 3]

For each ``on_shutdown`` of the ASGI ``SegmentMiddleware`` (``none``: the app
as it was without it), a fresh uvicorn serves a FastAPI app configured at
import (a ``SegmentHandler`` with the default options), four client threads
send the requests (each logs 3 events), then SIGTERM; a LocalCollector stands
for Segment. The table shows the events logged, delivered and lost per run.
Exits 1 when a mode other than ``none`` lost any.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import List

try:
    import segmentio_logging
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import segmentio_logging

from segmentio_logging.testing import LocalCollector

ROOT = Path(__file__).resolve().parent.parent
APP = """
import logging, os
from fastapi import FastAPI
from segmentio_logging import SegmentHandler
from segmentio_logging.contrib.asgi import SegmentMiddleware

log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(SegmentHandler())
app = FastAPI()
app.add_middleware(SegmentMiddleware, on_shutdown=os.environ["ON_SHUTDOWN"])


@app.get("/orders/{n}")
async def order(n: int):
    for step in ("Cart Viewed", "Checkout Started", "Order Completed"):
        log.info(step, extra={"user_id": f"u{n}", "properties": {"n": n}})
    return {"n": n}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit("uvicorn exited before it listened")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/orders/0", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)  # a script, not a test: polling for the port is fine here
    raise SystemExit("uvicorn did not listen in time")


def load(port: int, requests: int) -> None:
    def client(numbers: range) -> None:
        for n in numbers:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/orders/{n}", timeout=20).read()

    threads = [threading.Thread(target=client, args=(range(i, requests, 4),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(mode: str, requests: int, folder: Path) -> int:
    """The events delivered of a run (the probe request's 3 included)."""
    with LocalCollector() as collector:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
        env.update(
            SEGMENT_HOST=collector.url,
            SEGMENT_WRITE_KEY="bench",
            ON_SHUTDOWN=mode,
            PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]),
        )
        args = ["-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen([sys.executable, *args], cwd=folder, env=env)
        try:
            wait_listening(port, process)
            load(port, requests)
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
        return len(collector.messages)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    logged = (args.requests + 1) * 3  # the probe request logs too
    print(f"segmentio-logging {segmentio_logging.__version__}, {args.requests} requests x 3 events")
    print(f"{'on_shutdown':<12} {'run':>3} {'logged':>7} {'delivered':>9} {'lost':>6}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "app.py").write_text(APP, encoding="utf-8")
        for mode in ("none", "flush", "close"):
            for number in range(1, args.runs + 1):
                delivered = run(mode, args.requests, folder)
                lost = logged - delivered
                failed |= mode != "none" and lost != 0
                print(f"{mode:<12} {number:>3} {logged:>7} {delivered:>9} {lost:>6}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
