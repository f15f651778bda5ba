"""Identity bound to the current context: identified(), bind()/unbind(), SegmentLoggerAdapter."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any, Dict, List

import pytest

import segmentio_logging
from segmentio_logging import SegmentHandler, SegmentLoggerAdapter, identified


@pytest.fixture
def sent() -> List[Dict[str, Any]]:
    return []


@pytest.fixture
def handler(sent: List[Dict[str, Any]]) -> Any:
    h = SegmentHandler(
        send=False, flush_interval=0.05, on_success=lambda data, _: sent.extend(data)
    )
    yield h
    h.close()


@pytest.fixture
def log(logger: logging.Logger, handler: SegmentHandler) -> logging.Logger:
    logger.handlers[:] = [handler]
    return logger


class TestIdentified:
    def test_records_inside_carry_the_bound_user(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """A record without ids inside the block is sent with the bound user id."""
        with identified(user_id="u1"):
            log.info("Viewed Cart")
        assert handler.flush(5)
        assert [(m["event"], m["userId"]) for m in sent] == [("Viewed Cart", "u1")]

    def test_outside_the_block_records_are_skipped(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """After the block ends the binding is gone: id-less records are skipped again."""
        with identified(user_id="u1"):
            pass
        log.info("no user")
        assert handler.flush(5)
        assert sent == []
        assert handler.stats()["skipped"] == 1

    def test_explicit_extra_wins(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """An id or context key given in extra wins over the bound one."""
        with identified(user_id="u1", context={"ip": "1.1.1.1", "locale": "en"}):
            log.info("x", extra={"user_id": "u2", "context": {"ip": "2.2.2.2"}})
        assert handler.flush(5)
        assert sent[0]["userId"] == "u2"
        assert sent[0]["context"]["ip"] == "2.2.2.2"
        assert sent[0]["context"]["locale"] == "en"

    def test_bindings_nest(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """An inner block adds to the outer one and the outer comes back after it."""
        with identified(user_id="u1", context={"a": 1}):
            with identified(anonymous_id="anon", context={"b": 2}):
                log.info("inner")
            log.info("outer")
        assert handler.flush(5)
        inner, outer = sent
        assert (inner.get("userId"), inner.get("anonymousId")) == ("u1", "anon")
        assert inner["context"]["a"] == 1 and inner["context"]["b"] == 2
        assert "anonymousId" not in outer and "b" not in outer["context"]

    def test_session_id_is_the_anonymous_id(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """session_id= binds the anonymous id, as in the original client."""
        with identified(session_id="s1"):
            log.info("x")
        assert handler.flush(5)
        assert sent[0]["anonymousId"] == "s1"

    def test_bound_context_is_a_snapshot(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """Changing the dict given to identified() afterwards does not change what is sent."""
        context = {"ip": "1.1.1.1"}
        with identified(user_id="u1", context=context):
            context["ip"] = "9.9.9.9"
            log.info("x")
        assert handler.flush(5)
        assert sent[0]["context"]["ip"] == "1.1.1.1"

    def test_rejects_conflicting_anonymous_ids(self) -> None:
        """anonymous_id and session_id with different values is an error."""
        with pytest.raises(ValueError, match="not both"):
            with identified(anonymous_id="a", session_id="b"):
                pass


class TestPropagation:
    def test_follows_a_thread_started_with_a_copied_context(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """A thread run in a copy of the context sees the binding; a plain thread does not."""
        with identified(user_id="u1"):
            context = contextvars.copy_context()
            plain = threading.Thread(target=log.info, args=("plain",))
        copied = threading.Thread(target=context.run, args=(log.info, "copied"))
        for thread in (plain, copied):
            thread.start()
            thread.join(5)
        assert handler.flush(5)
        assert [m["event"] for m in sent] == ["copied"]

    def test_each_asyncio_task_keeps_its_own_identity(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """Concurrent tasks bound to different users never mix them up."""

        async def request(user: str) -> None:
            with identified(user_id=user):
                for step in range(3):
                    await asyncio.sleep(0)
                    log.info("step %d", step, extra={"properties": {"user": user}})

        async def main() -> None:
            await asyncio.gather(*(request(f"u{i}") for i in range(5)))

        asyncio.run(main())
        assert handler.flush(5)
        assert len(sent) == 15
        assert all(m["userId"] == m["properties"]["user"] for m in sent)


class TestBindUnbind:
    def test_bind_until_unbind(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """bind() holds until unbind(token); current_identity() shows what is bound."""
        token = segmentio_logging.bind(user_id="u1")
        try:
            assert segmentio_logging.current_identity()["user_id"] == "u1"
            log.info("bound")
        finally:
            segmentio_logging.unbind(token)
        assert dict(segmentio_logging.current_identity()) == {}
        log.info("unbound")
        assert handler.flush(5)
        assert [m["event"] for m in sent] == ["bound"]


class TestAdapter:
    def test_adapter_adds_the_identity(
        self, log: logging.Logger, handler: SegmentHandler, sent: List[Dict[str, Any]]
    ) -> None:
        """SegmentLoggerAdapter adds its ids and merges the call's extra over its own."""
        adapter = SegmentLoggerAdapter(log, user_id="u1", properties={"source": "adapter"})
        adapter.info("Adapted", extra={"properties": {"call": True}})
        adapter.info("Override", extra={"user_id": "u2"})
        assert handler.flush(5)
        first, second = sent
        assert first["userId"] == "u1" and first["properties"] == {"call": True}
        assert second["userId"] == "u2" and second["properties"] == {"source": "adapter"}
