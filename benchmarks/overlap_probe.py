"""Does a sender thread that overlaps preparing the next batch with sending this one pay?

Prepares and sends ``--batches`` batches of 100 plain track events to the
benchmark receiver three ways and prints microseconds per event: in sequence
on one thread (what the worker does), with one sender thread fed through a
one-slot queue, and with two sender threads (two requests in flight). Run
``python benchmarks/overlap_probe.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
from typing import Callable, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from receiver import Receiver  # noqa: E402

from segmentio_logging._capture import RecordMapper  # noqa: E402
from segmentio_logging._transport import Transport  # noqa: E402


def _batch_maker() -> Callable[[], List[bytes]]:
    """A function that encodes one batch of 100 plain track events, as the worker does."""
    mapper = RecordMapper()
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "Played a Song", None, None)
    record.user_id = "user-1234"
    record.properties = {"title": "Hey Jude", "artist": "The Beatles", "plays": 3}
    captured = mapper.capture(record)
    assert captured is not None

    def prepare() -> List[bytes]:
        return [mapper.encode(captured)[1] for _ in range(100)]

    return prepare


def _in_sequence(transport: Transport, prepare: Callable[[], List[bytes]], batches: int) -> float:
    """Seconds to prepare and send ``batches`` batches one after the other on this thread."""
    start = time.perf_counter()
    for _ in range(batches):
        transport.deliver(prepare())
    return time.perf_counter() - start


def _with_senders(
    transport: Transport, prepare: Callable[[], List[bytes]], batches: int, count: int
) -> float:
    """Seconds to prepare ``batches`` batches here while ``count`` sender threads send them."""
    handoff: queue.Queue[Optional[List[bytes]]] = queue.Queue(maxsize=count)

    def send() -> None:
        while True:
            parts = handoff.get()
            if parts is None:
                return
            transport.deliver(parts)

    threads = [threading.Thread(target=send) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for _ in range(batches):
        handoff.put(prepare())
    for _ in threads:
        handoff.put(None)
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    prepare = _batch_maker()

    with Receiver() as receiver:
        transport = Transport(host=receiver.url, write_key="key", gzip=True)
        print("| round | in sequence | 1 sender thread | 2 sender threads |")
        print("|------:|------------:|----------------:|-----------------:|")
        for number in range(1, args.rounds + 1):
            times = [
                _in_sequence(transport, prepare, args.batches),
                _with_senders(transport, prepare, args.batches, 1),
                _with_senders(transport, prepare, args.batches, 2),
            ]
            cells = " | ".join(f"{t / args.batches / 100 * 1e6:.2f} us/event" for t in times)
            print(f"| {number} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
