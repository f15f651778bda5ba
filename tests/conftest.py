"""Fixtures shared by the test suite: local receivers, clients shut down after each test,
and clean logging state."""

from __future__ import annotations

import logging
from typing import Iterator, List

import pytest

from segmentio_logging import Client, SegmentHandler
from segmentio_logging.testing import LocalCollector

from .helpers import ScriptedReceiver


@pytest.fixture
def collector() -> Iterator[LocalCollector]:
    """A LocalCollector on 127.0.0.1, stopped after the test."""
    with LocalCollector() as receiver:
        yield receiver


@pytest.fixture
def scripted_receiver() -> Iterator[ScriptedReceiver]:
    """A ScriptedReceiver on 127.0.0.1 (it counts the requests in flight), stopped after the
    test."""
    with ScriptedReceiver() as server:
        yield server


@pytest.fixture
def clients() -> Iterator[List[Client]]:
    """A list for the Clients a test makes; each is shut down after the test."""
    made: List[Client] = []
    yield made
    for client in made:
        client.shutdown(timeout=5)


@pytest.fixture
def make_handler(collector: LocalCollector) -> Iterator[object]:
    """Build SegmentHandlers pointed at the collector; all are closed after the test."""
    made: List[SegmentHandler] = []

    def make(**options: object) -> SegmentHandler:
        options.setdefault("write_key", "test-key")
        options.setdefault("host", collector.url)
        options.setdefault("flush_interval", 0.05)
        handler = SegmentHandler(**options)  # type: ignore[arg-type]
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> logging.Logger:
    """A fresh logger at DEBUG that does not propagate to the root."""
    log = logging.getLogger(f"tests.{request.node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put logging back as it was: root handlers, levels, and loggers' handlers."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    manager = logging.Logger.manager
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for name, lg in manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, lg in list(manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        if name in saved:
            lg.level, handlers, lg.propagate, lg.disabled = saved[name]
            lg.handlers[:] = handlers
        else:
            lg.handlers.clear()
            lg.setLevel(logging.NOTSET)
            lg.propagate = True
            lg.disabled = False
    manager._clear_cache()
