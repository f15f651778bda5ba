"""Checking requests and messages against Segment's spec; the receiver behind ``collect``.

:func:`check_message` and :func:`check_request` are pure: they say what is
wrong with a message or a request, in words a person can act on.
:class:`Receiver` is a :class:`~segmentio_logging.testing.LocalCollector` that
runs those checks on every request it records and answers as Segment would.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import json
import re
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import IO, Any, Callable, Dict, List, Mapping, Optional

from . import _report
from ._cli import EXIT_FAILED, EXIT_OK, UsageError, _say
from ._message import (
    MAX_BATCH_BYTES,
    MAX_BATCH_COUNT,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
)
from ._timestamps import format_timestamp
from .testing import SINGLE_CALL_PATHS, LocalCollector, Reply, Request

__all__ = ["Checked", "Receiver", "Verdict", "check_message", "check_request", "is_iso8601"]

BATCH_PATHS = ("/v1/batch", "/v1/import")  # /v1/import is Segment's alias of /v1/batch
MAX_MESSAGE_ID_LENGTH = 100
TIMESTAMP_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")

_ISO8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def is_iso8601(value: Any) -> bool:
    """True for an ISO-8601 date and time such as ``2026-01-02T03:04:05.678Z``."""
    if not isinstance(value, str):
        return False
    match = _ISO8601.fullmatch(value.strip())
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups()[:6])
    try:
        dt.datetime(year, month, day, hour, minute, min(second, 59))  # 60: a leap second
    except ValueError:
        return False
    return second <= 60


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _is_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (int, float))


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_message(message: Any, expected_type: Optional[str] = None) -> List[str]:
    """What is wrong with one message (an empty list when it is valid).

    ``expected_type`` is the type a single-call path implies (``/v1/track``);
    a message there may omit ``type`` but must not contradict it.
    """
    if not isinstance(message, dict):
        return [f"a message must be a JSON object, got {_describe(message)}"]
    errors: List[str] = []
    kind = message.get("type", expected_type)
    if kind is None:
        errors.append("missing type")
    elif expected_type is not None and kind != expected_type:
        errors.append(f"type {kind!r} sent to /v1/{expected_type}")
    elif kind not in MESSAGE_TYPES:
        errors.append(f"unknown type {kind!r} (known: {', '.join(MESSAGE_TYPES)})")

    for name in ("userId", "anonymousId", "previousId", "groupId"):
        value = message.get(name)
        if value is not None and not _is_id(value):
            errors.append(f"{name} must be a non-empty string, got {_describe(value)}")
    if kind == "alias":
        for name in ("previousId", "userId"):
            if message.get(name) is None:
                errors.append(f"alias needs {name}")
    elif message.get("userId") is None and message.get("anonymousId") is None:
        errors.append(
            f"{kind if isinstance(kind, str) else 'a message'} needs userId or anonymousId"
        )
    if kind == "track":
        event = message.get("event")
        if event is None:
            errors.append("track needs event")
        elif not isinstance(event, str) or not event.strip():
            errors.append(f"event must be a non-empty string, got {_describe(event)}")
    if kind == "group" and message.get("groupId") is None:
        errors.append("group needs groupId")
    for name in ("name", "category"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(f"{name} must be a string, got {_describe(value)}")

    for name in OBJECT_FIELDS:
        value = message.get(name)
        if value is not None and not isinstance(value, dict):
            errors.append(f"{name} must be an object, got {_describe(value)}")
    for name in TIMESTAMP_FIELDS:
        value = message.get(name)
        if value is not None and not is_iso8601(value):
            errors.append(f"{name} {value!r} is not ISO-8601 (like 2026-01-02T03:04:05.678Z)")

    # messageId is optional in the HTTP API (Segment fills it in); when given, it must be sound.
    message_id = message.get("messageId")
    if message_id is None:
        pass
    elif not isinstance(message_id, str) or not message_id:
        errors.append(f"messageId must be a non-empty string, got {_describe(message_id)}")
    elif len(message_id) > MAX_MESSAGE_ID_LENGTH:
        errors.append(f"messageId is {len(message_id)} characters, over {MAX_MESSAGE_ID_LENGTH}")

    size = _encoded_size(message)
    if size > MAX_MESSAGE_BYTES:
        errors.append(f"message is {size:,} bytes, over the 32 KB limit ({MAX_MESSAGE_BYTES:,})")
    return errors


@dataclass
class Checked:
    """One message of a request and what is wrong with it."""

    message: Any
    errors: List[str]

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def type(self) -> str:
        kind = self.message.get("type") if isinstance(self.message, dict) else None
        return kind if isinstance(kind, str) else "?"


@dataclass
class Verdict:
    """What a request carried and how a Segment-compatible receiver answers it.

    ``error`` is set when the request is rejected whole (``status`` 400, 401
    or 404); otherwise ``messages`` holds each message and its problems.
    """

    status: int
    error: Optional[str] = None
    write_key: Optional[str] = None
    messages: List[Checked] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        """Messages with a problem (a request rejected whole counts as one)."""
        return 1 if self.error else sum(1 for m in self.messages if not m.valid)

    @property
    def body(self) -> str:
        if self.error:
            return json.dumps({"success": False, "error": self.error})
        return '{"success":true}'


def _basic_user(headers: Mapping[str, str]) -> Optional[str]:
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        user, _, _ = (
            base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
        )
    except (ValueError, UnicodeDecodeError):
        return None
    return user or None


def check_request(
    path: str,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    write_key: Optional[str] = None,
    strict: bool = False,
) -> Verdict:
    """Check one ``POST`` the way Segment's Tracking API would take it.

    ``headers`` have lower-case names. ``write_key``, when given, is the only
    key accepted. With ``strict``, a request holding any invalid message is
    answered 400 (Segment itself accepts the request and drops the message).
    """
    route = path.split("?", 1)[0].rstrip("/")
    expected = SINGLE_CALL_PATHS.get(route)
    if route not in BATCH_PATHS and expected is None:
        known = ", ".join((*BATCH_PATHS, *SINGLE_CALL_PATHS))
        return Verdict(404, f"unknown path {route or '/'}; POST to one of {known}")
    data = raw
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return Verdict(400, "body is not valid gzip (Content-Encoding: gzip)")
    elif encoding not in ("", "identity"):
        return Verdict(400, f"unsupported Content-Encoding {encoding!r}")
    if len(data) > MAX_BATCH_BYTES:
        return Verdict(
            400, f"request is {len(data):,} bytes, over the 500 KB limit ({MAX_BATCH_BYTES:,})"
        )
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Verdict(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Verdict(400, f"body must be a JSON object, got {_describe(body)}")

    key = _basic_user(headers) or (body.get("writeKey") if isinstance(body, dict) else None)
    if not key or not isinstance(key, str):
        return Verdict(401, "no write key: send it as the Basic auth user name (or writeKey)")
    if write_key is not None and key != write_key:
        return Verdict(401, f"write key {key!r} is not the expected one", write_key=key)

    if expected is None:
        batch = body.get("batch")
        if not isinstance(batch, list):
            return Verdict(400, 'a batch body needs a "batch" array', write_key=key)
        if len(batch) > MAX_BATCH_COUNT:
            return Verdict(
                400, f"batch holds {len(batch):,} messages, over {MAX_BATCH_COUNT:,}", write_key=key
            )
        sent_at = body.get("sentAt")
        if sent_at is not None and not is_iso8601(sent_at):
            return Verdict(400, f"sentAt {sent_at!r} is not ISO-8601", write_key=key)
        checked = [Checked(m, check_message(m)) for m in batch]
    else:
        message = {"type": expected, **body}
        message.pop("writeKey", None)
        checked = [Checked(message, check_message(body, expected))]
    verdict = Verdict(200, write_key=key, messages=checked)
    bad = verdict.invalid
    if strict and bad:
        verdict.status = 400
        verdict.error = f"{bad} of {len(checked)} message{'s' if len(checked) != 1 else ''} invalid"
    return verdict


class _Answer(Reply):
    """A reply decided once the request has been read and checked."""

    def settle(self, status: int, body: str) -> None:
        object.__setattr__(self, "status", status)  # Reply is frozen; this one is decided late
        object.__setattr__(self, "body", body)


OnVerdict = Callable[[Request, Verdict], None]


class Receiver(LocalCollector):
    """A :class:`LocalCollector` that checks every request against Segment's spec.

    It answers 200 to a well-formed request (even one holding invalid
    messages, as Segment does, unless ``strict``), 400 to a malformed one,
    401 without a write key and 404 off the Tracking API's paths, and hands
    every request with its :class:`Verdict` to ``on_verdict``. Replies
    scripted with :meth:`script` still win. With ``keep=False`` requests are
    counted, not kept, so that a long run does not grow.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        write_key: Optional[str] = None,
        strict: bool = False,
        on_verdict: Optional[OnVerdict] = None,
        keep: bool = True,
    ) -> None:
        super().__init__(host, port)
        self.write_key = write_key
        self.strict = strict
        self.on_verdict = on_verdict
        self.keep = keep
        self._local = threading.local()
        self._counts = {
            "requests": 0,
            "rejected": 0,
            "unreadable": 0,
            "messages": 0,
            "valid": 0,
            "invalid": 0,
        }
        self._verdicts: List[Verdict] = []
        self._unanswered = 0

    def __repr__(self) -> str:
        return f"<Receiver {self.url} {self.counts()}>"

    # The collector picks its reply before it reads the body and sends it after
    # recording the request: answer with a placeholder, settled in ``_record``.
    def _next_reply(self) -> Reply:
        reply = super()._next_reply()
        if reply is self.default:
            reply = _Answer()
        self._local.reply = reply
        return reply

    def _record(self, request: Request) -> None:
        verdict = check_request(
            request.path, request.headers, request.raw, write_key=self.write_key, strict=self.strict
        )
        reply: Optional[Reply] = getattr(self._local, "reply", None)
        self._local.reply = None
        if isinstance(reply, _Answer):
            reply.settle(verdict.status, verdict.body)
            request = replace(request, status=verdict.status)
        with self._cond:
            if reply is not None and not (reply.reset or reply.hang):
                self._unanswered += 1
            counts = self._counts
            counts["requests"] += 1
            if verdict.error and not verdict.messages:
                counts["unreadable"] += 1
            if verdict.status >= 400:
                counts["rejected"] += 1
            counts["messages"] += len(verdict.messages)
            counts["invalid"] += sum(1 for m in verdict.messages if not m.valid)
            counts["valid"] += sum(1 for m in verdict.messages if m.valid)
            if self.keep:
                self._verdicts.append(verdict)
        if self.on_verdict is not None:
            try:
                self.on_verdict(request, verdict)
            except Exception as exc:  # a broken output must not stop the receiver
                _report.warn(
                    f"verdict-{id(self)}", f"on_verdict raised {type(exc).__name__}: {exc}"
                )
        if self.keep:
            super()._record(request)
        else:
            with self._cond:
                self._cond.notify_all()

    def _answered(self, status: int) -> None:
        with self._cond:
            self._unanswered = max(self._unanswered - 1, 0)
        super()._answered(status)

    def wait_answered(self, timeout: float = 2.0) -> bool:
        """Wait until every request recorded so far has had its answer (call before ``stop``)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._unanswered:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # ------------------------------------------------------------------ results

    def counts(self) -> Dict[str, int]:
        """requests, rejected (answered 4xx), unreadable (no message in them), messages,
        valid, invalid."""
        with self._cond:
            return dict(self._counts)

    @property
    def verdicts(self) -> List[Verdict]:
        """The verdict on every request received (empty with ``keep=False``)."""
        with self._cond:
            return list(self._verdicts)

    def received(self) -> int:
        """Messages received, valid or not, plus requests with no readable message."""
        with self._cond:
            return self._counts["messages"] + self._counts["unreadable"]

    def wait_for_received(self, count: int, timeout: Optional[float] = 10.0) -> bool:
        """Wait until :meth:`received` reaches ``count``; False at the timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._counts["messages"] + self._counts["unreadable"] < count:
                remaining = 0.5 if end is None else min(end - time.monotonic(), 0.5)
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


# --------------------------------------------------------------------------- the command


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_message(message: Any) -> str:
    """A message in one readable line: who, what, and its data."""
    if not isinstance(message, dict):
        return _short(message)
    parts: List[str] = []
    for name in ("userId", "anonymousId"):
        if message.get(name) is not None:
            parts.append(f"{name}={_short(message[name], 30)}")
    for name in ("event", "name", "category", "groupId", "previousId"):
        if message.get(name) is not None:
            parts.append(f"{name}={_short(message[name], 40)}")
    for name in ("properties", "traits"):
        if message.get(name):
            parts.append(f"{name}={_short(message[name])}")
    if message.get("timestamp") is not None:
        parts.append(f"timestamp={_short(message['timestamp'], 32)}")
    return "  ".join(parts)


class _Printer:
    """Writes what the receiver got: readable lines, or JSON Lines; one writer at a time."""

    def __init__(self, stream: IO[str], jsonl: bool) -> None:
        self.stream = stream
        self.jsonl = jsonl
        self._lock = threading.Lock()

    def __call__(self, request: Request, verdict: Verdict) -> None:
        now = time.time()
        received = format_timestamp(now)
        clock = dt.datetime.fromtimestamp(now).strftime("%H:%M:%S")
        out: List[str] = []
        if verdict.error:
            if self.jsonl:
                record = {
                    "receivedAt": received,
                    "path": request.path,
                    "status": verdict.status,
                    "writeKey": verdict.write_key,
                    "valid": False,
                    "errors": [verdict.error],
                    "message": None,
                }
                out.append(json.dumps(record, ensure_ascii=False))
            else:
                out.append(
                    f"{clock}  REJECTED  POST {request.path} -> {verdict.status}: {verdict.error}"
                )
        for checked in verdict.messages:
            if self.jsonl:
                record = {
                    "receivedAt": received,
                    "path": request.path,
                    "status": verdict.status,
                    "writeKey": verdict.write_key,
                    "valid": checked.valid,
                    "errors": checked.errors,
                    "message": checked.message,
                }
                out.append(json.dumps(record, ensure_ascii=False, default=str))
            else:
                status = "ok      " if checked.valid else "INVALID "
                line = f"{clock}  {status}  {checked.type:<8}  {describe_message(checked.message)}"
                if checked.errors:
                    line += "  <- " + "; ".join(checked.errors)
                out.append(line)
        if out:
            with self._lock:
                self.stream.write("\n".join(out) + "\n")
                self.stream.flush()


def _stop_on_sigterm() -> Any:
    """SIGTERM (``timeout``, CI, a supervisor) ends ``collect`` as Ctrl-C does: with the summary."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def collect(args: argparse.Namespace) -> int:
    """Receive messages like Segment's Tracking API, check each one, and show it."""
    from ._collect import Receiver

    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise UsageError("--duration must be a number of seconds above 0")
    output: IO[str] = sys.stdout
    opened: Optional[IO[str]] = None
    if args.jsonl and args.jsonl != "-":
        try:
            opened = output = open(args.jsonl, "w", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.jsonl}: {exc}") from None
    printer = _Printer(output, jsonl=bool(args.jsonl))
    try:
        receiver = Receiver(
            args.host,
            args.port,
            write_key=args.writeKey,
            strict=args.strict,
            on_verdict=printer,
            keep=False,
        )
    except OSError as exc:
        if opened is not None:
            opened.close()
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    goal = args.count if args.count is not None else sys.maxsize
    interrupted = False
    previous = _stop_on_sigterm()
    try:
        with receiver:
            _say(
                f"listening on {receiver.url}: POST /v1/batch, /v1/track, /v1/identify, /v1/group, "
                "/v1/alias, /v1/page, /v1/screen; Ctrl-C to stop"
            )
            try:
                receiver.wait_for_received(goal, args.duration)
            except KeyboardInterrupt:
                interrupted = True
            receiver.wait_answered()  # the last sender gets its answer before the port closes
            counts = receiver.counts()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if opened is not None:
            opened.close()
    received = counts["messages"] + counts["unreadable"]
    _say(
        f"{'stopped' if interrupted else 'done'}: {counts['requests']:,} request(s), "
        f"{counts['valid']:,} valid message(s), {counts['invalid']:,} invalid, "
        f"{counts['rejected']:,} request(s) rejected"
    )
    if counts["invalid"] or counts["rejected"]:
        return EXIT_FAILED
    if args.count is not None and received < args.count and not interrupted:
        _say(f"only {received:,} of the {args.count:,} messages expected arrived")
        return EXIT_FAILED
    return EXIT_OK
