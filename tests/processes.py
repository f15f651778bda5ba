"""Subprocesses for the end-to-end tests: Python scripts and servers, bounded in time.

Each runs in a session of its own, so that a test ends it together with whatever
it started (pool workers, a forkserver, a server's workers): a module that launches
them calls :func:`reap_launched` after each test (an autouse fixture), so nothing is
left behind whether the test passes, fails or times out.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> Dict[str, str]:
    """This environment without ``SEGMENT_*`` variables, this checkout first on the path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEGMENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_launched: List[subprocess.Popen[str]] = []


def launch(
    args: Sequence[str], env: Dict[str, str], cwd: Optional[Path] = None
) -> subprocess.Popen[str]:
    """Start ``args`` in a new session, its output piped as text."""
    process = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    _launched.append(process)
    return process


def reap_launched() -> None:
    """Kill every session :func:`launch` started that still has a process running."""
    while _launched:
        process = _launched.pop()
        kill_group(process)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def kill_group(process: subprocess.Popen[str]) -> None:
    """Kill the process and everything in its session that is still running."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # all of it ended already
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be refused
        pass


def python(*args: str) -> List[str]:
    """The command line of this interpreter with ``args``."""
    return [sys.executable, *args]


def wait_ready(process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Wait for the script's "ready" line on stdout."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        kill_group(process)
        pytest.fail("the script never said it was ready")
    line = process.stdout.readline().strip()
    if line != "ready":
        kill_group(process)
        err = process.stderr.read() if process.stderr is not None else ""
        pytest.fail(f"the script said {line!r} instead of ready:\n{err}")


def finish(process: subprocess.Popen[str], timeout: float = 30.0) -> Tuple[int, str, str]:
    """Wait for the process to end: its exit status, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        pytest.fail(f"the process did not exit within {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


class Lines:
    """Collects a stream's lines on a thread, so that a chatty server never blocks on it."""

    def __init__(self, stream: Optional[IO[str]]) -> None:
        assert stream is not None, "the stream must be piped"
        self.lines: List[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in iter(stream.readline, ""):
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        except (ValueError, OSError):
            pass  # closed by reap_launched once the process was killed
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> List[re.Match[str]]:
        """The first ``count`` matches of ``pattern``; fails with the output at the timeout."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m is not None]
                if len(found) >= count:
                    return found[:count]
                remaining = end - time.monotonic()
                if remaining <= 0 or self.ended:
                    pytest.fail(f"{count} x {pattern!r} not seen within {timeout} s:\n{self.text}")
                self._changed.wait(min(remaining, 0.5))

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the end of the stream (the process exited)."""
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines[-60:])
