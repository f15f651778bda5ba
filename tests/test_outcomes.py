"""Tests for ``_outcomes``: the ledger of counters and the user's callbacks."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

from segmentio_logging import DeliveryError, InvalidMessage, QueueFull
from segmentio_logging._outcomes import Callbacks, Ledger, call, messages_of, transport_failure
from segmentio_logging._transport import Response
from segmentio_logging.testing import LocalCollector

from .helpers import Recorder


def test_settle_counts_and_a_batch_only_for_delivered_or_failed_items() -> None:
    """settle() adds to each count; retries alone or drops alone make no batch."""
    ledger = Ledger()
    ledger.settle(delivered=3, retries=1)
    ledger.settle(failed=2)
    ledger.settle(dropped=4)
    ledger.settle(retries=2)
    ledger.settle(batch=True)
    assert (ledger.delivered, ledger.failed, ledger.dropped_worker) == (3, 2, 4)
    assert ledger.retries == 3
    assert ledger.batches == 3
    assert ledger.settled_count() == 9


def test_counts_keep_enqueued_equal_to_the_sum_of_the_outcomes() -> None:
    """enqueued == delivered + failed + dropped + pending, with items queued and in flight."""
    ledger = Ledger()
    ledger.taken = 10
    ledger.dropped_caller = 2
    ledger.settle(delivered=5, failed=1, dropped=1)
    counts = ledger.counts(queued=4)
    assert counts["pending"] == 4 + 3  # queued, and taken but not settled
    assert counts["enqueued"] == (
        counts["delivered"] + counts["failed"] + counts["dropped"] + counts["pending"]
    )
    assert counts["dropped"] == 3


def test_settle_wakes_a_waiter_on_the_condition() -> None:
    """A thread waiting on the ledger's condition wakes when a count moves."""
    ledger = Ledger()
    woke = threading.Event()

    def waiter() -> None:
        with ledger.lock:
            while ledger.delivered == 0:
                ledger.changed.wait(10)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    ledger.settle(delivered=1)
    assert woke.wait(10)
    thread.join(10)


def test_messages_of_decodes_only_what_has_no_message() -> None:
    """A message kept beside its bytes is passed as is; one only encoded is decoded."""
    kept = {"messageId": "a"}
    assert messages_of([kept, None], [b"ignored", b'{"messageId":"b"}']) == [
        kept,
        {"messageId": "b"},
    ]


def test_sent_calls_on_success_with_the_data_and_the_response() -> None:
    """A Response goes to on_success with the batch's messages, built only when needed."""
    successes, failures = Recorder(), Recorder()
    callbacks = Callbacks(1, lambda item: item, successes, failures)
    response = Response(200, {}, "{}", 1)
    callbacks.sent(lambda: [{"messageId": "a"}], response)
    assert successes.calls == [([{"messageId": "a"}], response)]
    assert failures.calls == []


def test_sent_reports_a_failure_to_on_failure_and_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A DeliveryError goes to on_failure and is warned about on stderr."""
    failures = Recorder()
    callbacks = Callbacks(2, lambda item: item, None, failures)
    error = DeliveryError("3 messages not delivered: HTTP 400", count=3, status=400)
    callbacks.sent(lambda: ["m"], error)
    assert failures.calls == [(["m"], error)]
    assert "HTTP 400" in capsys.readouterr().err


def test_sent_without_callbacks_never_builds_the_data() -> None:
    """With no callback set, the messages are not decoded for nobody."""
    callbacks = Callbacks(3, lambda item: item, None, None)

    def data() -> List[Any]:
        raise AssertionError("built for no callback")

    callbacks.sent(data, Response(200, {}, "", 1))


def test_refused_describes_items_and_falls_back_when_describe_raises() -> None:
    """refused() hands on_failure the items as describe shows them, or as they are."""
    failures = Recorder()
    error = InvalidMessage("bad")
    Callbacks(4, lambda item: {"item": item}, None, failures).refused([1, 2], error)

    def broken(item: Any) -> Any:
        raise RuntimeError("cannot describe")

    Callbacks(5, broken, None, failures).refused([3], error)
    assert failures.calls == [([{"item": 1}, {"item": 2}], error), ([3], error)]


def test_full_reports_a_queue_full_with_its_count() -> None:
    """full() tells on_failure how many a full queue dropped, naming max_queue_size."""
    failures = Recorder()
    Callbacks(6, lambda item: item, None, failures).full(7, 100)
    ((data, error),) = failures.calls
    assert data == []
    assert isinstance(error, QueueFull)
    assert error.count == 7
    assert "max_queue_size=100" in error.reason


def test_a_raising_callback_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    """call() swallows what the callback raises and names it on stderr."""

    def broken_callback(data: Any, arg: Any) -> None:
        raise ValueError("oops")

    call(broken_callback, [], None)
    assert "broken_callback raised ValueError: oops" in capsys.readouterr().err


def test_transport_failure_is_a_delivery_error_for_the_whole_batch() -> None:
    """A transport that raised fails its batch with a reason naming the exception."""
    error = transport_failure(5, RuntimeError("boom"))
    assert isinstance(error, DeliveryError)
    assert (error.count, error.attempts) == (5, 0)
    assert "5 messages not delivered: the transport raised RuntimeError: boom" == error.reason


class Unprintable(Exception):
    """An exception whose own str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_callback_raising_an_unprintable_error_is_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """call() reports even an exception whose str() raises, and raises nothing itself."""

    def broken(data: Any, arg: Any) -> None:
        raise Unprintable()

    call(broken, [], None)
    assert "broken raised Unprintable" in capsys.readouterr().err


def test_a_batch_whose_callback_raises_an_unprintable_error_settles(
    collector: LocalCollector,
) -> None:
    """The worker settles the batch and flush() returns True (it once stayed pending)."""
    from segmentio_logging import Client

    def broken(data: Any, response: Any) -> None:
        raise Unprintable()

    client = Client("k", host=collector.url, on_success=broken, flush_interval=0.05)
    try:
        assert client.track(None, "u1", "Played")
        assert client.flush(10) is True
        assert client.stats()["delivered"] == 1
    finally:
        client.shutdown(2)
