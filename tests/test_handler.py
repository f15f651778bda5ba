"""SegmentHandler and SegmentQueueListener: configuration, mapping through logging, safety."""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import os
import queue
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from segmentio_logging import (
    BoundIdentityFilter,
    Client,
    InvalidMessage,
    MessageTooLarge,
    SegmentHandler,
    SegmentQueueListener,
    identified,
)
from segmentio_logging.testing import LocalCollector, Reply

from .helpers import Recorder, closed_url

# Targets for the dotted-path callback options below.
FAILURES: List[Tuple[Any, Any]] = []
FAILED = threading.Event()


def record_failure(data: Any, error: Any) -> None:
    FAILURES.append((data, error))
    FAILED.set()


@pytest.fixture
def failures() -> Iterator[List[Tuple[Any, Any]]]:
    """The module-level failure list, emptied before and after the test."""
    FAILURES.clear()
    FAILED.clear()
    yield FAILURES
    FAILURES.clear()
    FAILED.clear()


def handlers_of(*loggers: logging.Logger) -> List[logging.Handler]:
    return [h for lg in loggers for h in lg.handlers]


def close_segment_handlers(*loggers: logging.Logger) -> None:
    for handler in handlers_of(*loggers):
        if isinstance(handler, SegmentHandler):
            handler.close()


class TestHandlerClass:
    def test_a_plain_handler_not_a_queue_handler(self) -> None:
        """SegmentHandler is a logging.Handler and not a QueueHandler (dictConfig on 3.12+)."""
        assert issubclass(SegmentHandler, logging.Handler)
        assert not issubclass(SegmentHandler, logging.handlers.QueueHandler)

    def test_stats_has_the_documented_counters(self, make_handler: Any) -> None:
        """stats() reports enqueued, delivered, failed, dropped and skipped, all zero at first."""
        stats = make_handler().stats()
        for name in ("enqueued", "delivered", "failed", "dropped", "skipped"):
            assert stats[name] == 0

    def test_the_repr_shows_the_host_and_not_the_key(self, make_handler: Any) -> None:
        """repr names the host and level and keeps the write key out."""
        handler = make_handler(write_key="very-secret-key")
        assert handler.options.host in repr(handler)
        assert "very-secret-key" not in repr(handler)


class TestDictConfig:
    def configure(self, collector: LocalCollector, **segment: Any) -> SegmentHandler:
        handler_config: Dict[str, Any] = {
            "class": "segmentio_logging.SegmentHandler",
            "write_key": "dict-key",
            "host": collector.url,
            "batch_size": 5,
            "flush_interval": 0.05,
            **segment,
        }
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
                "handlers": {"segment": handler_config},
                "loggers": {
                    "dictapp": {"handlers": ["segment"], "level": "DEBUG", "propagate": False}
                },
            }
        )
        [handler] = logging.getLogger("dictapp").handlers
        assert isinstance(handler, SegmentHandler)
        return handler

    def test_custom_keyword_options(self, collector: LocalCollector) -> None:
        """dictConfig passes write_key, host, batch_size and flush_interval to the handler."""
        handler = self.configure(collector)
        try:
            assert handler.options.write_key == "dict-key"
            assert handler.options.batch_size == 5
            assert handler.options.flush_interval == 0.05
            logging.getLogger("dictapp").info("Configured", extra={"user_id": "u1"})
            assert handler.flush(5)
            [request] = collector.requests
            assert request.write_key == "dict-key"
            assert [m["event"] for m in request.messages] == ["Configured"]
        finally:
            handler.close()

    @pytest.mark.parametrize("prefix", ["", "ext://"])
    def test_on_failure_as_a_dotted_path(
        self, prefix: str, collector: LocalCollector, failures: List[Any]
    ) -> None:
        """on_failure given as a dotted path (or ext://) is imported and called on failure."""
        handler = self.configure(collector, on_failure=f"{prefix}{__name__}.record_failure")
        try:
            assert handler.options.on_failure is sys.modules[__name__].record_failure
            collector.script(Reply(400, '{"error":"nope"}'))
            logging.getLogger("dictapp").info("Rejected", extra={"user_id": "u1"})
            assert handler.flush(5)
            assert FAILED.wait(5)
            [(data, error)] = failures
            assert data[0]["event"] == "Rejected" and error.status == 400
        finally:
            handler.close()

    def test_level_and_formatter_keys(self, collector: LocalCollector) -> None:
        """The level and formatter keys apply: records below the level are not sent."""
        handler = self.configure(collector, level="INFO", formatter="plain")
        try:
            assert handler.level == logging.INFO
            assert isinstance(handler.formatter, logging.Formatter)
            log = logging.getLogger("dictapp")
            log.debug("Too Low", extra={"user_id": "u1"})
            log.info("Kept", extra={"user_id": "u1"})
            assert handler.flush(5)
            assert [m["event"] for m in collector.messages] == ["Kept"]
        finally:
            handler.close()

    def test_an_invalid_option_fails_the_configuration(self, collector: LocalCollector) -> None:
        """dictConfig reports a bad option by name and leaves no half-built handler behind."""
        with pytest.raises(ValueError) as info:
            self.configure(collector, batch_size=0)
        assert "batch_size" in str(info.value.__cause__)
        # logging.shutdown (at exit, or in the next dictConfig) flushes every registered handler.
        registered = [ref() for ref in logging._handlerList]  # type: ignore[attr-defined]
        for handler in registered:
            if isinstance(handler, SegmentHandler):
                assert handler.flush(1) in (True, False)

    def test_a_ca_bundle_that_is_not_pem_leaves_no_half_built_handler(
        self, collector: LocalCollector, tmp_path: Path
    ) -> None:
        """A setting that fails past the option checks (a CA file that is not PEM) raises
        before the handler joins logging's list: logging.shutdown finds nothing broken."""
        bundle = tmp_path / "ca.pem"
        bundle.write_text("not a certificate\n", encoding="utf-8")
        before = len(logging._handlerList)  # type: ignore[attr-defined]
        with pytest.raises(ValueError):
            SegmentHandler("key", host="https://127.0.0.1:9", ca_certs=str(bundle))
        registered = [ref() for ref in logging._handlerList[before:]]  # type: ignore[attr-defined]
        assert not [h for h in registered if isinstance(h, SegmentHandler)]

    def test_file_config_with_kwargs(self, collector: LocalCollector, tmp_path: Path) -> None:
        """fileConfig builds the handler from a kwargs= line."""
        ini = tmp_path / "logging.ini"
        ini.write_text(
            textwrap.dedent(
                f"""
                [loggers]
                keys=root,fileapp

                [handlers]
                keys=segment

                [formatters]
                keys=

                [logger_root]
                handlers=

                [logger_fileapp]
                level=INFO
                handlers=segment
                propagate=0
                qualname=fileapp

                [handler_segment]
                class=segmentio_logging.SegmentHandler
                level=INFO
                args=()
                kwargs={{"write_key": "ini-key", "host": "{collector.url}", "flush_interval": 0.05}}
                """
            )
        )
        logging.config.fileConfig(ini, disable_existing_loggers=False)
        [handler] = logging.getLogger("fileapp").handlers
        try:
            assert isinstance(handler, SegmentHandler)
            logging.getLogger("fileapp").info("From INI", extra={"session_id": "s1"})
            assert handler.flush(5)
            [request] = collector.requests
            assert request.write_key == "ini-key"
            assert request.messages[0]["anonymousId"] == "s1"
        finally:
            handler.close()


class TestMapping:
    def test_every_call_type(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Each reserved extra key leads to the right call type with Segment's field names."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("Played a Song", extra={"user_id": "u1", "properties": {"artist": "Beatles"}})
        logger.info("ignored text", extra={"user_id": "u1", "event": "Named Event"})
        logger.info("Identified", extra={"user_id": "u1", "traits": {"plan": "Free"}})
        logger.info("Grouped", extra={"user_id": "u1", "group_id": "g1", "traits": {"n": 1}})
        logger.info("Aliased", extra={"user_id": "u1", "previous_id": "anon-1"})
        logger.info("Home", extra={"user_id": "u1", "segment_type": "page", "category": "Docs"})
        logger.info("Settings", extra={"anonymous_id": "a1", "segment_type": "screen"})
        assert handler.flush(5)
        track, named, identify, group, alias, page, screen = collector.messages
        assert track["type"] == "track" and track["event"] == "Played a Song"
        assert track["properties"] == {"artist": "Beatles"}
        assert named["type"] == "track" and named["event"] == "Named Event"
        assert identify["type"] == "identify" and identify["traits"] == {"plan": "Free"}
        assert group["type"] == "group" and group["groupId"] == "g1"
        assert group["traits"] == {"n": 1}
        assert alias["type"] == "alias" and alias["previousId"] == "anon-1"
        assert page["type"] == "page" and page["name"] == "Home"
        assert page["category"] == "Docs"
        assert screen["type"] == "screen" and screen["name"] == "Settings"
        assert screen["anonymousId"] == "a1"
        for message in collector.messages:
            assert message["context"]["library"]["name"] == "segmentio-logging"
            assert message["timestamp"].endswith("Z") and message["messageId"]

    @pytest.mark.parametrize("key", ["session_id", "anonymous_id"])
    def test_seed_and_segment_names_for_the_anonymous_id(
        self, key: str, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """extra session_id (the seed's name) and anonymous_id both become anonymousId."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("Visited", extra={key: "anon-7"})
        assert handler.flush(5)
        [message] = collector.messages
        assert message["anonymousId"] == "anon-7" and "userId" not in message

    def test_the_formatted_message_is_the_event(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A track event without event= is the record's message with its arguments."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("Bought %d items", 3, extra={"user_id": "u1"})
        assert handler.flush(5)
        assert collector.messages[0]["event"] == "Bought 3 items"

    def test_records_without_an_id_are_skipped_and_counted(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Records with no user or anonymous id are not events: skipped, counted, never sent."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("plain log line")
        logger.warning("another", extra={"properties": {"a": 1}})
        logger.info("Event", extra={"user_id": "u1"})
        assert handler.flush(5)
        stats = handler.stats()
        assert stats["skipped"] == 2
        assert stats["enqueued"] == stats["delivered"] == 1
        assert [m["event"] for m in collector.messages] == ["Event"]

    def test_properties_are_snapshot_at_emit(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Changing a properties dict after logging does not change what is sent."""
        handler = make_handler(flush_interval=30)
        logger.addHandler(handler)
        properties = {"items": ["a"]}
        logger.info("Cart", extra={"user_id": "u1", "properties": properties})
        properties["items"].append("b")
        properties["late"] = 1
        assert handler.flush(5)
        assert collector.messages[0]["properties"] == {"items": ["a"]}


class LogsWhenPrinted:
    """An object whose __str__ logs to a logger: the re-entrancy hazard."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.calls = 0

    def __str__(self) -> str:
        self.calls += 1
        if self.calls > 50:  # a safety net so that a failing test cannot hang
            return "recursed"
        self.log.info("logged from __str__", extra={"user_id": "inner"})
        return "printed"


class AddUser(logging.Filter):
    """Adds a user id to every record, as apps that tag records with the current user do."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.user_id = "u-filter"
        return True


class TestFeedbackLoops:
    def test_the_handlers_own_traffic_never_becomes_events(
        self, make_handler: Any, collector: LocalCollector
    ) -> None:
        """Root and urllib3 at DEBUG, a filter adding user_id: only the app records are sent."""
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        handler = make_handler(batch_size=10)
        handler.addFilter(AddUser())
        root.addHandler(handler)
        app = logging.getLogger("tests.feedback.app")
        for i in range(5):
            app.info("App Event %d", i)
            assert handler.flush(5)  # five separate requests, each logging through urllib3
        # Records from the package's own loggers, on the app's thread, are ignored too.
        logging.getLogger("urllib3.connectionpool").debug("not an event")
        logging.getLogger("segmentio_logging._pipeline").info("not an event")
        assert handler.flush(5)
        requests = len(collector.requests)
        assert 1 <= requests <= 5
        # Nothing more is sent: no request feeds another.
        assert not collector.wait_for(lambda c: len(c._requests) > requests, timeout=0.5)
        events = [m["event"] for m in collector.messages]
        assert events == [f"App Event {i}" for i in range(5)]
        assert all(m["userId"] == "u-filter" for m in collector.messages)
        assert handler.stats()["ignored"] >= 2

    def test_str_that_logs_does_not_recurse(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """An object in properties whose __str__ logs to the same logger is converted once."""
        handler = make_handler()
        logger.handlers[:] = [handler]
        hazard = LogsWhenPrinted(logger)
        logger.info("Outer", extra={"user_id": "u1", "properties": {"obj": hazard}})
        assert handler.flush(5)
        [message] = collector.messages
        assert message["properties"] == {"obj": "printed"}
        assert hazard.calls == 1

    @pytest.mark.parametrize("sync_mode", [False, True])
    def test_str_of_an_argument_that_logs_does_not_recurse(
        self,
        sync_mode: bool,
        make_handler: Any,
        logger: logging.Logger,
        collector: LocalCollector,
    ) -> None:
        """A message argument whose __str__ logs is formatted once, on the caller's thread too."""
        handler = make_handler(sync_mode=sync_mode)
        # Only this handler: another one (pytest attaches its capture handler to
        # non-propagating loggers) would format the record outside the guard.
        logger.handlers[:] = [handler]
        hazard = LogsWhenPrinted(logger)
        logger.info("Saw %s", hazard, extra={"user_id": "u1"})
        assert handler.flush(5)
        assert [m["event"] for m in collector.messages] == ["Saw printed"]
        assert hazard.calls == 1


class BrokenFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("filter bug")


class TestNeverRaises:
    def test_a_broken_filter_goes_to_handle_error(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A filter that raises does not reach the app: handleError, on_failure and a count."""
        failures = Recorder()
        handler = make_handler(on_failure=failures)
        handler.addFilter(BrokenFilter())
        handled: List[logging.LogRecord] = []
        handler.handleError = handled.append  # type: ignore[method-assign]
        logger.addHandler(handler)
        logger.info("Event", extra={"user_id": "u1"})  # must not raise
        assert [r.getMessage() for r in handled] == ["Event"]
        [(_, error)] = failures.calls
        assert isinstance(error, InvalidMessage) and "filter bug" in error.reason
        assert handler.stats()["dropped"] == 1

    def test_a_broken_record_goes_to_handle_error(self, make_handler: Any) -> None:
        """A record missing standard attributes does not raise out of handle or emit."""
        handler = make_handler()
        handled: List[logging.LogRecord] = []
        handler.handleError = handled.append  # type: ignore[method-assign]
        record = logging.makeLogRecord({"msg": "Event", "user_id": "u1"})
        del record.created
        handler.handle(record)
        handler.emit(record)
        assert handled == [record, record]
        assert handler.stats()["dropped"] == 2

    def test_a_bad_extra_value_is_reported_not_raised(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """properties that are not a dict drop that record with a reason; the next is sent."""
        failures = Recorder()
        handler = make_handler(on_failure=failures)
        logger.addHandler(handler)
        logger.info("Bad", extra={"user_id": "u1", "properties": "not a dict"})
        logger.info("Good", extra={"user_id": "u1"})
        assert handler.flush(5)
        assert failures.event.wait(5)
        [(_, error)] = failures.calls
        assert "properties must be a dict" in error.reason
        assert [m["event"] for m in collector.messages] == ["Good"]
        assert handler.stats()["dropped"] == 1

    def test_close_is_idempotent_and_later_records_are_counted(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """close() delivers, may be called twice, and a record after it is counted as dropped."""
        handler = make_handler(flush_interval=30)
        logger.addHandler(handler)
        logger.info("Before", extra={"user_id": "u1"})
        handler.close()
        handler.close()
        logger.info("After", extra={"user_id": "u1"})
        assert [m["event"] for m in collector.messages] == ["Before"]
        stats = handler.stats()
        assert (stats["delivered"], stats["dropped"]) == (1, 1)


class TestBehindAQueue:
    @pytest.mark.parametrize("with_filter", [True, False])
    def test_the_bound_identity_crosses_the_queue_with_the_filter(
        self, collector: LocalCollector, with_filter: bool
    ) -> None:
        """Behind a QueueHandler the listener thread has nothing bound: BoundIdentityFilter on
        the QueueHandler carries each record's identity across; without it they are skipped."""
        records: queue.Queue[logging.LogRecord] = queue.Queue()
        queue_handler = logging.handlers.QueueHandler(records)
        if with_filter:
            queue_handler.addFilter(BoundIdentityFilter())
        segment = SegmentHandler("key", host=collector.url, flush_interval=0.05)
        listener = SegmentQueueListener(records, segment)
        log = logging.getLogger("tests.handler.behind_a_queue")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(queue_handler)
        try:
            with identified(user_id="u2", context={"ip": "10.0.0.2"}):
                log.info("Viewed Cart")
            log.info("Explicit", extra={"user_id": "u3"})
            listener.stop()  # hands over everything queued
            assert segment.flush(5)
            sent = {m["event"]: m for m in collector.messages}
            assert sent["Explicit"]["userId"] == "u3"
            if with_filter:
                assert sent["Viewed Cart"]["userId"] == "u2"
                assert sent["Viewed Cart"]["context"]["ip"] == "10.0.0.2"
            else:
                assert "Viewed Cart" not in sent
                assert segment.stats()["skipped"] == 1
        finally:
            log.removeHandler(queue_handler)
            listener.stop()
            segment.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig listener: needs 3.12+")
class TestQueueListenerLayout:
    def test_the_stdlib_queue_handler_layout(self, collector: LocalCollector) -> None:
        """With a stdlib QueueHandler, SegmentQueueListener starts itself and respects levels."""
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "segment": {
                        "class": "segmentio_logging.SegmentHandler",
                        "write_key": "queue-key",
                        "host": collector.url,
                        "flush_interval": 0.05,
                        "level": "INFO",
                    },
                    "queue": {
                        "class": "logging.handlers.QueueHandler",
                        "listener": "segmentio_logging.SegmentQueueListener",
                        "handlers": ["segment"],
                    },
                },
                "loggers": {
                    "queueapp": {"handlers": ["queue"], "level": "DEBUG", "propagate": False}
                },
            }
        )
        [queue_handler] = logging.getLogger("queueapp").handlers
        listener = queue_handler.listener  # type: ignore[attr-defined]
        [segment] = listener.handlers
        try:
            assert isinstance(listener, SegmentQueueListener)
            assert listener._thread is not None  # started without a call to start()
            log = logging.getLogger("queueapp")
            log.debug("Below Level", extra={"user_id": "u1"})
            log.info("Through The Queue", extra={"user_id": "u1", "properties": {"k": 1}})
            assert collector.wait_for_messages(1, timeout=5)
            listener.stop()  # hands over everything still queued
            assert segment.flush(5)
            [message] = collector.messages
            assert message["event"] == "Through The Queue"
            assert message["properties"] == {"k": 1}
            assert collector.requests[0].write_key == "queue-key"
        finally:
            listener.stop()
            segment.close()

    def test_listener_start_and_stop_are_idempotent(self) -> None:
        """start() and stop() may be called twice."""
        import queue

        listener = SegmentQueueListener(queue.Queue())
        listener.start()
        listener.stop()
        listener.stop()
        assert listener._thread is None


class TestReconfiguration:
    def test_dict_config_replacing_a_segment_handler_does_not_deadlock(
        self, collector: LocalCollector
    ) -> None:
        """A second dictConfig closes the first handler without hanging; its events still arrive."""
        first = {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "segment": {
                    "class": "segmentio_logging.SegmentHandler",
                    "write_key": "k",
                    "host": collector.url,
                    "flush_interval": 0.05,
                    "batch_size": 2,
                    # Longer than the join below: a close that waited on the worker would show.
                    "shutdown_timeout": 30,
                }
            },
            "root": {"handlers": ["segment"], "level": "DEBUG"},
            "loggers": {"urllib3": {"level": "DEBUG"}},
        }
        second = {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"null": {"class": "logging.NullHandler"}},
            "root": {"handlers": ["null"], "level": "WARNING"},
        }
        # Slow answers keep the worker inside a request (and urllib3's logging) during the swap.
        collector.script(*[Reply(delay=0.1)] * 5)
        errors: List[BaseException] = []

        def reconfigure() -> None:
            try:
                logging.config.dictConfig(first)
                app = logging.getLogger("tests.reconfig")
                for i in range(6):
                    app.info("Before Swap %d", i, extra={"user_id": "u1"})
                logging.config.dictConfig(second)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=reconfigure, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "dictConfig deadlocked while closing SegmentHandler"
        assert errors == []
        assert collector.wait_for_messages(6, timeout=10)
        events = sorted(m["event"] for m in collector.messages)
        assert events == sorted(f"Before Swap {i}" for i in range(6))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
class TestListenerAfterFork:
    def test_child_records_pass_through_the_listener(self, collector: LocalCollector) -> None:
        """In a forked child the listener runs again and the child's records are delivered."""
        handler = SegmentHandler("k", host=collector.url, flush_interval=0.05)
        records: queue.Queue[logging.LogRecord] = queue.Queue()
        listener = SegmentQueueListener(records, handler)
        log = logging.getLogger("tests.listener.fork")
        log.setLevel(logging.INFO)
        log.propagate = False
        log.handlers[:] = [logging.handlers.QueueHandler(records)]
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit status
                code = 1
                try:
                    log.info("from the child", extra={"user_id": "child"})
                    listener.stop()  # hands the record over, as at exit
                    code = 0 if handler.flush(5) and handler.stats()["delivered"] == 1 else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            assert [m["userId"] for m in collector.messages] == ["child"]
        finally:
            listener.stop()
            handler.close()


class TestPersist:
    def test_persist_returns_once_records_are_on_disk(
        self, tmp_path: Path, logger: logging.Logger
    ) -> None:
        """With spool_path and the receiver down, persist() returns once every record is spooled."""
        handler = SegmentHandler(
            "k",
            host=closed_url(),
            spool_path=str(tmp_path),
            flush_interval=0.05,
            retry_budget=0.2,
            shutdown_timeout=0.5,
        )
        logger.handlers[:] = [handler]
        try:
            for n in range(10):
                logger.info("Saved", extra={"user_id": f"u{n}"})
            assert handler.persist(10)
            counts = handler.stats()
            assert counts["spooled"] == 10
            assert counts["delivered"] == 0
        finally:
            handler.close()

    def test_client_persist_without_a_spool_is_flush(self, collector: LocalCollector) -> None:
        """Without spool_path, Client.persist() waits for delivery as flush() does."""
        client = Client("k", host=collector.url, flush_interval=5)
        try:
            client.track("s", "u1", "Saved")
            assert client.persist(10)
            assert [m["event"] for m in collector.messages] == ["Saved"]
        finally:
            client.shutdown()


class TestFailureData:
    def test_a_record_that_cannot_be_sent_is_described_by_its_fields(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """on_failure gets the record's Segment fields by name, not the handler's internals."""
        failures: List[Tuple[List[Any], Exception]] = []
        handler = make_handler(on_failure=lambda data, error: failures.append((data, error)))
        logger.handlers[:] = [handler]
        logger.info("Bought", extra={"user_id": "u1", "timestamp": "yesterday"})
        assert handler.flush(5)
        [(data, error)] = failures
        assert isinstance(error, InvalidMessage) and "yesterday" in str(error)
        [fields] = data
        assert fields["user_id"] == "u1" and fields["timestamp"] == "yesterday"
        assert fields["text"] == "Bought"

    def test_callbacks_get_the_messages_that_were_sent(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Messages sent as spliced JSON reach on_success and on_failure as dicts, as sent."""
        successes: List[List[Any]] = []
        failures: List[List[Any]] = []
        handler = make_handler(
            on_success=lambda data, response: successes.append(data),
            on_failure=lambda data, error: failures.append(data),
            max_retries=0,
        )
        logger.handlers[:] = [handler]
        logger.info("Played", extra={"user_id": "u1", "properties": {"n": [1, 2]}})
        assert handler.flush(5)
        collector.script(Reply(400))
        logger.info("Paused", extra={"anonymous_id": "a1"})
        assert handler.flush(5)
        [played], [paused] = (request.messages for request in collector.requests)
        assert successes == [[played]] and failures == [[paused]]
        assert played["properties"] == {"n": [1, 2]} and paused["properties"] == {}

    def test_an_oversized_plain_track_is_reported_and_counted(
        self, make_handler: Any, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """Over 32 KB: on_failure gets the record's fields and the size; nothing is sent."""
        failures: List[Tuple[List[Any], Exception]] = []
        handler = make_handler(on_failure=lambda data, error: failures.append((data, error)))
        logger.handlers[:] = [handler]
        logger.info("Uploaded", extra={"user_id": "u1", "properties": {"blob": "x" * 40_000}})
        assert handler.flush(5)
        [(data, error)] = failures
        assert isinstance(error, MessageTooLarge) and "32 KB" in str(error)
        assert data[0]["text"] == "Uploaded" and data[0]["properties"]["blob"] == "x" * 40_000
        assert handler.stats()["dropped"] == 1 and collector.messages == []

    def test_a_record_that_broke_before_capture_is_described(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """When a filter raises, on_failure gets the record's logger, time and message."""
        failures: List[Tuple[List[Any], Exception]] = []
        handler = make_handler(on_failure=lambda data, error: failures.append((data, error)))
        handler.addFilter(BrokenFilter())
        logger.handlers[:] = [handler]
        logger.info("Bought", extra={"user_id": "u1"})
        [(data, error)] = failures
        assert "a filter raised" in str(error)
        assert data == [{"logger": logger.name, "created": data[0]["created"], "text": "Bought"}]
