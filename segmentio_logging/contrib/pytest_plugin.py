"""The pytest plugin: a ``segment_events`` fixture that receives what the code under test sends.

Loaded by pytest through the ``pytest11`` entry point (disable it with
``-p no:segmentio_logging``). It loads no collector until a test asks for the
fixture; loading it imports the package itself (its ``__init__`` imports the
handler and the pipeline, tens of milliseconds).

    def test_checkout(segment_events):
        checkout("u1")                          # logs through a SegmentHandler it builds
        [event] = segment_events.flush()
        assert event["event"] == "Order Completed"
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

import pytest

if TYPE_CHECKING:
    from ..testing import LocalCollector

__all__ = ["WRITE_KEY", "SegmentEvents", "segment_events"]

WRITE_KEY = "segment-events-test-key"


class SegmentEvents:
    """What the handlers and clients created in a test sent, received by a LocalCollector.

    The test's ``SEGMENT_HOST`` and ``SEGMENT_WRITE_KEY`` point at the collector,
    so every ``SegmentHandler``, ``Client`` and ``init()`` made during the test,
    from options it does not set itself, sends there. One made before the test
    (at import, by ``dictConfig`` in a module-level setup) keeps its own host:
    pass ``host=segment_events.url`` to it, or build it inside the test.
    """

    def __init__(self, collector: LocalCollector) -> None:
        self.collector = collector

    @property
    def url(self) -> str:
        """The collector's URL, for a ``host=`` option."""
        return self.collector.url

    @property
    def write_key(self) -> str:
        """The write key the test's environment gives."""
        return WRITE_KEY

    def _pipelines(self) -> List[Any]:
        from .. import _lifecycle

        prefix = self.collector.url + "/"
        found = []
        for pipeline in _lifecycle.live_pipelines():
            transport = getattr(pipeline, "transport", None)
            if str(getattr(transport, "url", "")).startswith(prefix):
                found.append(pipeline)
        return found

    def flush(self, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Deliver what every pipeline sending here holds; then :attr:`messages`.

        Fails the test when a pipeline does not settle within ``timeout`` seconds.
        """
        for pipeline in self._pipelines():
            if not pipeline.flush(timeout):
                pytest.fail(f"{pipeline!r} did not deliver within {timeout} s")
        return self.messages

    @property
    def messages(self) -> List[Dict[str, Any]]:
        """Every message received so far (accepted requests), in order of arrival."""
        return self.collector.messages

    def events(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """The ``track`` messages received so far, only those named ``name`` if given."""
        return [
            message
            for message in self.messages
            if message.get("type") == "track" and (name is None or message.get("event") == name)
        ]

    def wait_for(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until ``count`` messages arrived (sent by a worker in its own time);
        fails the test at the timeout."""
        if not self.collector.wait_for_messages(count, timeout):
            pytest.fail(
                f"{count} Segment messages expected within {timeout} s, "
                f"{len(self.messages)} arrived"
            )
        return self.messages

    def clear(self) -> None:
        """Forget what was received so far."""
        self.collector.clear()

    def close(self, timeout: float = 2.0) -> None:
        """Close the pipelines that send here: the collector is about to stop."""
        for pipeline in self._pipelines():
            pipeline.close(timeout)

    def __repr__(self) -> str:
        return f"<SegmentEvents {self.url} messages={len(self.messages)}>"


def _straight_to_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy between the test and its collector: a machine's HTTP_PROXY would
    otherwise carry the test's requests, and its write key, to a corporate proxy."""
    monkeypatch.delenv("SEGMENT_PROXY", raising=False)
    hosts = [os.environ.get(name, "") for name in ("no_proxy", "NO_PROXY")]
    bypass = ",".join([*(h for h in hosts if h), "127.0.0.1", "localhost"])
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, bypass)


@pytest.fixture
def segment_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[SegmentEvents]:
    """A LocalCollector that the Segment handlers and clients created in the test send to."""
    from ..testing import LocalCollector

    with LocalCollector() as collector:
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
        _straight_to_the_collector(monkeypatch)
        # A handler made in a test must not take over the test runner's SIGTERM.
        monkeypatch.setenv("SEGMENT_HANDLE_SIGTERM", "false")
        if os.environ.get("SEGMENT_SEND", "").strip().lower() in ("0", "false", "no", "off"):
            monkeypatch.delenv("SEGMENT_SEND")  # a test that asks for events wants them sent
        events = SegmentEvents(collector)
        try:
            yield events
        finally:
            events.close()
