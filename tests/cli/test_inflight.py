"""``import`` sends batches several at once (max_in_flight) and checkpoints them in order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import List

import pytest

from segmentio_logging.cli import main
from segmentio_logging.cli._import import line_message_id

from ..helpers import ScriptedReceiver
from .helpers import import_args, jsonl_events, state_of, write_lines


def test_import_keeps_max_in_flight_requests_going(
    tmp_path: Path, scripted_receiver: ScriptedReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a backlog of lines, the receiver sees max_in_flight import requests at once."""
    monkeypatch.setenv("SEGMENT_MAX_IN_FLIGHT", "4")
    path = write_lines(tmp_path / "events.jsonl", jsonl_events(100))
    scripted_receiver.held.clear()
    done: List[int] = []
    thread = threading.Thread(
        target=lambda: done.append(main(import_args(path, scripted_receiver, "--batch-size=10")))  # type: ignore[arg-type]
    )
    thread.start()
    assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 4)
    scripted_receiver.held.set()
    thread.join(60)
    assert done == [0]
    assert scripted_receiver.max_in_flight == 4
    assert len(scripted_receiver.accepted) == 100
    assert state_of(path)["line"] == 100 and state_of(path)["sent"] == 100


def test_the_checkpoint_stops_before_a_refused_batch(
    tmp_path: Path, scripted_receiver: ScriptedReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused batch holds the checkpoint at the end of the accepted batches before it,
    even when a later batch, sent beside it, was accepted."""
    monkeypatch.setenv("SEGMENT_MAX_IN_FLIGHT", "3")
    lines = jsonl_events(6)
    path = write_lines(tmp_path / "events.jsonl", lines)
    scripted_receiver.refuse_ids = {line_message_id("events.jsonl", 3, lines[2])}
    scripted_receiver.held.clear()
    done: List[int] = []
    thread = threading.Thread(
        target=lambda: done.append(
            main(import_args(path, scripted_receiver, "--batch-size=2", "--retries=0"))  # type: ignore[arg-type]
        )
    )
    thread.start()
    assert scripted_receiver.wait_for(lambda: scripted_receiver.in_flight == 3)
    scripted_receiver.held.set()
    thread.join(60)
    assert done == [1]
    assert sorted(scripted_receiver.answered) == [200, 200, 400]
    assert len(scripted_receiver.accepted) == 4  # the batches of lines 1-2 and 5-6
    assert state_of(path)["line"] == 2
    assert state_of(path)["sent"] == 2
