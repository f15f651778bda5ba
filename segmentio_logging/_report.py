"""Warnings about the pipeline itself, written to stderr and rate-limited.

Never through ``logging``: the worker must not wait on the logging module's
lock (``dictConfig`` holds it while closing handlers), and a handler that logs
about itself feeds its own input.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Dict, Tuple

WARN_INTERVAL = 10.0

_lock = threading.Lock()
_last: Dict[str, Tuple[float, int]] = {}


def after_fork_in_child() -> None:
    """Another thread may have held the lock at the fork (the worker calls this)."""
    global _lock
    _lock = threading.Lock()


def warn(key: str, text: str, interval: float = WARN_INTERVAL) -> None:
    """Print ``text`` unless a warning with the same ``key`` went out less than ``interval`` ago."""
    now = time.monotonic()
    with _lock:
        last, suppressed = _last.get(key, (-interval, 0))
        if now - last < interval:
            _last[key] = (last, suppressed + 1)
            return
        _last[key] = (now, 0)
    if suppressed:
        text += f" ({suppressed} similar warning{'s' if suppressed > 1 else ''} suppressed)"
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(f"segmentio_logging: {text}\n")
            stream.flush()
    except Exception:  # a closed or broken stderr must not break the caller
        pass
