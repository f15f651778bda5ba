"""``segmentio-logging collect``: a local receiver that checks every message against the spec.

The receiver is :class:`~segmentio_logging.testing.LocalCollector`; a
:class:`SpecCheck` given to it holds every request to Segment's spec
(:func:`~segmentio_logging._spec.check_request`), answers as Segment would,
counts the verdicts, and hands each one on to be printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import signal
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from .. import _report
from .._spec import Verdict, check_request
from .._timestamps import format_timestamp
from ..testing import LocalCollector, Request
from ._common import EXIT_FAILED, EXIT_OK, UsageError, say, write_key_flag

OnVerdict = Callable[[Request, Verdict], None]


class SpecCheck:
    """Checks every request a :class:`LocalCollector` receives against Segment's spec.

    Given to ``LocalCollector(check=...)``, it makes the collector answer 200
    to a well-formed request (even one holding invalid messages, as Segment
    does, unless ``strict``), 400 to a malformed one, 401 without a write key
    (or with another than ``write_key``) and 404 off the Tracking API's paths;
    replies scripted on the collector still win. It counts what arrived and
    hands every request with its :class:`~segmentio_logging._spec.Verdict` to
    ``on_verdict``. With ``keep=False`` the collector keeps no request and the
    check no verdict, so that a long run does not grow.
    """

    def __init__(
        self,
        *,
        write_key: Optional[str] = None,
        strict: bool = False,
        on_verdict: Optional[OnVerdict] = None,
        keep: bool = True,
    ) -> None:
        self.write_key = write_key
        self.strict = strict
        self.on_verdict = on_verdict
        self.keep = keep
        self._cond = threading.Condition()
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
        return f"<SpecCheck {self.counts()}>"

    # ------------------------------------------------------------------ the collector calls these

    def inspect(self, request: Request) -> Verdict:
        """The verdict on ``request``: its status and body are Segment's answer."""
        try:
            return check_request(
                request.path,
                request.headers,
                request.raw,
                write_key=self.write_key,
                strict=self.strict,
            )
        except RecursionError:  # JSON nested deeper than the parser goes
            return Verdict(400, "body is not valid JSON: nested too deeply")

    def record(self, request: Request, verdict: Verdict) -> None:
        """Count ``request`` and its verdict, then hand both to ``on_verdict``."""
        with self._cond:
            if request.status is not None:  # an answer will go out (no reset, no hang)
                self._unanswered += 1
            counts = self._counts
            counts["requests"] += 1
            if verdict.error and not verdict.messages:
                counts["unreadable"] += 1
            if verdict.status >= 400:
                counts["rejected"] += 1
            invalid = sum(1 for m in verdict.messages if m.errors)
            counts["messages"] += len(verdict.messages)
            counts["invalid"] += invalid
            counts["valid"] += len(verdict.messages) - invalid
            if self.keep:
                self._verdicts.append(verdict)
        if self.on_verdict is not None:
            try:
                self.on_verdict(request, verdict)
            except Exception as exc:  # a broken output must not stop the receiver
                _report.warn(
                    f"verdict-{id(self)}", f"on_verdict raised {type(exc).__name__}: {exc}"
                )
        with self._cond:  # waiters wake once the verdict is out: ``collect`` then stops
            self._cond.notify_all()

    def answered(self, request: Request) -> None:
        """The answer to ``request`` went out."""
        with self._cond:
            self._unanswered = max(self._unanswered - 1, 0)
            self._cond.notify_all()

    # ------------------------------------------------------------------ results

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


# --------------------------------------------------------------------------- output


# One encoder for every line: json.dumps with these options would build one per call, a
# quarter of the time the receiver spends on a message it prints.
_READABLE_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else _READABLE_JSON.encode(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# What describe_message shows, in order: a field, its width, and whether it shows only when
# truthy (an empty properties object says nothing) rather than whenever it is not null.
_DESCRIBED = (
    ("userId", 30, False),
    ("anonymousId", 30, False),
    ("event", 40, False),
    ("name", 40, False),
    ("category", 40, False),
    ("groupId", 40, False),
    ("previousId", 40, False),
    ("properties", 60, True),
    ("traits", 60, True),
    ("timestamp", 32, False),
)


def describe_message(message: Any) -> str:
    """A message in one readable line: who, what, and its data."""
    if not isinstance(message, dict):
        return _short(message)
    parts: List[str] = []
    get = message.get
    for name, width, if_truthy in _DESCRIBED:
        value = get(name)
        if value is not None and (value or not if_truthy):
            parts.append(f"{name}={_short(value, width)}")
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
                record = _jsonl_record(received, request, verdict, False, [verdict.error], None)
                out.append(json.dumps(record, ensure_ascii=False))
            else:
                out.append(
                    f"{clock}  REJECTED  POST {request.path} -> {verdict.status}: {verdict.error}"
                )
        for checked in verdict.messages:
            if self.jsonl:
                record = _jsonl_record(
                    received, request, verdict, checked.valid, checked.errors, checked.message
                )
                out.append(_READABLE_JSON.encode(record))
            else:
                errors = checked.errors
                status = "INVALID " if errors else "ok      "
                line = f"{clock}  {status}  {checked.type:<8}  {describe_message(checked.message)}"
                if errors:
                    line += "  <- " + "; ".join(errors)
                out.append(line)
        if out:
            with self._lock:
                self.stream.write("\n".join(out) + "\n")
                self.stream.flush()


def _jsonl_record(
    received: str,
    request: Request,
    verdict: Verdict,
    valid: bool,
    errors: List[str],
    message: Any,
) -> Dict[str, Any]:
    """One line of ``--jsonl``: a message (or a rejected request) with its verdict."""
    return {
        "receivedAt": received,
        "path": request.path,
        "status": verdict.status,
        "writeKey": verdict.write_key,
        "valid": valid,
        "errors": errors,
        "message": message,
    }


def _stop_on_sigterm() -> Any:
    """SIGTERM (``timeout``, CI, a supervisor) ends ``collect`` as Ctrl-C does: with the summary."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


_LIMITS = (
    "max_request_bytes",
    "max_decoded_bytes",
    "idle_timeout",
    "request_timeout",
    "max_connections",
)


def _check_flags(args: argparse.Namespace) -> None:
    """--count and --duration, when given, and the receiver's limits are above 0."""
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise UsageError("--duration must be a number of seconds above 0")
    for name in _LIMITS:
        value = getattr(args, name)
        if not (0 < value < math.inf):
            raise UsageError(f"--{name.replace('_', '-')} must be above 0, got {value}")


def _open_output(jsonl: Optional[str]) -> Optional[IO[str]]:
    """The file --jsonl names, opened; None when the output is stdout."""
    if not jsonl or jsonl == "-":
        return None
    try:
        return open(jsonl, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {jsonl}: {exc}") from None


def _receive(
    receiver: LocalCollector, check: SpecCheck, count: Optional[int], duration: Optional[float]
) -> Tuple[Dict[str, int], bool]:
    """Receive until ``count`` messages arrived, ``duration`` passed or Ctrl-C.

    The counts of what arrived, and whether the run was interrupted.
    """
    goal = count if count is not None else sys.maxsize
    interrupted = False
    with receiver:
        say(
            f"listening on {receiver.url}: POST /v1/batch, /v1/track, /v1/identify, /v1/group, "
            "/v1/alias, /v1/page, /v1/screen; Ctrl-C to stop"
        )
        try:
            check.wait_for_received(goal, duration)
        except KeyboardInterrupt:
            interrupted = True
        check.wait_answered()  # the last sender gets its answer before the port closes
        counts = check.counts()
    return counts, interrupted


def _outcome(counts: Dict[str, int], interrupted: bool, count: Optional[int]) -> int:
    """Say what arrived; the exit status, failed for anything invalid or rejected, or for
    fewer than ``count`` messages when the run was not interrupted."""
    received = counts["messages"] + counts["unreadable"]
    say(
        f"{'stopped' if interrupted else 'done'}: {counts['requests']:,} request(s), "
        f"{counts['valid']:,} valid message(s), {counts['invalid']:,} invalid, "
        f"{counts['rejected']:,} request(s) rejected"
    )
    if counts["invalid"] or counts["rejected"]:
        return EXIT_FAILED
    if count is not None and received < count and not interrupted:
        say(f"only {received:,} of the {count:,} messages expected arrived")
        return EXIT_FAILED
    return EXIT_OK


def collect(args: argparse.Namespace) -> int:
    """Receive messages like Segment's Tracking API, check each one, and show it."""
    _check_flags(args)
    write_key = write_key_flag(args)
    opened = _open_output(args.jsonl)
    printer = _Printer(sys.stdout if opened is None else opened, jsonl=bool(args.jsonl))
    check = SpecCheck(write_key=write_key, strict=args.strict, on_verdict=printer, keep=False)
    try:
        receiver = LocalCollector(
            args.host,
            args.port,
            check=check,
            max_request_bytes=args.max_request_bytes,
            max_decoded_bytes=args.max_decoded_bytes,
            idle_timeout=args.idle_timeout,
            request_timeout=args.request_timeout,
            max_connections=args.max_connections,
        )
    except OSError as exc:
        if opened is not None:
            opened.close()
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    previous = _stop_on_sigterm()
    try:
        counts, interrupted = _receive(receiver, check, args.count, args.duration)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if opened is not None:
            opened.close()
    return _outcome(counts, interrupted, args.count)
