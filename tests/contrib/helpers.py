"""Helpers of the integration tests: a server process whose output is watched, HTTP requests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytest

from segmentio_logging.testing import LocalCollector

ROOT = Path(__file__).resolve().parents[2]
WRITE_KEY = "contrib-key"


def child_env(collector: LocalCollector, *paths: Path, **extra: str) -> Dict[str, str]:
    """A server process's environment: SEGMENT_* toward the collector, ``paths`` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    path = [*map(str, paths), str(ROOT), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        SEGMENT_HOST=collector.url,
        SEGMENT_WRITE_KEY=WRITE_KEY,
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class ServerProcess:
    """A server in a subprocess; its output is read in a thread and can be waited on."""

    def __init__(self, args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: List[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, ""):
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails with the output at the timeout."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found is not None:
                        return found
                remaining = end - time.monotonic()
                if remaining <= 0 or self.closed:
                    pytest.fail(f"{pattern!r} not seen within {timeout} s:\n{self.text[-4000:]}")
                self._cond.wait(min(remaining, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig``, wait for the exit; kill (and fail) if it does not come."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"the server did not exit within {timeout} s of signal {sig}")
        self._thread.join(5)
        return status

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def get(url: str, headers: Optional[Mapping[str, str]] = None, timeout: float = 20.0) -> str:
    """GET ``url`` with ``headers``; the body's text (fails on any status but 200)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body.decode("utf-8")


def by_event(messages: List[Dict[str, Any]], event: str) -> List[Dict[str, Any]]:
    return [m for m in messages if m.get("type") == "track" and m.get("event") == event]
