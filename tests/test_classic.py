"""The module-level classic calls (init, identify, track, ...) on the default client."""

from __future__ import annotations

import inspect
import threading
from typing import Any, Iterator

import pytest

import segmentio_logging
from segmentio_logging import Client, DeliveryError, Response
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import Recorder

CALLS = ("identify", "track", "group", "alias", "page", "screen")


@pytest.fixture(autouse=True)
def _reset_module_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without a default client or callbacks and without SEGMENT_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("SEGMENT_"):
            monkeypatch.delenv(name)
    segmentio_logging.shutdown(timeout=2)
    yield
    segmentio_logging.shutdown(timeout=2)


class TestReadmeExample:
    def test_the_original_readme_example_runs_unchanged(self, collector: LocalCollector) -> None:
        """The original client's README calls, module renamed, deliver identify and track."""
        successes = Recorder()
        failures = Recorder()

        segmentio_logging.init("YOUR_API_KEY", host=collector.url)
        segmentio_logging.on_success(successes)
        segmentio_logging.on_failure(failures)
        segmentio_logging.identify(
            "random_session_id", "ilya@segment.io", {"Subscription Plan": "Free", "Friends": 30}
        )
        segmentio_logging.track(
            "random_session_id",
            "ilya@segment.io",
            "Played a Song",
            {"Artist": "The Beatles", "Song": "Eleanor Rigby"},
        )
        assert segmentio_logging.flush() is True
        segmentio_logging.shutdown()

        assert successes.event.wait(5)
        identify, track = collector.messages
        assert identify["type"] == "identify"
        assert identify["anonymousId"] == "random_session_id"
        assert identify["userId"] == "ilya@segment.io"
        assert identify["traits"] == {"Subscription Plan": "Free", "Friends": 30}
        assert track["type"] == "track"
        assert track["event"] == "Played a Song"
        assert track["properties"] == {"Artist": "The Beatles", "Song": "Eleanor Rigby"}
        assert collector.requests[0].write_key == "YOUR_API_KEY"
        (data, response), *_ = successes.calls
        assert [m["type"] for m in data] == ["identify", "track"]
        assert isinstance(response, Response) and response.status == 200
        assert failures.calls == []

    def test_on_failure_receives_the_data_and_the_error(self, collector: LocalCollector) -> None:
        """A rejected batch calls on_failure(data, error) once, with the status and body."""
        failures = Recorder()
        collector.script(Reply(400, '{"error":"bad batch"}'))
        segmentio_logging.init("key", host=collector.url)
        segmentio_logging.on_failure(failures)
        segmentio_logging.track("sid", "uid", "Played a Song")
        assert segmentio_logging.flush(timeout=5) is True
        assert failures.event.wait(5)
        [(data, error)] = failures.calls
        assert [m["event"] for m in data] == ["Played a Song"]
        assert isinstance(error, DeliveryError)
        assert error.status == 400 and "bad batch" in error.body
        assert segmentio_logging.stats()["failed"] == 1


class TestModuleLevel:
    @pytest.mark.parametrize("name", CALLS)
    def test_module_calls_have_the_client_signatures(self, name: str) -> None:
        """Each module-level call has the Client method's explicit signature (for type checkers)."""
        method = inspect.signature(getattr(Client, name))
        function = inspect.signature(getattr(segmentio_logging, name))
        assert list(function.parameters.values()) == list(method.parameters.values())[1:]
        assert function.return_annotation == method.return_annotation
        assert getattr(segmentio_logging, name).__doc__ == getattr(Client, name).__doc__

    def test_module_calls_forward_every_argument(self, collector: LocalCollector) -> None:
        """Every keyword of every module-level call reaches the message."""
        segmentio_logging.init("k", host=collector.url, flush_interval=0.05)
        context = {"ip": "1.2.3.4"}
        common = {"context": context, "integrations": {"All": True}, "timestamp": 0}
        segmentio_logging.identify(anonymous_id="a", traits={"t": 1}, message_id="m1", **common)
        segmentio_logging.track("s", "u", "E", {"p": 1}, message_id="m2", **common)
        segmentio_logging.group(
            user_id="u", group_id="g", traits={"t": 2}, message_id="m3", **common
        )
        segmentio_logging.alias("old", "u", message_id="m4", **common)
        segmentio_logging.page(user_id="u", category="C", name="P", message_id="m5", **common)
        segmentio_logging.screen(anonymous_id="a", name="S", properties={"q": 1}, **common)
        assert segmentio_logging.flush(5)
        messages = collector.messages
        assert [m["type"] for m in messages] == list(CALLS)
        assert [m["messageId"] for m in messages][:5] == ["m1", "m2", "m3", "m4", "m5"]
        for message in messages:
            assert message["timestamp"] == "1970-01-01T00:00:00.000Z"
            assert message["context"]["ip"] == "1.2.3.4"
            assert message["integrations"] == {"All": True}
        assert messages[2]["groupId"] == "g" and messages[3]["previousId"] == "old"
        assert messages[5]["properties"] == {"q": 1}

    def test_without_init_the_environment_configures_the_client(
        self, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Module-level calls without init build a client from SEGMENT_WRITE_KEY and friends."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "0.05")
        segmentio_logging.track("sid", "uid", "From Env")
        assert segmentio_logging.flush(5)
        [request] = collector.requests
        assert request.write_key == "env-key"
        assert [m["event"] for m in request.messages] == ["From Env"]

    def test_without_init_or_environment_the_error_says_what_to_do(self) -> None:
        """With no init and no SEGMENT_WRITE_KEY, a call raises a ValueError naming both."""
        with pytest.raises(ValueError) as info:
            segmentio_logging.track("sid", "uid", "E")
        assert "init" in str(info.value) and "SEGMENT_WRITE_KEY" in str(info.value)

    def test_init_replaces_and_shuts_down_the_previous_client(
        self, collector: LocalCollector
    ) -> None:
        """A second init delivers the first client's messages; later calls use the new key."""
        first = segmentio_logging.init("key-one", host=collector.url, flush_interval=30)
        segmentio_logging.track("s", "u", "Before")
        segmentio_logging.init("key-two", host=collector.url, flush_interval=0.05)
        segmentio_logging.track("s", "u", "After")
        assert segmentio_logging.flush(5)
        by_key = {r.write_key: [m["event"] for m in r.messages] for r in collector.requests}
        assert by_key == {"key-one": ["Before"], "key-two": ["After"]}
        assert first.track("s", "u", "Late") is None  # the old client is closed

    def test_callbacks_set_before_init_apply_to_the_client(self, collector: LocalCollector) -> None:
        """on_success registered before init is used by the client init creates."""
        successes = Recorder()
        segmentio_logging.on_success(successes)
        segmentio_logging.init("k", host=collector.url, flush_interval=0.05)
        segmentio_logging.track("s", "u", "E")
        assert segmentio_logging.flush(5)
        assert successes.event.wait(5)

    def test_shutdown_resets_the_module(self, collector: LocalCollector) -> None:
        """After shutdown: no client, no callbacks, zeroed stats, and flush is trivially True."""
        successes = Recorder()
        segmentio_logging.init("k", host=collector.url, flush_interval=0.05)
        segmentio_logging.on_success(successes)
        segmentio_logging.track("s", "u", "E")
        before = segmentio_logging.stats()
        assert segmentio_logging.shutdown(timeout=5) is True
        assert successes.event.wait(5)
        assert before["enqueued"] == 1
        after = segmentio_logging.stats()
        assert set(after) == set(before) and not any(after.values())
        assert segmentio_logging.flush() is True
        calls = len(successes.calls)
        segmentio_logging.init("k", host=collector.url, flush_interval=0.05)
        segmentio_logging.track("s", "u", "E2")
        assert segmentio_logging.flush(5)
        assert len(successes.calls) == calls  # the old callback was forgotten

    def test_flush_returns_after_the_callbacks_ran(self, collector: LocalCollector) -> None:
        """flush() returns only once on_success ran for every batch it waited for."""
        finished = threading.Event()

        def slow(data: Any, response: Any) -> None:
            threading.Event().wait(0.3)  # a slow callback, not synchronisation
            finished.set()

        segmentio_logging.init("k", host=collector.url, flush_interval=0.05, on_success=slow)
        segmentio_logging.track("s", "u", "E")
        assert segmentio_logging.flush(5)
        assert finished.is_set()

    def test_a_raising_callback_does_not_stop_delivery(self, collector: LocalCollector) -> None:
        """on_success that raises is reported, and later batches are still delivered."""

        def broken(data: Any, response: Any) -> None:
            raise RuntimeError("callback bug")

        segmentio_logging.init("k", host=collector.url, flush_interval=0.05, on_success=broken)
        segmentio_logging.track("s", "u", "One")
        assert segmentio_logging.flush(5)
        segmentio_logging.track("s", "u", "Two")
        assert segmentio_logging.flush(5)
        assert [m["event"] for m in collector.messages] == ["One", "Two"]
