"""Instructions per log call on the caller's thread, counted by valgrind.

    python benchmarks/instructions.py                # no-op, SegmentHandler with/without orjson
    python benchmarks/instructions.py --compare DIR  # also the segmentio_logging package in DIR

On a shared machine the clock moves by 0.05 to 0.1 of a ratio from run to run;
instruction counts move by less than 0.1%. Each contender runs in a child under
``valgrind --tool=callgrind`` twice, with ``--calls`` and with six times as many
calls of ``logger.info("Played a Song", extra={...})``; the difference, per
call, is what one call costs, without the interpreter's start and the import.
The worker is kept asleep (its wake-up set past any queue length), so only the
caller's thread is counted. What instructions do not show: system calls (the
kernel's time), cache misses and waits for the interpreter lock; ``run.py``
measures those, on the clock.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = """
import logging, sys
sys.path.insert(0, sys.argv[1])
kind, calls = sys.argv[2], int(sys.argv[3])
PROPERTIES = {"title": "Hey Jude", "artist": "The Beatles", "plays": 3}
EXTRA = {"user_id": "user-1234", "properties": PROPERTIES}
logger = logging.getLogger("bench")
logger.propagate = False
logger.setLevel(logging.INFO)
if kind == "noop":
    class Noop(logging.Handler):
        def emit(self, record):
            pass
    handler = Noop()
else:
    from segmentio_logging import SegmentHandler, _json
    if kind == "stdlib":
        _json.FAST_JSON = _json.PLAIN_JSON = None
    handler = SegmentHandler("k", host="http://127.0.0.1:9", max_queue_size=10**7,
                             flush_interval=3600)
    pipeline = handler._pipeline
logger.addHandler(handler)
info = logger.info
info("Played a Song", extra=EXTRA)  # starts the worker
if kind != "noop":
    pipeline._wake_at = pipeline.batch_size = 10**9  # and keeps it asleep
for _ in range(200):
    info("Played a Song", extra=EXTRA)
for _ in range(calls):
    info("Played a Song", extra=EXTRA)
import os
os._exit(0)
"""


def instructions(src: str, kind: str, calls: int) -> int:
    """Instructions valgrind counted in a child that made ``calls`` log calls."""
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CHILD,
            src,
            kind,
            str(calls),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def per_call(src: str, kind: str, calls: int) -> int:
    """Instructions one call costs: the difference of a run with six times as many calls."""
    with ThreadPoolExecutor(2) as pool:  # a child each, on the two cores
        long, short = pool.map(lambda n: instructions(src, kind, n), (6 * calls, calls))
    return (long - short) // (5 * calls)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls in the short run")
    parser.add_argument("--compare", metavar="DIR", help="also count the package in DIR")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    sources: Dict[str, str] = {"": ROOT}
    if args.compare:
        sources[" [--compare]"] = os.path.abspath(args.compare)
    noop = per_call(ROOT, "noop", args.calls)
    rows = [("no-op logging.Handler", noop)]
    for suffix, src in sources.items():
        rows.append((f"SegmentHandler [fast]{suffix}", per_call(src, "fast", args.calls)))
        rows.append(
            (f"SegmentHandler, default install{suffix}", per_call(src, "stdlib", args.calls))
        )
    print("| contender | instructions per call | vs no-op |")
    print("|---|---:|---:|")
    for name, count in rows:
        print(f"| {name} | {count:,} | {count / noop:.3f}x |")
    command = "python benchmarks/instructions.py" + (" --compare DIR" if args.compare else "")
    print(f"\n- command: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
