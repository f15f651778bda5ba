"""A small FastAPI app for the real-app benchmark: ``uvicorn fastapi_app:app``."""

from __future__ import annotations

from typing import Any, Dict

from events import log_events, stats
from fastapi import FastAPI

app = FastAPI()


@app.get("/play")
async def play(user: str = "user-1234", song: str = "Hey Jude") -> Dict[str, Any]:
    log_events(user, song)
    return {"ok": True}


@app.get("/stats")
async def counters() -> Dict[str, Any]:
    return stats()
