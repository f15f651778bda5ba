"""How many checked messages per second the receiver behind ``collect`` takes over keep-alive.

    python benchmarks/receiver_speed.py            # LocalCollector + SpecCheck, 5 rounds
    python benchmarks/receiver_speed.py --quick    # 3 short rounds
    python benchmarks/receiver_speed.py --profile  # cProfile of the receiver's side, top 25

The receiver (``LocalCollector`` with the ``SpecCheck`` that ``segmentio-logging collect``
gives it, ``keep=False`` and printing each message to /dev/null as ``collect`` runs it)
listens in this process; clients in other
processes send the same gzip batches of 100 messages, as ``SegmentHandler`` sends them, over
one keep-alive connection each, and count the answers. The figure is messages checked per
second of wall time; the receiver's process CPU per message is printed beside it.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import multiprocessing
import os
import pstats
import socket
import statistics
import sys
import time
from typing import Any, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BATCH = 100


def batch_body(count: int) -> bytes:
    """A gzip batch of ``count`` track messages shaped as the handler sends them."""
    messages = [
        {
            "type": "track",
            "userId": f"user-{i % 97}",
            "event": "Played a Song",
            "properties": {"title": "Hey Jude", "artist": "The Beatles", "plays": i},
            "timestamp": "2026-01-02T03:04:05.678Z",
            "messageId": f"0123456789abcdef0123456789abcdef-{i:08d}",
            "context": {"library": {"name": "segmentio-logging", "version": "0.1.0"}},
        }
        for i in range(count)
    ]
    body = {"batch": messages, "sentAt": "2026-01-02T03:04:06.000Z"}
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def request_bytes(body: bytes) -> bytes:
    head = (
        "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Encoding: gzip\r\nAuthorization: Basic a2V5Og==\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _read_answer(sock: socket.socket, pending: bytes) -> Tuple[int, bytes]:
    """One answer's status, and what was read past it."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        rest += chunk
    return status, rest[length:]


def client(port: int, requests: int, start: Any, done: Any) -> None:
    """In a child process: ``requests`` batches, one at a time, over one connection."""
    payload = request_bytes(batch_body(BATCH))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start.wait()
    pending = b""
    ok = 0
    for _ in range(requests):
        sock.sendall(payload)
        status, pending = _read_answer(sock, pending)
        ok += status == 200
    sock.close()
    done.put(ok)


PROFILES: List[cProfile.Profile] = []


def profile_connections() -> None:
    """Profile every thread that serves a connection (cProfile sees one thread only)."""
    from segmentio_logging._receiver import ReceiverServer

    serve = ReceiverServer._serve

    def profiled(self: Any, request: Any, client_address: Any) -> None:
        profile = cProfile.Profile()
        PROFILES.append(profile)
        profile.runcall(serve, self, request, client_address)

    ReceiverServer._serve = profiled  # type: ignore[method-assign]


def one_round(clients: int, requests: int, output: str) -> Tuple[float, float]:
    """Checked messages per second, and the receiver's process CPU microseconds per message."""
    from segmentio_logging.cli._collect import SpecCheck, _Printer
    from segmentio_logging.testing import LocalCollector

    sink = open(os.devnull, "w", encoding="utf-8")
    printer = None if output == "none" else _Printer(sink, jsonl=output == "jsonl")
    check = SpecCheck(keep=False, on_verdict=printer)
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    start = ctx.Event()
    done: Any = ctx.Queue()
    with LocalCollector(check=check) as collector:
        port = int(collector.url.rsplit(":", 1)[1])
        procs = [
            ctx.Process(target=client, args=(port, requests, start, done)) for _ in range(clients)
        ]
        for p in procs:
            p.start()
        time.sleep(0.3)  # connections accepted, clients ready
        c0 = time.process_time()
        t0 = time.perf_counter()
        start.set()
        ok = sum(done.get(timeout=300) for _ in procs)
        t1 = time.perf_counter()
        c1 = time.process_time()
        for p in procs:
            p.join(10)
        counts = check.counts()
    sink.close()
    expected = clients * requests
    if ok != expected or counts["messages"] != expected * BATCH or counts["invalid"]:
        raise RuntimeError(f"answered {ok} of {expected}; counts {counts}")
    messages = expected * BATCH
    return messages / (t1 - t0), (c1 - c0) / messages * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 3)")
    parser.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--requests", type=int, help="batches per client per round")
    parser.add_argument(
        "--output",
        choices=("text", "jsonl", "none"),
        default="text",
        help="what collect prints of each message, to /dev/null (default text, as collect)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the receiver, top 25")
    parser.add_argument("--src", default=ROOT, help="where to import segmentio_logging from")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.src))
    rounds = args.rounds or (3 if args.quick else 5)
    requests = args.requests or (200 if args.quick else 500)
    rates: List[float] = []
    cpus: List[float] = []
    one_round(args.clients, 20, args.output)  # warm up
    if args.profile:
        profile_connections()
    for _ in range(rounds):
        rate, cpu = one_round(args.clients, requests, args.output)
        rates.append(rate)
        cpus.append(cpu)
    import segmentio_logging

    print(f"receiver: {os.path.dirname(segmentio_logging.__file__)}")
    print(
        f"{args.clients} client(s) x {requests} gzip batches of {BATCH} messages, {rounds} rounds,"
        f" output {args.output} (to /dev/null)"
    )
    print()
    print("| figure | median | range |")
    print("|---|---:|---:|")
    print(
        f"| checked messages/s | {statistics.median(rates):,.0f} |"
        f" {min(rates):,.0f} to {max(rates):,.0f} |"
    )
    print(
        f"| receiver CPU us per message | {statistics.median(cpus):.1f} |"
        f" {min(cpus):.1f} to {max(cpus):.1f} |"
    )
    if PROFILES:
        out = io.StringIO()
        pstats.Stats(*PROFILES, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
