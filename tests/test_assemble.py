"""Tests for ``_assemble``: a pipeline built from options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Tuple

import pytest

from segmentio_logging._assemble import make_pipeline
from segmentio_logging._delivery import MemoryDelivery
from segmentio_logging._options import resolve_options
from segmentio_logging._pipeline import already_encoded
from segmentio_logging._spool import SpoolDelivery
from segmentio_logging._transport import NullTransport, Transport


def build(**options: Any) -> Any:
    return make_pipeline(
        resolve_options({"write_key": "k", "host": "http://127.0.0.1:9", **options})
    )


def test_the_options_reach_the_pipeline_and_its_transport() -> None:
    """Batching, queue and shutdown settings go to the pipeline; host and key to the transport."""
    pipeline = build(batch_size=7, flush_interval=2, max_queue_size=50, shutdown_timeout=1)
    try:
        assert (pipeline.batch_size, pipeline.flush_interval) == (7, 2.0)
        assert (pipeline.max_queue_size, pipeline.shutdown_timeout) == (50, 1.0)
        assert type(pipeline.transport) is Transport
        assert pipeline.transport.url == "http://127.0.0.1:9/v1/batch"
        assert pipeline.transport.write_key == "k"
    finally:
        pipeline.close(1)


def test_send_false_builds_a_transport_that_sends_nothing() -> None:
    """send=False: the pipeline's transport is the null one."""
    pipeline = build(send=False)
    try:
        assert isinstance(pipeline.transport, NullTransport)
    finally:
        pipeline.close(1)


def test_memory_by_default_and_the_spool_with_spool_path(tmp_path: Path) -> None:
    """Without spool_path the delivery is in memory; with it, through a spool in that folder."""
    memory = build()
    spooled = build(spool_path=str(tmp_path), spool_max_bytes=1_000_000)
    try:
        assert isinstance(memory.delivery, MemoryDelivery)
        assert isinstance(spooled.delivery, SpoolDelivery)
        assert spooled.delivery.spool.directory == str(tmp_path)
        assert spooled.delivery.spool.max_bytes == 1_000_000
    finally:
        memory.close(1)
        spooled.close(1)


def test_without_hooks_the_encode_step_is_the_one_given() -> None:
    """No before_send and no default_context: nothing wraps the encode step."""

    def encode(item: Any) -> Tuple[Any, bytes]:
        return None, b"{}"

    plain = make_pipeline(resolve_options({"write_key": "k"}), encode)
    default = build()
    try:
        assert plain.encode is encode
        assert default.encode is already_encoded
    finally:
        plain.close(1)
        default.close(1)


@pytest.mark.parametrize(
    "hooks", [{"before_send": "copy.copy"}, {"default_context": {"app": {"name": "shop"}}}]
)
def test_a_hook_wraps_the_encode_step(hooks: Any) -> None:
    """With before_send or default_context set, the encode step runs the hooks after it."""
    pipeline = build(**hooks)
    try:
        assert pipeline.encode is not already_encoded
        message = {"type": "track", "userId": "u", "event": "E", "messageId": "m"}
        data = json.dumps(message).encode()
        _, encoded = pipeline.encode((message, data))
        assert json.loads(encoded)["event"] == "E"
        assert encoded != data  # the hooks ran: a copy, or a context added
    finally:
        pipeline.close(1)
