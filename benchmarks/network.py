"""Delivery over a network: late or failing receivers, ours beside the official client.

    python benchmarks/network.py            # full run (about 20 minutes)
    python benchmarks/network.py --quick    # short run (about 5 minutes)
    python benchmarks/network.py --sweep    # ours: batch_size x max_in_flight at 100 ms

Each case runs in a fresh process against a receiver in another process, on
127.0.0.1, that waits ``delay`` before each answer (a round trip to a
receiver far away: 20, 100, 250 ms), or answers 503 (or 429 with
``Retry-After``) for a while. Contenders: this package with its default
options, the official ``segment-analytics-python`` client with its defaults,
and the official client tuned by hand (``thread=8, upload_size=2500``).
Measured: events/s the receiver took, events dropped (or lost), and the time
from the receiver's recovery to the last event delivered. Needs the ``bench``
extra. Prints a Markdown table, with the goals beside it; the two
as-fast-as-possible rows are medians of rounds that alternate them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from receiver import OK, _decoded_batch, _parse_head, _reply, _Stream  # noqa: E402

WRITE_KEY = "bench-write-key"
PROPERTIES = {"title": "Hey Jude", "artist": "The Beatles", "plays": 3}
CONTENDERS = ("ours", "official", "official tuned")
TUNED = {"thread": 8, "upload_size": 2500}


# --------------------------------------------------------------------------- the receiver


class Shared:
    """What the receiver process and the benchmark share: counts and how to answer."""

    def __init__(self, ctx: Any) -> None:
        self.count = ctx.RawValue("q", 0)  # messages accepted
        self.requests = ctx.RawValue("q", 0)
        self.last = ctx.RawValue("d", 0.0)  # time.monotonic() of the last accepted batch
        self.delay = ctx.RawValue("d", 0.0)  # seconds before each answer
        self.status = ctx.RawValue("i", 200)  # what every request is answered
        self.retry_after = ctx.RawValue("i", 0)  # Retry-After of a 429 or 503, 0: none
        self.port = ctx.RawValue("i", 0)
        self.lock = ctx.Lock()


def _answer_one(head: Any, body: bytes, shared: Shared) -> bytes:
    status = shared.status.value
    if status != 200:
        extra = f"Retry-After: {shared.retry_after.value}\r\n" if shared.retry_after.value else ""
        text = f"HTTP/1.1 {status} Unavailable\r\n{extra}Content-Length: 2\r\n\r\n{{}}"
        return text.encode("ascii")
    if head.method != b"POST":
        return _reply("404 Not Found", b"{}")
    batch = _decoded_batch(body, head.gzipped)
    with shared.lock:
        shared.count.value += len(batch)
        shared.requests.value += 1
        shared.last.value = time.monotonic()
    return OK


def _serve_connection(conn: socket.socket, shared: Shared) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = _Stream(conn)
    try:
        while True:
            raw = stream.read_head()
            if raw is None:
                return
            head = _parse_head(raw)
            body = stream.read_body(head.length)
            if body is None:
                return
            delay = shared.delay.value
            if delay:
                time.sleep(delay)  # the round trip to a receiver far away
            conn.sendall(_answer_one(head, body, shared))
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def serve(shared: Shared, ready: Any) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    shared.port.value = listener.getsockname()[1]
    ready.set()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn, shared), daemon=True).start()


# --------------------------------------------------------------------------- one case


@dataclass
class Case:
    name: str
    delay: float
    rate: float  # events a second; 0: as fast as the caller can
    seconds: float  # how long events are offered (rate > 0), or
    events: int = 0  # how many (rate == 0)
    outage: Optional[Tuple[int, int, float]] = None  # status, Retry-After, seconds from start
    big_queue: bool = False  # a queue that holds every event (throughput, not drops)
    goal: str = ""


@dataclass
class Result:
    offered: int = 0
    delivered: int = 0
    dropped: int = 0
    rate: float = 0.0
    recover: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def _make(
    contender: str, url: str, case: Case, options: Dict[str, Any]
) -> Tuple[Callable[[int], bool], Callable[[], int]]:
    """``track(i) -> accepted`` and ``dropped()`` of one contender (ours with ``options``)."""
    queue = {"max_queue_size": case.events + 10} if case.big_queue else {}
    if contender == "ours":
        import segmentio_logging

        client = segmentio_logging.Client(WRITE_KEY, host=url, **queue, **options)

        def ours(i: int) -> bool:
            client.track(user_id=f"user-{i}", event="Played a Song", properties=PROPERTIES)
            return True

        return ours, lambda: client.stats()["dropped"]
    import logging

    from segment.analytics import Client

    logging.getLogger("segment").setLevel(logging.CRITICAL)  # its queue-full lines
    tuned = TUNED if contender == "official tuned" else {}
    official = Client(WRITE_KEY, host=url, **tuned, **queue)
    refused = [0]

    def theirs(i: int) -> bool:
        ok, _ = official.track(user_id=f"user-{i}", event="Played a Song", properties=PROPERTIES)
        if not ok:
            refused[0] += 1
        return bool(ok)

    return theirs, lambda: refused[0]


class _Recovery:
    """When the receiver recovered, and when it had every event offered until then."""

    def __init__(self) -> None:
        self.at: Optional[float] = None
        self.backlog = 0
        self.caught_up: Optional[float] = None

    def recover(self, shared: Shared, offered: int) -> None:
        shared.status.value, shared.retry_after.value = 200, 0
        self.at, self.backlog = time.monotonic(), offered

    def check(self, shared: Shared) -> None:
        if self.at is not None and self.caught_up is None and shared.count.value >= self.backlog:
            self.caught_up = time.monotonic()


def _offer(
    track: Callable[[int], bool], case: Case, shared: Shared, began: float, recovery: _Recovery
) -> int:
    """Offer the case's events, paced; returns how many were offered."""
    if case.rate <= 0:
        for i in range(case.events):
            track(i)
        return case.events
    offered = 0
    total = int(case.rate * case.seconds)
    outage_end = began + case.outage[2] if case.outage else None
    while offered < total:
        now = time.monotonic()
        if outage_end is not None and now >= outage_end and recovery.at is None:
            recovery.recover(shared, offered)
        recovery.check(shared)
        due = min(int((now - began) * case.rate) + 1, total)
        while offered < due:
            track(offered)
            offered += 1
        time.sleep(0.005)
    return offered


def run_case(contender: str, case: Case, out: Any, options: Dict[str, Any]) -> None:
    """In a fresh process: one contender through one case; puts a Result on ``out``."""
    ctx = multiprocessing.get_context("spawn")
    shared = Shared(ctx)
    ready = ctx.Event()
    receiver = ctx.Process(target=serve, args=(shared, ready), daemon=True)
    receiver.start()
    ready.wait(30)
    shared.delay.value = case.delay
    if case.outage:
        shared.status.value, shared.retry_after.value = case.outage[0], case.outage[1]
    url = f"http://127.0.0.1:{shared.port.value}"
    track, dropped = _make(contender, url, case, options)
    recovery = _Recovery()
    began = time.monotonic()
    offered = _offer(track, case, shared, began, recovery)
    if case.outage and recovery.at is None:  # offered faster than the outage lasts
        time.sleep(max(began + case.outage[2] - time.monotonic(), 0.0))
        recovery.recover(shared, offered)
    lost = dropped()
    end = time.monotonic() + max(30.0, case.outage[1] + 10 if case.outage else 0)
    while shared.count.value < offered - lost and time.monotonic() < end:
        recovery.check(shared)
        time.sleep(0.01)
    recovery.check(shared)
    result = Result(offered=offered, delivered=shared.count.value, dropped=dropped())
    elapsed = max(shared.last.value - began, 1e-9)
    result.rate = result.delivered / elapsed
    if recovery.at is not None and recovery.caught_up is not None:
        result.recover = recovery.caught_up - recovery.at
    out.put(result)
    out.close()
    out.join_thread()  # the result is written before the process ends
    receiver.terminate()
    os._exit(0)  # the contender's threads may still be retrying: do not wait for them


def measure(
    contender: str, case: Case, limit: float, options: Optional[Dict[str, Any]] = None
) -> Result:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=run_case, args=(contender, case, out, options or {}))
    process.start()
    try:
        return out.get(timeout=limit)  # type: ignore[no-any-return]
    except Exception:
        return Result(notes=["no result in time"])
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------------- the table


def cases(quick: bool) -> List[Case]:
    long = 5.0 if quick else 60.0
    short = 5.0 if quick else 20.0
    count = 40_000 if quick else 150_000
    outage = 5.0 if quick else 30.0
    return [
        Case("loopback, as fast as possible", 0.0, 0, 0, count, big_queue=True),
        Case(
            "100 ms, as fast as possible",
            0.1,
            0,
            0,
            count,
            big_queue=True,
            goal="within 20% of loopback",
        ),
        Case("20 ms, 5,000/s", 0.02, 5000, short),
        Case("100 ms, 5,000/s", 0.1, 5000, long, goal="0 dropped"),
        Case("250 ms, 5,000/s", 0.25, 5000, short),
        Case(
            "100 ms, burst 30,000/s for 5 s", 0.1, 30_000, 2.0 if quick else 5.0, goal="0 dropped"
        ),
        Case(
            f"503 for {outage:g} s, 20/s",
            0.02,
            20,
            outage + 5,
            outage=(503, 0, outage),
            goal="all delivered",
        ),
        Case(
            f"429 Retry-After 3 for {outage:g} s, 20/s",
            0.02,
            20,
            outage + 5,
            outage=(429, 3, outage),
            goal="all delivered",
        ),
    ]


def measure_import(delay: float, lines: int) -> Tuple[int, float]:
    """``segmentio-logging import FILE --rate 0`` of ``lines`` lines against a receiver
    ``delay`` away: messages the receiver took, and messages a second."""
    import json
    import subprocess
    import tempfile

    ctx = multiprocessing.get_context("spawn")
    shared = Shared(ctx)
    ready = ctx.Event()
    receiver = ctx.Process(target=serve, args=(shared, ready), daemon=True)
    receiver.start()
    ready.wait(30)
    shared.delay.value = delay
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "events.jsonl")
        with open(path, "w", encoding="utf-8") as stream:
            for i in range(lines):
                line = {
                    "type": "track",
                    "userId": f"u{i}",
                    "event": "Imported",
                    "properties": PROPERTIES,
                    "timestamp": "2021-03-04T05:06:07Z",
                }
                stream.write(json.dumps(line) + "\n")
        url = f"http://127.0.0.1:{shared.port.value}"
        command = [
            sys.executable,
            "-m",
            "segmentio_logging",
            "import",
            path,
            f"--writeKey={WRITE_KEY}",
            f"--host={url}",
            "--rate=0",
            "--no-progress",
        ]
        began = time.monotonic()
        subprocess.run(command, capture_output=True, timeout=600, check=False, cwd=ROOT)
        elapsed = shared.last.value - began
    count = int(shared.count.value)
    receiver.terminate()
    return count, count / max(elapsed, 1e-9)


def measure_throughput(
    pair: List[Case], contenders: List[str], rounds: int
) -> Dict[Tuple[str, str], Result]:
    """The two as-fast-as-possible cases, alternated over ``rounds``: the median of each,
    so that a machine shared with other work weighs on both alike."""
    runs: Dict[Tuple[str, str], List[Result]] = {}
    for _ in range(rounds):
        for contender in contenders:
            for case in pair:
                runs.setdefault((case.name, contender), []).append(measure(contender, case, 300))
    return {
        key: sorted(results, key=lambda r: r.rate)[len(results) // 2]
        for key, results in runs.items()
    }


SWEEP = [(100, 1), (100, 8), (250, 8), (500, 4), (500, 8), (1000, 8), (2500, 4), (2500, 8)]


def sweep(quick: bool) -> int:
    """Events/s of this package at 100 ms for each batch_size and max_in_flight."""
    count = 40_000 if quick else 100_000
    case = Case("100 ms, as fast as possible", 0.1, 0, 0, count, big_queue=True)
    loopback = Case("loopback", 0.0, 0, 0, count, big_queue=True)
    print("| batch_size | max_in_flight | events/s at 100 ms | events/s on loopback |")
    print("|---:|---:|---:|---:|")
    for batch_size, in_flight in SWEEP:
        options = {"batch_size": batch_size, "max_in_flight": in_flight}
        far = measure("ours", case, 300, options)
        near = measure("ours", loopback, 300, options)
        print(f"| {batch_size} | {in_flight} | {far.rate:,.0f} | {near.rate:,.0f} |", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short cases (about 2 minutes)")
    parser.add_argument("--only", choices=CONTENDERS, action="append", help="these contenders")
    parser.add_argument(
        "--sweep", action="store_true", help="ours only: batch_size x max_in_flight at 100 ms"
    )
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args.quick)
    contenders = args.only or list(CONTENDERS)
    print(
        "| case | contender | offered | delivered | dropped or lost | events/s | recovery | goal |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    rates: Dict[Tuple[str, str], float] = {}
    throughput = measure_throughput(cases(args.quick)[:2], contenders, 2 if args.quick else 3)
    for case in cases(args.quick):
        for contender in contenders:
            limit = case.seconds + (case.outage[2] if case.outage else 0) + 120
            if (case.name, contender) in throughput:
                result = throughput[(case.name, contender)]
            else:
                result = measure(contender, case, limit)
            rates[(case.name, contender)] = result.rate
            lost = result.offered - result.delivered
            recover = f"{result.recover:.1f} s" if result.recover is not None else ""
            goal = case.goal if contender == "ours" else ""
            notes = f" {'; '.join(result.notes)}" if result.notes else ""
            print(
                f"| {case.name} | {contender} | {result.offered:,} | {result.delivered:,} | "
                f"{lost:,} | {result.rate:,.0f} | {recover} | {goal}{notes} |",
                flush=True,
            )
    lines = 50_000 if args.quick else 200_000
    taken, speed = measure_import(0.1, lines)
    print(
        f"| import --rate 0, 100 ms | ours | {lines:,} | {taken:,} | {lines - taken:,} | "
        f"{speed:,.0f} |  | at least 10,000/s |",
        flush=True,
    )
    for contender in contenders:
        near = rates.get(("100 ms, as fast as possible", contender), 0.0)
        base = rates.get(("loopback, as fast as possible", contender), 0.0)
        if base:
            print(f"\n{contender}: 100 ms / loopback = {near / base:.2f}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
