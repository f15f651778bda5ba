"""Helpers shared by the command line's tests: running it, posting to it, writing its input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import urllib3

from segmentio_logging.testing import LocalCollector

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, timeout: float = 30, stdin: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    """``python -m segmentio_logging ARGS`` in a child process; ``stdin``, when given, as input."""
    return subprocess.run(
        [sys.executable, "-m", "segmentio_logging", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def child_env() -> Dict[str, str]:
    """The environment of a child process: no SEGMENT_* variable, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def post(url: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> int:
    """POST ``body`` to ``url`` once, without retries; the status of the answer."""
    http = urllib3.PoolManager(retries=False)
    try:
        response = http.request("POST", url, body=body, headers=headers or {}, timeout=5.0)
        return int(response.status)
    finally:
        http.clear()


def write_lines(path: Path, lines: List[str]) -> Path:
    """Write ``lines`` to ``path``, each ending in a newline."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jsonl_events(count: int, start: int = 1) -> List[str]:
    """``count`` JSON Lines of dated track messages, for users ``u{start}`` on."""
    return [
        json.dumps(
            {
                "type": "track",
                "userId": f"u{i}",
                "event": "Ordered",
                "properties": {"n": i},
                "timestamp": f"2021-03-04T05:06:{i % 60:02d}Z",
            }
        )
        for i in range(start, start + count)
    ]


def import_args(path: Path, collector: LocalCollector, *extra: str) -> List[str]:
    """The command line importing ``path`` into ``collector`` without pacing."""
    return ["import", str(path), "--writeKey=k", f"--host={collector.url}", "--rate=0", *extra]


def state_of(path: Path) -> Dict[str, Any]:
    """The import state file next to ``path``."""
    return json.loads(Path(f"{path}.segment-import.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]
