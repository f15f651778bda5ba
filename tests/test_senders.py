"""Several requests in flight: extra senders under a backlog, one when idle, full batches,
flush and close with several senders, fork."""

from __future__ import annotations

import gc
import os
import sys
import time
import weakref
from typing import Any, List

import pytest

from segmentio_logging import Client

from .helpers import Recorder, ScriptedReceiver, closed_url, identity_holds, make_record
from .hostile import wait_until


def make_client(clients: List[Client], receiver: ScriptedReceiver, **options: Any) -> Client:
    options.setdefault("flush_interval", 0.05)
    options.setdefault("shutdown_timeout", 10)
    client = Client("k", host=receiver.url, **options)
    clients.append(client)
    return client


def track(client: Client, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        client.track(user_id=f"u{i}", event="E", message_id=f"m{i}")


class TestInFlight:
    def test_a_backlog_is_sent_max_in_flight_at_once(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Under a backlog the receiver sees exactly max_in_flight requests at once."""
        client = make_client(clients, scripted_receiver, max_in_flight=3, batch_size=10)
        scripted_receiver.held.clear()
        track(client, 200)
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 3)
        scripted_receiver.held.set()
        assert client.flush(timeout=30)
        assert scripted_receiver.max_in_flight == 3
        assert sorted(scripted_receiver.accepted) == sorted(f"m{i}" for i in range(200))
        stats = client.stats()
        assert stats["delivered"] == 200 and identity_holds(stats)

    def test_idle_sends_one_request_at_a_time(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """A quiet application sends one request at a time, on one connection."""
        client = make_client(clients, scripted_receiver, max_in_flight=8)
        for i in range(5):
            track(client, 1, start=i)
            assert client.flush(timeout=10)
        assert scripted_receiver.max_in_flight == 1
        assert scripted_receiver.connections == 1
        assert len(scripted_receiver.accepted) == 5

    def test_a_deep_queue_sends_full_batches(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Once a backlog is queued, each request takes batch_size messages."""
        client = make_client(
            clients, scripted_receiver, max_in_flight=2, batch_size=50, flush_interval=30
        )
        scripted_receiver.held.clear()
        track(client, 50)  # a full batch wakes the worker: its request waits at the receiver
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 1)
        track(client, 500, start=50)
        scripted_receiver.held.set()
        assert client.flush(timeout=30)
        assert scripted_receiver.batches == [50] * 11

    def test_the_pool_keeps_a_connection_per_request_in_flight(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Two backlogs in a row reuse max_in_flight kept-alive connections."""
        client = make_client(clients, scripted_receiver, max_in_flight=4, batch_size=10)
        for wave in range(2):
            scripted_receiver.held.clear()
            track(client, 100, start=wave * 100)
            assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 4)
            scripted_receiver.held.set()
            assert client.flush(timeout=30)
        assert scripted_receiver.connections == 4
        assert len(scripted_receiver.accepted) == 200

    def test_callbacks_hear_of_every_concurrent_batch(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """on_success is called once per request, whichever sender sent it."""
        successes = Recorder()
        client = make_client(
            clients, scripted_receiver, max_in_flight=4, batch_size=10, on_success=successes
        )
        scripted_receiver.held.clear()
        track(client, 120)
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 4)
        scripted_receiver.held.set()
        assert client.flush(timeout=30)
        sent = [m["messageId"] for data, _ in successes.calls for m in data]
        assert sorted(sent) == sorted(f"m{i}" for i in range(120))
        assert client.stats()["batches"] == len(successes.calls) == len(scripted_receiver.batches)

    def test_close_ends_every_sender_at_the_deadline(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """close() with requests held by the receiver returns by shutdown_timeout; the
        counters still add up and nothing is reported delivered that was not."""
        client = make_client(
            clients,
            scripted_receiver,
            max_in_flight=3,
            batch_size=10,
            shutdown_timeout=0.5,
            timeout=30,
        )
        scripted_receiver.held.clear()
        track(client, 100)
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 3)
        assert client.shutdown() is False
        stats = client.stats()
        scripted_receiver.held.set()
        assert identity_holds(stats)
        assert stats["delivered"] == 0
        assert stats["dropped"] + stats["failed"] + stats["pending"] == 100


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_a_forked_child_starts_afresh_with_its_own_senders(
    scripted_receiver: ScriptedReceiver, clients: List[Client]
) -> None:
    """A child forked while the parent's senders are busy sends its own events only."""
    client = make_client(clients, scripted_receiver, max_in_flight=3, batch_size=10)
    scripted_receiver.held.clear()
    track(client, 100)
    assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 3)
    pid = os.fork()
    if pid == 0:  # the child: exits with its verdict, never returns into pytest
        code = 1
        try:
            stats = client.stats()
            if stats["enqueued"] == 0:
                # Not shared: the child's copy of the receiver is inert.
                scripted_receiver.held.set()
                track(client, 30, start=1000)
                ok = client.flush(timeout=20)
                stats = client.stats()
                code = 0 if ok and stats["delivered"] == 30 and identity_holds(stats) else 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    scripted_receiver.held.set()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert client.flush(timeout=30)
    ids = set(scripted_receiver.accepted)
    assert {f"m{i}" for i in range(100)} <= ids
    assert {f"m{i}" for i in range(1000, 1030)} <= ids


class TestFullBatches:
    def test_what_comes_in_during_a_request_waits_to_fill_a_batch(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """Under load each request carries a full batch: events logged while one is in
        flight are not sent alone as it ends, but once a batch of them is queued."""
        client = make_client(clients, scripted_receiver, batch_size=10, flush_interval=30)
        scripted_receiver.held.clear()
        track(client, 10)  # a full batch wakes the worker
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 1)
        track(client, 5, start=10)  # meanwhile
        scripted_receiver.held.set()
        assert wait_until(lambda: client.stats()["delivered"] == 10)  # the worker is back
        track(client, 5, start=15)  # now a batch is queued: it goes at once
        assert scripted_receiver.wait_for(lambda: len(scripted_receiver.accepted) == 20, 10)
        assert scripted_receiver.batches == [10, 10]

    def test_a_flush_sends_what_is_queued_whatever_its_size(
        self, scripted_receiver: ScriptedReceiver, clients: List[Client]
    ) -> None:
        """A flush does not wait for batches to fill: the partial rest goes at once."""
        client = make_client(clients, scripted_receiver, batch_size=10, flush_interval=30)
        scripted_receiver.held.clear()
        track(client, 10)
        assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 1)
        track(client, 15, start=10)
        scripted_receiver.held.set()
        assert client.flush(timeout=10)
        assert sorted(scripted_receiver.batches) == [5, 10, 10]


class TestHeldBatches:
    def test_a_batch_waiting_out_an_outage_holds_bytes_not_the_records(
        self, make_handler: Any
    ) -> None:
        """Once a batch is encoded its captures are let go: while it waits for a receiver
        that is down, what the records held (a value read at encoding) is freed."""

        class Song:
            def __str__(self) -> str:
                return "Hey Jude"

        song = Song()
        freed = weakref.ref(song)
        handler = make_handler(host=closed_url(), shutdown_timeout=0.5)
        handler.handle(make_record("Played", user_id="u1", properties={"song": song}))
        del song
        end = time.monotonic() + 10
        while freed() is not None and time.monotonic() < end:
            time.sleep(0.01)
            gc.collect()
        assert freed() is None
        assert handler.stats()["pending"] == 1  # the batch still waits for the receiver
