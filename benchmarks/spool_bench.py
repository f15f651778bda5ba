"""What the disk spool costs the worker: append, read back and remove, per message.

    python benchmarks/spool_bench.py [--batches 200] [--batch-size 100] [--size 300]

Each round appends ``--batches`` batches of ``--batch-size`` messages of about
``--size`` bytes (one transaction each, as the worker does), then reads them
back with ``oldest`` and removes them batch by batch, as after delivery. The
median of ``--repeat`` rounds is printed for each configuration:

- ``spool``: the default, WAL with ``synchronous=NORMAL`` (survives a killed
  process; a power loss may lose the last commits);
- ``spool fsync``: ``fsync=True``, WAL with ``synchronous=FULL`` (each commit
  survives a power loss);
- ``raw rollback``: for reference, plain SQLite with a rollback journal (the
  classic default) doing the same statements, to show what WAL buys.

The spool runs on the worker thread, never on the thread that logs; these
figures are the worker's time per message on top of encoding and sending.

    python benchmarks/spool_bench.py --pipeline [--events 20000] [--calls 2000] [--repeat 5]

measures the whole pipeline instead, ``SegmentHandler`` without and with
``spool_path``, against the local receiver of ``benchmarks/receiver.py`` (in
its own process), in alternating rounds:

- hot path: microseconds per ``logger.info(..., extra=...)`` on the calling
  thread (wall time of a burst of ``--calls``, and that thread's CPU time),
  with the worker running; the burst is delivered before the next one;
- end to end: events per second for ``--events`` events, from the first call
  until the receiver counted them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from segmentio_logging._spool import Spool


def make_batches(batches: int, batch_size: int, size: int) -> List[List[bytes]]:
    out: List[List[bytes]] = []
    for b in range(batches):
        batch = []
        for i in range(batch_size):
            head = {"messageId": f"{b:06d}-{i:04d}-0123456789abcdef", "type": "track"}
            data = json.dumps({**head, "event": "Played a Song", "pad": ""}).encode()
            pad = "x" * max(size - len(data), 0)
            batch.append(json.dumps({**head, "event": "Played a Song", "pad": pad}).encode())
        out.append(batch)
    return out


def run_spool(directory: str, batches: List[List[bytes]], *, fsync: bool) -> Dict[str, float]:
    spool = Spool(directory, max_bytes=1 << 30, fsync=fsync)
    spool.open()
    n = sum(len(batch) for batch in batches)
    payload = sum(len(part) for batch in batches for part in batch)
    batch_size = len(batches[0])

    start = time.perf_counter()
    for batch in batches:
        spool.append(batch)
    appended = time.perf_counter()
    own = spool._own
    assert own is not None
    on_disk = os.path.getsize(own.path) + _size(own.path + "-wal")

    read = remove = 0.0
    while True:
        t0 = time.perf_counter()
        got = spool.oldest(batch_size, 500_000)
        t1 = time.perf_counter()
        if not got:
            break
        spool.remove([key for key, _ in got])
        t2 = time.perf_counter()
        read += t1 - t0
        remove += t2 - t1
    spool.close()
    append = appended - start
    return {
        "append": append / n * 1e6,
        "read": read / n * 1e6,
        "remove": remove / n * 1e6,
        "rate": n / (append + read + remove),
        "disk": on_disk / payload,
    }


def run_raw_rollback(
    directory: str, batches: List[List[bytes]], *, fsync: bool
) -> Dict[str, float]:
    path = os.path.join(directory, "raw.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, created REAL, data BLOB)")
    n = sum(len(batch) for batch in batches)
    payload = sum(len(part) for batch in batches for part in batch)
    batch_size = len(batches[0])
    next_id = 1
    start = time.perf_counter()
    for batch in batches:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(next_id + i, now, part) for i, part in enumerate(batch)],
        )
        conn.execute("COMMIT")
        next_id += len(batch)
    appended = time.perf_counter()
    on_disk = os.path.getsize(path)
    read = remove = 0.0
    while True:
        t0 = time.perf_counter()
        rows = conn.execute(
            "SELECT id, data FROM events ORDER BY id LIMIT ?", (batch_size,)
        ).fetchall()
        t1 = time.perf_counter()
        if not rows:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "SELECT count(*), sum(length(data)) FROM events WHERE id BETWEEN ? AND ?",
            (rows[0][0], rows[-1][0]),
        ).fetchone()
        conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
        conn.execute("COMMIT")
        t2 = time.perf_counter()
        read += t1 - t0
        remove += t2 - t1
    conn.close()
    append = appended - start
    return {
        "append": append / n * 1e6,
        "read": read / n * 1e6,
        "remove": remove / n * 1e6,
        "rate": n / (append + read + remove),
        "disk": on_disk / payload,
    }


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


Runner = Callable[..., Dict[str, float]]

EXTRA = {"user_id": "user-1234", "properties": {"title": "Hey Jude", "plays": 3}}


def _handler(url: str, spool: bool, directory: str, **options: object) -> object:
    import logging

    from segmentio_logging import SegmentHandler

    if spool:
        options["spool_path"] = directory
    handler = SegmentHandler("bench-write-key", host=url, **options)  # type: ignore[arg-type]
    logger = logging.getLogger(f"bench.{'spool' if spool else 'memory'}.{id(handler)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def run_pipeline(args: argparse.Namespace) -> int:
    import gc
    import logging

    from receiver import Receiver

    base = args.dir or tempfile.gettempdir()
    configs = [("memory (no spool_path)", False), ("spool_path", True)]
    hot_wall: Dict[str, List[float]] = {name: [] for name, _ in configs}
    hot_cpu: Dict[str, List[float]] = {name: [] for name, _ in configs}
    rate: Dict[str, List[float]] = {name: [] for name, _ in configs}
    print(
        f"SegmentHandler without and with spool_path; hot path: bursts of {args.calls:,} calls; "
        f"end to end: {args.events:,} events; median of {args.repeat} rounds; "
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, dir {base}"
    )
    with Receiver() as receiver:
        for r in range(args.repeat):
            order = configs if r % 2 == 0 else configs[::-1]
            for name, spool in order:
                directory = tempfile.mkdtemp(prefix="spool-bench-", dir=base)
                try:
                    # Hot path: the worker is running; each burst is delivered before the next.
                    logger, handler = _handler(receiver.url, spool, directory)
                    assert isinstance(logger, logging.Logger)
                    info = logger.info
                    for _ in range(2):  # warm up, then measure
                        handler.flush(60)  # type: ignore[attr-defined]
                        gc.collect()
                        c0 = time.thread_time()
                        t0 = time.perf_counter()
                        for _ in range(args.calls):
                            info("Played a Song", extra=EXTRA)
                        t1 = time.perf_counter()
                        c1 = time.thread_time()
                    handler.flush(60)  # type: ignore[attr-defined]
                    handler.close()  # type: ignore[attr-defined]
                    hot_wall[name].append((t1 - t0) / args.calls * 1e6)
                    hot_cpu[name].append((c1 - c0) / args.calls * 1e6)

                    # End to end: a queue that holds the whole burst, as benchmarks/run.py does.
                    logger, handler = _handler(
                        receiver.url, spool, directory, max_queue_size=args.events
                    )
                    assert isinstance(logger, logging.Logger)
                    info = logger.info
                    start = receiver.count
                    gc.collect()
                    t0 = time.perf_counter()
                    for _ in range(args.events):
                        info("Played a Song", extra=EXTRA)
                    if not receiver.wait_for(start + args.events, timeout=300, poll=0.0005):
                        raise RuntimeError(f"{name}: not every event arrived")
                    rate[name].append(args.events / (time.perf_counter() - t0))
                    handler.close()  # type: ignore[attr-defined]
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
    header = (
        f"{'configuration':<26}{'hot path us/call':>18}{'caller CPU us/call':>20}"
        f"{'end to end events/s':>21}"
    )
    print(header)
    print("-" * len(header))
    for name, _ in configs:
        print(
            f"{name:<26}{statistics.median(hot_wall[name]):>18.2f}"
            f"{statistics.median(hot_cpu[name]):>20.2f}{statistics.median(rate[name]):>21,.0f}"
        )
    return 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--size", type=int, default=300, help="bytes per encoded message")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument(
        "--pipeline", action="store_true", help="SegmentHandler with and without spool_path"
    )
    parser.add_argument("--events", type=int, default=20_000, help="--pipeline: end to end")
    parser.add_argument("--calls", type=int, default=2_000, help="--pipeline: per hot burst")
    args = parser.parse_args(argv)
    if args.pipeline:
        return run_pipeline(args)

    batches = make_batches(args.batches, args.batch_size, args.size)
    n = args.batches * args.batch_size
    configs: List[Tuple[str, Runner, bool]] = [
        ("spool (WAL, NORMAL)", run_spool, False),
        ("spool fsync (WAL, FULL)", run_spool, True),
        ("raw rollback (DELETE, NORMAL)", run_raw_rollback, False),
        ("raw rollback (DELETE, FULL)", run_raw_rollback, True),
    ]
    base = args.dir or tempfile.gettempdir()
    print(
        f"{n:,} messages of ~{args.size} B in batches of {args.batch_size}, "
        f"median of {args.repeat} rounds; Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, dir {base}"
    )
    header = (
        f"{'configuration':<31}{'append us/msg':>14}{'read us/msg':>13}"
        f"{'remove us/msg':>15}{'total us/msg':>14}{'msg/s':>10}{'disk/payload':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, runner, fsync in configs:
        rounds = []
        for _ in range(args.repeat):
            directory = tempfile.mkdtemp(prefix="spool-bench-", dir=base)
            try:
                rounds.append(runner(directory, batches, fsync=fsync))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        total = med["append"] + med["read"] + med["remove"]
        print(
            f"{name:<31}{med['append']:>14.2f}{med['read']:>13.2f}{med['remove']:>15.2f}"
            f"{total:>14.2f}{med['rate']:>10,.0f}{med['disk']:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
