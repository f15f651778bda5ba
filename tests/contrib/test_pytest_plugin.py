"""The pytest plugin: the ``segment_events`` fixture, run in test sessions of their own."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]


def test_handlers_made_in_the_test_send_to_the_fixture(pytester: pytest.Pytester) -> None:
    """A handler, a Client and init() built in the test deliver to it; flush() returns it all."""
    pytester.makepyfile(
        """
        import logging

        import segmentio_logging
        from segmentio_logging import Client, SegmentHandler


        def test_checkout(segment_events):
            log = logging.getLogger("shop")
            log.setLevel(logging.INFO)
            log.addHandler(SegmentHandler())
            log.info("Order Completed", extra={"user_id": "u1", "properties": {"total": 3}})
            Client().identify(user_id="u1", traits={"plan": "pro"})
            segmentio_logging.init()
            segmentio_logging.track(None, "u2", "Signed Up")
            messages = segment_events.flush()
            assert len(messages) == 3
            [order] = segment_events.events("Order Completed")
            assert order["userId"] == "u1" and order["properties"] == {"total": 3}
            assert sorted(m["event"] for m in segment_events.events()) == [
                "Order Completed", "Signed Up"
            ]
            assert {r.write_key for r in segment_events.collector.requests} == {
                segment_events.write_key
            }
            segment_events.clear()
            assert segment_events.messages == []
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_environment_and_pipelines_are_restored(pytester: pytest.Pytester) -> None:
    """After the test, SEGMENT_HOST is back and the test's handlers are closed."""
    pytester.makepyfile(
        """
        import os

        from segmentio_logging import SegmentHandler

        made = []


        def test_one(segment_events):
            assert os.environ["SEGMENT_HOST"] == segment_events.url
            made.append(SegmentHandler())


        def test_after():
            assert "SEGMENT_HOST" not in os.environ
            assert made[0]._pipeline.closed
        """
    )
    os.environ.pop("SEGMENT_HOST", None)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_wait_for_fails_clearly(pytester: pytest.Pytester) -> None:
    """Waiting for messages that never come fails the test, saying how many came."""
    pytester.makepyfile(
        """
        def test_nothing_sent(segment_events):
            segment_events.wait_for(1, timeout=0.2)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 Segment messages expected within 0.2 s, 0 arrived*"])


def test_a_worker_delivers_on_its_own(pytester: pytest.Pytester) -> None:
    """Without flush(), wait_for() sees what the worker sends in its own time."""
    pytester.makepyfile(
        """
        import logging

        from segmentio_logging import SegmentHandler


        def test_background(segment_events, monkeypatch):
            monkeypatch.setenv("SEGMENT_FLUSH_INTERVAL", "0.01")
            log = logging.getLogger("bg")
            log.addHandler(SegmentHandler())
            log.warning("Alarm Raised", extra={"anonymous_id": "a1"})
            [message] = segment_events.wait_for(1)
            assert message["anonymousId"] == "a1"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_machine_proxy_and_sigterm_are_left_out_of_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY and SEGMENT_PROXY set to a port where nothing listens, the test's
    handler still reaches the collector directly; it installs no SIGTERM handler."""
    nowhere = "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "http_proxy", "SEGMENT_PROXY"):
        monkeypatch.setenv(name, nowhere)
    pytester.makepyfile(
        """
        import logging, signal

        from segmentio_logging import SegmentHandler


        def test_direct(segment_events):
            handler = SegmentHandler()
            assert "direct" in repr(handler._pipeline.transport.route)
            log = logging.getLogger("shop")
            log.addHandler(handler)
            log.warning("Order Completed", extra={"user_id": "u1"})
            [order] = segment_events.flush(10)
            assert order["event"] == "Order Completed"
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_run_without_the_fixture_loads_nothing_of_the_pipeline(
    pytester: pytest.Pytester,
) -> None:
    """The plugin is loaded by its entry point, yet a run not using it imports no collector."""
    pytester.makepyfile(
        """
        import sys


        def test_plain(request):
            assert "segmentio_logging.contrib.pytest_plugin" in sys.modules
            assert request.config.pluginmanager.has_plugin("segmentio_logging")
            assert "segmentio_logging.testing" not in sys.modules
            assert "segmentio_logging._receiver" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    """-p no:segmentio_logging removes the fixture."""
    pytester.makepyfile(
        """
        def test_uses(segment_events):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:segmentio_logging")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'segment_events' not found*"])
