"""The gunicorn recipe's ``app.py``, preloaded by an arbiter that has already logged an event.

With ``preload_app`` the arbiter imports this module before it forks the workers,
so the workers inherit a handler whose queue holds a message and whose thread
runs: each must start afresh, and the arbiter's message must arrive once.
Responses name the worker that served them, so the test knows both served.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

# The recipe's app.py, which the test writes next to gunicorn.conf.py.
from app import app as readme_app  # type: ignore[import-not-found]

logging.getLogger("shop").info("Arbiter Ready", extra={"anonymous_id": "gunicorn-arbiter"})


def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    def start(status: str, headers: List[Tuple[str, str]], exc_info: Optional[Any] = None) -> Any:
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return readme_app(environ, start)  # type: ignore[no-any-return]
