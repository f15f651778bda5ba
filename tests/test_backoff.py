"""The pipeline-wide backoff: nothing given up while the receiver is down, one probe at a
time, Retry-After pausing every sender, permanent answers failing fast."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, List

import pytest

from segmentio_logging import Client, DeliveryError
from segmentio_logging._backoff import Backoff

from .helpers import Recorder, ScriptedReceiver, closed_url, identity_holds

# Outage tests shorten the caps through the options, so that they run in a moment.
FAST = {"flush_interval": 0.05, "max_backoff": 0.02, "shutdown_timeout": 10}


def make_client(clients: List[Client], url: str, **options: Any) -> Client:
    client = Client("k", host=url, **{**FAST, **options})
    clients.append(client)
    return client


def track(client: Client, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        client.track(user_id=f"u{i}", event="E", message_id=f"m{i}")


def outage_seen(client: Client, count: int = 1) -> bool:
    """Wait until the client's pipeline counted ``count`` failed probes."""
    backoff = client._pipeline.transport.backoff
    end = time.monotonic() + 30
    while backoff.outages < count:
        if time.monotonic() > end:
            return False
        backoff_wait(backoff)
    return True


def backoff_wait(backoff: Backoff) -> None:
    with backoff._cond:
        backoff._cond.wait(0.05)


class TestNothingGivenUp:
    def test_a_long_outage_loses_nothing(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Fifty 503s in a row (more than any retry count of old): every event arrives."""
        scripted_receiver.statuses = [503] * 50
        failures = Recorder()
        client = make_client(clients, scripted_receiver.url, on_failure=failures, batch_size=10)
        track(client, 100)
        assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 100)
        assert client.flush(timeout=30)
        stats = client.stats()
        assert (stats["delivered"], stats["failed"], stats["dropped"]) == (100, 0, 0)
        assert failures.calls == []
        assert identity_holds(stats)

    @pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
    def test_every_retryable_status_waits(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client], status: int
    ) -> None:
        """5xx, 408 and 429 are retried until the receiver takes the batch."""
        scripted_receiver.statuses = [status] * 15
        client = make_client(clients, scripted_receiver.url)
        track(client, 3)
        assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 3)
        assert client.stats()["failed"] == 0

    def test_a_refusing_receiver_is_waited_for_until_shutdown(self, clients: List[Client]) -> None:
        """Connections refused: events wait, and are reported only at the close deadline."""
        failures = Recorder()
        client = make_client(clients, closed_url(), on_failure=failures, shutdown_timeout=0.3)
        track(client, 5)
        assert outage_seen(client, 3)
        assert client.stats()["failed"] == 0
        assert client.shutdown() is False
        stats = client.stats()
        assert stats["failed"] + stats["dropped"] == 5 and identity_holds(stats)
        reasons = [error.reason for _, error in failures.calls]
        assert any("shutdown deadline" in reason for reason in reasons)

    def test_a_hanging_receiver_is_waited_for(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Requests that time out (the receiver hangs) are retried until it answers."""
        scripted_receiver.held.clear()
        client = make_client(clients, scripted_receiver.url, timeout=0.3)
        track(client, 3)
        assert outage_seen(client, 2)
        assert client.stats()["failed"] == 0
        scripted_receiver.held.set()
        assert client.flush(timeout=30)
        assert set(scripted_receiver.accepted) == {"m0", "m1", "m2"}  # perhaps twice: deduplicated
        stats = client.stats()
        assert (stats["delivered"], stats["failed"]) == (3, 0)

    def test_flush_without_a_timeout_does_not_wait_out_an_outage(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """flush() returns False once the receiver is found down; the events stay queued."""
        scripted_receiver.default = 503
        client = make_client(clients, scripted_receiver.url)
        track(client, 4)
        assert client.flush() is False
        stats = client.stats()
        assert stats["pending"] == 4 and stats["failed"] == 0
        scripted_receiver.default = 200
        assert client.flush(timeout=30)
        assert sorted(scripted_receiver.accepted) == ["m0", "m1", "m2", "m3"]

    def test_max_retries_set_gives_a_batch_up(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """max_retries, when set, still gives a batch up after that many retries."""
        scripted_receiver.default = 503
        failures = Recorder()
        client = make_client(clients, scripted_receiver.url, max_retries=2, on_failure=failures)
        track(client, 2)
        assert client.flush(timeout=30)
        assert client.stats()["failed"] == 2
        ((_, error),) = failures.calls
        assert isinstance(error, DeliveryError) and "max_retries=2" in error.reason
        assert error.attempts == 3 and scripted_receiver.answered == [503, 503, 503]


class TestTogether:
    def test_one_probe_at_a_time_while_down(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Once the receiver is known down, a backlog sends one probe at a time, until one
        gets through."""
        scripted_receiver.statuses = [503] * 12
        client = make_client(clients, scripted_receiver.url, max_in_flight=4, batch_size=10)
        track(client, 1)
        assert outage_seen(client)
        track(client, 200, start=1)
        assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 201)
        failed = [
            alone
            for status, alone in zip(scripted_receiver.answered, scripted_receiver.alone)
            if status == 503
        ]
        assert len(failed) == 12 and all(failed)
        assert client.stats()["failed"] == 0

    def test_retry_after_pauses_every_sender(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """A 429 with Retry-After holds back every sender until the pause is over."""
        scripted_receiver.statuses = [429]
        scripted_receiver.headers = {"Retry-After": "0.5"}
        client = make_client(clients, scripted_receiver.url, max_in_flight=4, batch_size=10)
        track(client, 1)
        assert outage_seen(client)
        paused_at = time.monotonic()
        scripted_receiver.headers = {}
        track(client, 100, start=1)
        assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 101)
        assert time.monotonic() - paused_at >= 0.4
        assert scripted_receiver.answered.count(429) == 1

    def test_a_long_retry_after_is_capped(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Retry-After: 3600 waits max_retry_after, then the batch goes through."""
        scripted_receiver.statuses = [503]
        scripted_receiver.headers = {"Retry-After": "3600"}
        client = make_client(clients, scripted_receiver.url, max_retry_after=0.2)
        track(client, 1)
        assert scripted_receiver.wait_for(lambda: scripted_receiver.accepted == ["m0"])
        assert client.stats()["failed"] == 0

    def test_failures_of_requests_already_in_flight_do_not_count_twice(self) -> None:
        """Several requests failing from one outage double the delay once."""
        backoff = Backoff(max_backoff=100)
        epochs = [backoff.wait_turn(lambda: float("inf")) for _ in range(4)]
        assert epochs == [0, 0, 0, 0]
        for epoch in epochs:
            backoff.failed(epoch, base=1.0)
        assert (backoff.outages, backoff.epoch) == (1, 1)
        backoff.answered(1)
        assert not backoff.down


class TestPermanent:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
    def test_permanent_answers_fail_fast(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client], status: int
    ) -> None:
        """400, 401, 403, 404 and 413 (of one message) fail at once, with the status."""
        scripted_receiver.default = status
        failures = Recorder()
        client = make_client(clients, scripted_receiver.url, on_failure=failures)
        track(client, 1)
        assert client.flush(timeout=30)
        ((_, error),) = failures.calls
        assert isinstance(error, DeliveryError)
        assert (error.status, error.attempts, len(scripted_receiver.answered)) == (status, 1, 1)
        assert "rejected" in error.reason


def test_a_spool_keeps_events_through_an_outage(
    scripted_receiver: ScriptedReceiver, clients: List[Client], tmp_path: Path
) -> None:
    """With spool_path, an outage of many failed probes costs disk, not events."""
    scripted_receiver.statuses = [503] * 30
    client = make_client(clients, scripted_receiver.url, spool_path=str(tmp_path / "spool"))
    track(client, 50)
    assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 50)
    assert client.flush(timeout=30)
    stats = client.stats()
    assert (stats["delivered"], stats["failed"], stats["dropped"]) == (50, 0, 0)


class TestDelays:
    @pytest.mark.parametrize("failures", [1, 2, 3, 4, 10])
    def test_jitter_within_bounds(self, failures: int) -> None:
        """The n-th failure waits between half and all of base * 2**(n-1), capped."""
        ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
        delays = []
        for _ in range(50):
            backoff = Backoff(max_backoff=30.0)
            for _ in range(failures):
                delay = backoff.failed(backoff.epoch, base=0.5)
            delays.append(delay)
        assert all(ceiling / 2 - 0.01 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1

    def test_max_backoff_caps_the_delay(self) -> None:
        """However many failures, no pause is longer than max_backoff."""
        backoff = Backoff(max_backoff=2.0)
        delays = [backoff.failed(backoff.epoch, base=1.0) for _ in range(40)]
        assert max(delays) <= 2.0

    def test_retry_after_is_capped_by_max_retry_after(self) -> None:
        """A Retry-After longer than max_retry_after pauses max_retry_after."""
        backoff = Backoff(max_retry_after=120.0)
        assert 119.0 < backoff.failed(0, base=0.5, retry_after=3600) <= 120.0

    def test_a_pause_past_the_limit_gives_up_at_once(self) -> None:
        """wait_turn returns None at once when the pause ends past the caller's limit."""
        backoff = Backoff()
        backoff.failed(0, base=0.5, retry_after=60)
        end = time.monotonic() + 1
        assert backoff.wait_turn(lambda: end) is None

    def test_a_probe_that_does_not_go_lets_another(self) -> None:
        """release() by the probe lets the next caller probe instead."""
        backoff = Backoff()
        backoff.failed(0, base=0.0)
        epoch = backoff.wait_turn(lambda: float("inf"))
        assert epoch == 1
        backoff.release(epoch)
        now = time.monotonic()
        assert backoff.wait_turn(lambda: now + 5) == 1

    def test_one_probe_at_a_time(self) -> None:
        """Once the pause is over, the first caller probes and a second waits for it."""
        backoff = Backoff()
        backoff.failed(0, base=0.0)  # a pause of zero: probing may start at once
        assert backoff.wait_turn(lambda: float("inf")) == 1
        now = time.monotonic()
        assert backoff.wait_turn(lambda: now) is None  # the probe is out: wait, here not at all
        backoff.answered(1)
        assert backoff.wait_turn(lambda: now) == 1  # up again: no waiting


def test_the_documented_example_runs() -> None:
    """The Python example of docs/delivery-network.md runs as written."""
    doc = Path(__file__).resolve().parent.parent / "docs" / "delivery-network.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})
