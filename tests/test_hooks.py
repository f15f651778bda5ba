"""``before_send`` and ``default_context``: the user's hooks on each message, on the worker."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

import segmentio_logging
from segmentio_logging import InvalidMessage, MessageTooLarge, SegmentHandler
from segmentio_logging._hooks import Filtered, with_hooks
from segmentio_logging._message import build_message, encode
from segmentio_logging.testing import LocalCollector

from .helpers import Recorder, identity_holds, section_code

MakeHandler = Callable[..., SegmentHandler]


def built(**fields: Any) -> Any:
    """A queued client item: a message and its bytes."""
    message = build_message("track", user_id="u1", event="E", **fields)
    return message, encode(message)


class TestWithHooks:
    def test_without_hooks_the_encode_function_is_unchanged(self) -> None:
        """No before_send and no default_context: nothing wraps the encode step."""

        def encode_item(item: Any) -> Any:
            return item

        assert with_hooks(encode_item, None, None) is encode_item
        assert with_hooks(encode_item, None, {}) is encode_item

    def test_default_context_is_merged_under_the_message_context(self) -> None:
        """The message's own context keys win; the defaults fill in the rest."""
        hooked = with_hooks(lambda item: item, None, {"app": {"version": "2"}, "ip": "0.0.0.0"})
        message, data = hooked(built(context={"ip": "203.0.113.9"}))
        assert message is None  # callbacks decode their own dicts from the bytes
        context = json.loads(data)["context"]
        assert context["app"] == {"version": "2"}
        assert context["ip"] == "203.0.113.9"
        assert context["library"]["name"] == "segmentio-logging"

    def test_nested_dicts_are_merged_and_the_message_values_win(self) -> None:
        """A dict in both the defaults and the message is merged key by key, at every level."""
        defaults = {"app": {"name": "shop", "version": "1.4.2", "build": {"ci": "x"}}, "os": "l"}
        hooked = with_hooks(lambda item: item, None, defaults)
        own = {"app": {"version": "2.0", "build": {"id": 7}}, "os": {"name": "mac"}}
        _, data = hooked(built(context=own))
        context = json.loads(data)["context"]
        assert context["app"] == {"name": "shop", "version": "2.0", "build": {"ci": "x", "id": 7}}
        assert context["os"] == {"name": "mac"}  # not both dicts: the message's value wins
        assert defaults["app"] == {"name": "shop", "version": "1.4.2", "build": {"ci": "x"}}

    def test_a_message_only_encoded_is_decoded_for_the_hooks(self) -> None:
        """An item whose message was not kept (the plain track path) is decoded first."""
        original, data = built()
        hooked = with_hooks(lambda item: (None, data), None, {"app": {"name": "shop"}})
        message, out = hooked(object())
        assert message is None
        assert json.loads(out)["context"]["app"] == {"name": "shop"}
        assert json.loads(out)["messageId"] == original["messageId"]

    def test_the_callers_message_is_not_changed(self) -> None:
        """The hooks work on a copy: a client caller may still hold the message, nested
        dicts included."""
        item = built(properties={"email": "a@b.c"}, context={"ip": "203.0.113.9"})
        before = json.dumps(item[0], sort_keys=True)

        def scrub(message: Dict[str, Any]) -> Dict[str, Any]:
            message["userId"] = "anonymous"
            message["properties"].pop("email")
            message["context"].pop("ip")
            return message

        with_hooks(lambda i: i, scrub, {"app": {"name": "shop"}})(item)
        assert json.dumps(item[0], sort_keys=True) == before

    def test_before_send_changes_what_is_sent(self) -> None:
        """What before_send returns is what is encoded."""

        def scrub(message: Dict[str, Any]) -> Dict[str, Any]:
            message["properties"].pop("email", None)
            return message

        hooked = with_hooks(lambda item: item, scrub, None)
        _, data = hooked(built(properties={"email": "a@example.com", "plan": "pro"}))
        assert json.loads(data)["properties"] == {"plan": "pro"}

    def test_none_from_before_send_filters_the_message(self) -> None:
        """before_send returning None raises Filtered (no error)."""
        hooked = with_hooks(lambda item: item, lambda message: None, None)
        with pytest.raises(Filtered):
            hooked(built())

    @pytest.mark.parametrize(
        ("hook", "reason"),
        [
            (lambda message: 1 / 0, "before_send raised ZeroDivisionError"),
            (lambda message: ["not", "a", "dict"], "before_send must return a dict or None"),
        ],
    )
    def test_a_broken_before_send_is_an_invalid_message(self, hook: Any, reason: str) -> None:
        """A before_send that raises or returns a non-dict makes that message invalid."""
        with pytest.raises(InvalidMessage, match=reason):
            with_hooks(lambda item: item, hook, None)(built())

    def test_a_message_grown_past_the_limit_is_refused(self) -> None:
        """The size limit is checked again after before_send."""

        def grow(message: Dict[str, Any]) -> Dict[str, Any]:
            message["properties"] = {"blob": "x" * 40_000}
            return message

        with pytest.raises(MessageTooLarge):
            with_hooks(lambda item: item, grow, None)(built())

    def test_defaults_are_not_shared_with_what_before_send_changes(self) -> None:
        """A before_send that edits the merged context does not change the next message's."""

        def edit(message: Dict[str, Any]) -> Dict[str, Any]:
            message["context"]["app"]["version"] = "changed"
            return message

        hooked = with_hooks(lambda item: item, edit, {"app": {"version": "1"}})
        hooked(built())
        plain = with_hooks(lambda item: item, None, {"app": {"version": "1"}})
        _, data = hooked(built())
        assert json.loads(data)["context"]["app"] == {"version": "changed"}
        _, data = plain(built())
        assert json.loads(data)["context"]["app"] == {"version": "1"}


class TestThroughTheHandler:
    def test_before_send_runs_on_the_worker_and_scrubs(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """before_send runs on the worker thread, never the caller's; what it returns is sent."""
        threads: List[str] = []

        def scrub(message: Dict[str, Any]) -> Dict[str, Any]:
            threads.append(threading.current_thread().name)
            message.get("properties", {}).pop("email", None)
            return message

        handler = make_handler(before_send=scrub)
        logger.addHandler(handler)
        logger.info("Signed Up", extra={"user_id": "u1", "properties": {"email": "a@b.c"}})
        logger.info("Played", extra={"user_id": "u1", "traits": None, "event": "Played"})
        assert handler.flush(10)
        assert [m["event"] for m in collector.messages] == ["Signed Up", "Played"]
        assert collector.messages[0]["properties"] == {}
        assert threads == ["segmentio-logging-worker"] * 2

    def test_filtered_messages_are_counted_not_errors(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A None from before_send is counted as filtered; flush settles it; the identity holds."""
        failures = Recorder()

        def sample(message: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            return message if message["properties"]["i"] % 2 == 0 else None

        handler = make_handler(before_send=sample, on_failure=failures)
        logger.addHandler(handler)
        for i in range(10):
            logger.info("Played", extra={"user_id": "u1", "properties": {"i": i}})
        assert handler.flush(10)
        assert sorted(m["properties"]["i"] for m in collector.messages) == [0, 2, 4, 6, 8]
        stats = handler.stats()
        assert (stats["delivered"], stats["filtered"], stats["dropped"]) == (5, 5, 0)
        assert identity_holds(stats)
        assert failures.calls == []

    def test_a_raising_before_send_drops_that_message_and_reports_it(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """A before_send that raises drops that message (reported); the worker goes on."""
        failures = Recorder()

        def fussy(message: Dict[str, Any]) -> Dict[str, Any]:
            if message["properties"]["i"] == 1:
                raise KeyError("secret")
            return message

        handler = make_handler(before_send=fussy, on_failure=failures)
        logger.addHandler(handler)
        for i in range(3):
            logger.info("Played", extra={"user_id": "u1", "properties": {"i": i}})
        assert handler.flush(10)
        assert [m["properties"]["i"] for m in collector.messages] == [0, 2]
        ((data, error),) = failures.calls
        assert len(data) == 1  # the one record, as on_failure describes it
        assert isinstance(error, InvalidMessage)
        assert "before_send raised KeyError" in error.reason
        assert handler.stats()["dropped"] == 1
        assert identity_holds(handler.stats())

    def test_a_raising_before_send_is_heard_without_on_failure(
        self,
        make_handler: MakeHandler,
        logger: logging.Logger,
        collector: LocalCollector,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """With no on_failure set, the dropped message is still said on stderr (rate-limited)."""

        def broken(message: Dict[str, Any]) -> Dict[str, Any]:
            raise RuntimeError("bug in the hook")

        handler = make_handler(before_send=broken)
        logger.addHandler(handler)
        logger.info("Played", extra={"user_id": "u1"})
        assert handler.flush(10)
        assert handler.stats()["dropped"] == 1
        err = capsys.readouterr().err
        assert "message not sent: before_send raised RuntimeError: bug in the hook" in err

    def test_default_context_on_every_record_under_explicit_context(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """default_context reaches plain and general records; a record's own context wins."""
        handler = make_handler(default_context={"app": {"version": "3.1"}, "locale": "en-US"})
        logger.addHandler(handler)
        logger.info("Played", extra={"user_id": "u1"})
        logger.info("Viewed", extra={"user_id": "u1", "context": {"locale": "fr-FR"}})
        assert handler.flush(10)
        first, second = collector.messages
        assert first["context"]["app"] == {"version": "3.1"}
        assert first["context"]["locale"] == "en-US"
        assert second["context"]["locale"] == "fr-FR"
        assert second["context"]["app"] == {"version": "3.1"}
        assert second["context"]["library"]["name"] == "segmentio-logging"

    def test_a_callback_changing_its_data_does_not_change_the_defaults(
        self, make_handler: MakeHandler, logger: logging.Logger, collector: LocalCollector
    ) -> None:
        """on_success gets dicts of its own: changing them leaves later messages as they were."""

        def meddle(data: Any, response: Any) -> None:
            for message in data:
                message["context"]["app"]["name"] = "changed"

        handler = make_handler(default_context={"app": {"name": "shop"}}, on_success=meddle)
        logger.addHandler(handler)
        logger.info("First", extra={"user_id": "u1"})
        assert handler.flush(10)
        logger.info("Second", extra={"user_id": "u1"})
        assert handler.flush(10)
        assert [m["context"]["app"]["name"] for m in collector.messages] == ["shop", "shop"]

    def test_dotted_paths_and_environment_set_both(
        self, make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """before_send may be a dotted path, default_context JSON text in its variable."""
        monkeypatch.setenv("SEGMENT_DEFAULT_CONTEXT", '{"app": {"name": "shop"}}')
        handler = make_handler(before_send="copy.copy")
        assert handler.options.default_context == {"app": {"name": "shop"}}
        assert callable(handler.options.before_send)

    def test_filtered_through_the_spool_too(
        self,
        make_handler: MakeHandler,
        logger: logging.Logger,
        collector: LocalCollector,
        tmp_path: Path,
    ) -> None:
        """With a spool, filtered messages never reach the disk and are counted the same."""
        handler = make_handler(spool_path=str(tmp_path), before_send=lambda message: None)
        logger.addHandler(handler)
        for i in range(4):
            logger.info("Played", extra={"user_id": "u1", "properties": {"i": i}})
        assert handler.flush(10)
        stats = handler.stats()
        assert (stats["filtered"], stats["delivered"], stats["spooled"]) == (4, 0, 0)
        assert identity_holds(stats)
        assert collector.messages == []


class TestThroughTheClient:
    def test_client_calls_get_both_hooks(self, collector: LocalCollector) -> None:
        """Client calls ride the same hooks; the message the call returned is not changed."""
        seen: List[str] = []

        def tag(message: Dict[str, Any]) -> Dict[str, Any]:
            seen.append(message["type"])
            message.setdefault("properties", {})["tagged"] = True
            return message

        client = segmentio_logging.Client(
            "k", host=collector.url, before_send=tag, default_context={"app": {"version": "9"}}
        )
        try:
            assert client.track(None, "u1", "Bought", {"sku": "a"})
            assert client.identify(None, "u1", {"plan": "pro"})
            assert client.flush(10)
        finally:
            client.shutdown()
        track, identify = collector.messages
        assert track["properties"] == {"sku": "a", "tagged": True}
        assert identify["context"]["app"] == {"version": "9"}
        assert seen == ["track", "identify"]


def test_the_documented_example_scrubs_and_samples() -> None:
    """The docs' before_send example runs as printed and does what its comments say."""
    page, code = section_code("Scrub, sample, add context")
    namespace: Dict[str, Any] = {"__name__": "readme_hooks"}
    exec(compile(code, str(page), "exec"), namespace)
    handler = namespace["handler"]
    try:
        scrub = namespace["scrub_and_sample"]
        kept = scrub({"event": "Signed Up", "properties": {"email": "a@b.c", "plan": "pro"}})
        assert kept == {"event": "Signed Up", "properties": {"plan": "pro"}}
        heartbeats = [scrub({"event": "Heartbeat"}) for _ in range(2_000)]
        assert 0 < sum(beat is not None for beat in heartbeats) < 100
        assert handler.options.default_context == {"app": {"name": "shop", "version": "1.4.2"}}
    finally:
        handler.close()
