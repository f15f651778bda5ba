"""A session engine whose store is down: every read of a session raises."""

from __future__ import annotations

from typing import Any, Dict

from django.contrib.sessions.backends.base import SessionBase


class SessionStore(SessionBase):  # type: ignore[misc]
    """Fails as a database session store does when its database is unreachable."""

    def load(self) -> Dict[str, Any]:
        raise ConnectionError("the session store is down")
