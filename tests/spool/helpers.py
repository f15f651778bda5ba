"""Helpers of the spool tests: encoded events, spools on a directory, orphans, subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from segmentio_logging._errors import SpoolError
from segmentio_logging._spool import Spool

ROOT = Path(__file__).resolve().parent.parent.parent
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock")


def event(n: int, size: int = 0) -> bytes:
    """An encoded message with a recognisable number, padded to ``size`` bytes."""
    data = json.dumps({"messageId": f"m-{n}", "event": "e", "pad": ""}).encode()
    pad = max(size - len(data), 0)
    return json.dumps({"messageId": f"m-{n}", "event": "e", "pad": "x" * pad}).encode()


def number(data: bytes) -> int:
    """The number ``event`` put in ``data``."""
    return int(json.loads(data)["messageId"][2:])


class SpoolReports:
    """Collects what a spool reports: its ``on_drop`` and ``on_error`` calls."""

    def __init__(self) -> None:
        self.drops: List[Tuple[int, str]] = []
        self.errors: List[SpoolError] = []

    def on_drop(self, count: int, reason: str) -> None:
        self.drops.append((count, reason))

    def on_error(self, error: SpoolError) -> None:
        self.errors.append(error)

    @property
    def dropped(self) -> int:
        """Events reported dropped, over every ``on_drop`` call."""
        return sum(count for count, _ in self.drops)


def make(directory: Path, reported: Optional[SpoolReports] = None, **options: Any) -> Spool:
    """A Spool on ``directory`` whose callbacks go to ``reported`` (when given)."""
    if reported is not None:
        options.setdefault("on_drop", reported.on_drop)
        options.setdefault("on_error", reported.on_error)
    return Spool(directory, **options)


def drain(spool: Spool) -> List[int]:
    """Read and remove everything the spool holds; the event numbers in order."""
    seen: List[int] = []
    while True:
        batch = spool.oldest(50, 500_000)
        if not batch:
            return seen
        seen.extend(number(data) for _, data in batch)
        keys = [key for key, _ in batch]
        assert sorted(spool.remove(keys)) == sorted(keys)


def spool_files(directory: Path) -> List[str]:
    """The names of the spool database files in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".sqlite3"))


def run_python(code: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter that imports this checkout; its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_python(code: str) -> subprocess.Popen[str]:
    """Start ``code`` in a new interpreter that imports this checkout, with pipes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def leave_orphan(directory: Path, numbers: range, size: int = 0) -> str:
    """A spool file left by a process that exited with events still stored."""
    spool = Spool(directory, max_bytes=10_000_000)
    spool.append([event(n, size) for n in numbers])
    own = spool._own
    assert own is not None
    path = own.path
    spool.close()
    return os.path.basename(path)
