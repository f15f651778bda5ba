"""``python -m segmentio_logging`` / ``segmentio-logging``: the command line.

    segmentio-logging send --writeKey=KEY --type=track --userId=u1 --event="Signed Up"
    segmentio-logging import events.jsonl --writeKey=KEY
    segmentio-logging collect --port 8088
    segmentio-logging demo

Exit status: 0 when everything asked for was done, 1 when something was not
accepted or not valid, 2 for a usage error, 130 after Ctrl-C in ``import``.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import math
import os
import sys
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
)

from ._errors import DeliveryError, InvalidMessage
from ._message import (
    MESSAGE_TYPES,
    build_message,
    encode,
    new_message_id,
)
from ._options import Options, env_var, resolve_options
from ._timestamps import format_timestamp
from ._transport import Response, Transport
from ._version import __version__

if TYPE_CHECKING:
    pass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Segment's camelCase fields and the keyword of ``build_message`` each one fills.
FIELD_KEYWORDS = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "event": "event",
    "name": "name",
    "category": "category",
    "groupId": "group_id",
    "previousId": "previous_id",
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
    "timestamp": "timestamp",
    "messageId": "message_id",
}
JSON_FIELDS = ("properties", "traits", "context", "integrations")
COMMON_FIELDS = {"userId", "anonymousId", "context", "integrations", "timestamp", "messageId"}
TYPE_FIELDS = {
    "track": {"event", "properties"},
    "identify": {"traits"},
    "group": {"groupId", "traits"},
    "alias": {"previousId"},
    "page": {"name", "category", "properties"},
    "screen": {"name", "category", "properties"},
}
# Fields a Segment export carries that the server sets: an import leaves them out.
SERVER_FIELDS = {
    "type",
    "sentAt",
    "receivedAt",
    "originalTimestamp",
    "writeKey",
    "version",
    "channel",
    "projectId",
    "_metadata",
}


class UsageError(Exception):
    """A command line that cannot run as given (exit status 2)."""


def _say(text: str, stream: Optional[IO[str]] = None) -> None:
    out = sys.stderr if stream is None else stream
    out.write(text + "\n")
    out.flush()


# --------------------------------------------------------------------------- messages


def _epoch_timestamp(value: Any) -> Any:
    """Epoch seconds (or milliseconds, when too large for seconds) as ISO-8601; else as is."""
    number: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
    if number is None or not math.isfinite(number):
        return value
    if abs(number) >= 1e11:  # 1e11 seconds is in the year 5138: these are milliseconds
        number /= 1000.0
    if not -62_135_596_800 <= number < 253_402_300_800:
        return value
    return format_timestamp(number)


def make_message(
    fields: Dict[str, Any], kind: str, message_id: Optional[str] = None
) -> Tuple[Dict[str, Any], bytes]:
    """Build and encode a message from Segment's camelCase ``fields``.

    ``message_id`` is used when ``fields`` has no ``messageId``. Raises
    :class:`InvalidMessage` naming the fields as Segment spells them.
    """
    from ._collect import check_message

    given = {key: value for key, value in fields.items() if value is not None}
    if "timestamp" in given:
        given["timestamp"] = _epoch_timestamp(given["timestamp"])
    given.setdefault("messageId", message_id or new_message_id())
    errors = check_message({**given, "type": kind})
    if errors:
        raise InvalidMessage("; ".join(errors))
    keywords = {FIELD_KEYWORDS[key]: value for key, value in given.items() if key in FIELD_KEYWORDS}
    message = build_message(kind, **keywords)
    return message, encode(message)


def _resolve(args: argparse.Namespace, *, need_key: bool = True) -> Options:
    """Write key, host, timeout and retries: from the flags, else ``SEGMENT_*``, else defaults."""
    given: Dict[str, Any] = {"host": args.host, "timeout": args.timeout}
    key = args.writeKey if args.writeKey is not None else os.environ.get(env_var("write_key"))
    if need_key and not (key or "").strip():
        raise UsageError("no write key: pass --writeKey=KEY or set SEGMENT_WRITE_KEY")
    given["write_key"] = key
    given["send"] = need_key
    if args.retries is not None:
        given["max_retries"] = args.retries
    elif not os.environ.get(env_var("max_retries")):
        given["max_retries"] = 3  # a person waits on the command: fewer than the library's 10
    try:
        return resolve_options(given)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _transport(options: Options) -> Transport:
    from ._transport import transport_for

    return transport_for(options)


def _failure_text(error: DeliveryError) -> str:
    body = " ".join(error.body.split())
    if body and error.status is not None:  # for a network error the reason says it already
        body = body if len(body) <= 300 else body[:299] + "…"
        return f"{error.reason}: {body}"
    return error.reason


def _deliver(transport: Transport, parts: List[bytes]) -> Tuple[bool, str]:
    """Send ``parts`` as one batch (or two halves after a 413); True when all were accepted."""
    outcomes = transport.deliver(parts)
    for _, _, outcome in outcomes:
        if isinstance(outcome, DeliveryError):
            return False, _failure_text(outcome)
    statuses = sorted({o.status for _, _, o in outcomes if isinstance(o, Response)})
    return True, "HTTP " + "/".join(str(s) for s in statuses)


# --------------------------------------------------------------------------- send


def _json_object(flag: str, text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--{flag} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise UsageError(
            f'--{flag} must be a JSON object such as \'{{"plan": "pro"}}\', got {kind}'
        )
    return value


def send(args: argparse.Namespace) -> int:
    """Send one message and wait for the receiver's answer."""
    options = _resolve(args)
    kind: str = args.type
    fields: Dict[str, Any] = {}
    for flag in FIELD_KEYWORDS:
        text = getattr(args, flag)
        if text is None:
            continue
        fields[flag] = _json_object(flag, text) if flag in JSON_FIELDS else text
    allowed = COMMON_FIELDS | TYPE_FIELDS[kind] | ({"userId"} if kind == "alias" else set())
    for flag in sorted(set(fields) - allowed):
        _say(f"note: --{flag} is not a field of {kind} messages; ignored")
        del fields[flag]
    try:
        message, data = make_message(fields, kind)
    except InvalidMessage as exc:
        raise UsageError(f"cannot send this {kind}: {_flag_names(exc.reason)}") from None
    if args.verbose:
        _say(json.dumps(message, indent=2, ensure_ascii=False), sys.stdout)
    transport = _transport(options)
    try:
        accepted, detail = _deliver(transport, [data])
    finally:
        transport.close()
    if not accepted:
        _say(f"error: {kind} {message['messageId']} not accepted by {options.host}: {detail}")
        return EXIT_FAILED
    _say(f"accepted: {kind} {message['messageId']} ({detail} from {options.host})", sys.stdout)
    return EXIT_OK


def _flag_names(reason: str) -> str:
    """Segment field names in a reason, spelled as the flags that set them."""
    for name in FIELD_KEYWORDS:
        reason = reason.replace(f"needs {name}", f"needs --{name}").replace(
            f"or {name}", f"or --{name}"
        )
    return reason


# --------------------------------------------------------------------------- import, collect


def import_file(args: argparse.Namespace) -> int:
    """``import FILE``: see :mod:`segmentio_logging._import`."""
    from ._import import import_file as run

    return run(args)


def collect(args: argparse.Namespace) -> int:
    """``collect``: see :mod:`segmentio_logging._collect`."""
    from ._collect import collect as run

    return run(args)


# --------------------------------------------------------------------------- demo


def _cell(value: Any, width: int) -> str:
    text = (
        value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(messages: Sequence[Dict[str, Any]]) -> str:
    """A readable table of Segment messages, one row each."""
    header = ("type", "user / anonymous id", "event / name", "properties / traits", "timestamp")
    widths = (9, 24, 22, 40, 24)
    rows: List[Sequence[str]] = [header]
    for message in messages:
        who = message.get("userId") or f"anon:{message.get('anonymousId', '')}"
        what = (
            message.get("event")
            or message.get("name")
            or message.get("groupId")
            or message.get("previousId", "")
        )
        data = message.get("properties") if "properties" in message else message.get("traits", {})
        rows.append(
            (
                _cell(message.get("type", "?"), widths[0]),
                _cell(who, widths[1]),
                _cell(what, widths[2]),
                _cell(data, widths[3]),
                _cell(message.get("timestamp", ""), widths[4]),
            )
        )
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline against a local receiver and print what it received."""
    from ._handler import SegmentHandler
    from .testing import LocalCollector

    with LocalCollector() as collector:
        print(f"local Segment-compatible receiver listening on {collector.url}")
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "segment": {
                        "class": "segmentio_logging.SegmentHandler",
                        "write_key": "demo-write-key",
                        "host": collector.url,
                        "level": "INFO",
                    }
                },
                "loggers": {"shop": {"handlers": ["segment"], "level": "INFO"}},
            }
        )
        log = logging.getLogger("shop")
        log.info("identify", extra={"user_id": "u-1001", "traits": {"name": "Ada", "plan": "pro"}})
        log.info(
            "Played a Song",
            extra={
                "user_id": "u-1001",
                "properties": {"artist": "The Beatles", "song": "Eleanor Rigby"},
            },
        )
        log.info(
            "Added %s to cart",
            "Abbey Road",
            extra={"session_id": "s-77", "properties": {"price": 9.99}},
        )
        log.info(
            "Checkout", extra={"user_id": "u-1001", "group_id": "acme", "traits": {"plan": "team"}}
        )
        log.info(
            "Pricing",
            extra={
                "anonymous_id": "s-77",
                "segment_type": "page",
                "properties": {"path": "/pricing"},
            },
        )
        log.info("a plain log line without a user is skipped")
        handler = next(h for h in log.handlers if isinstance(h, SegmentHandler))
        delivered = handler.flush(timeout=10)
        stats = handler.stats()
        requests = collector.requests
        gzipped = bool(requests) and requests[0].headers.get("content-encoding") == "gzip"
        print(
            f"flushed: {'yes' if delivered else 'NO (timed out)'}; {len(requests)} request(s), "
            f"gzip={'on' if gzipped else 'off'}, "
            f"write key seen by the receiver: {requests[0].write_key if requests else None!r}"
        )
        print()
        print(format_table(collector.messages))
        print()
        print("stats:", ", ".join(f"{k}={v}" for k, v in stats.items()))
        logging.getLogger("shop").removeHandler(handler)
        handler.close()
    return 0 if delivered and len(collector.messages) == 5 else 1


def _add_delivery_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--writeKey", metavar="KEY", help="the source's write key (default: $SEGMENT_WRITE_KEY)"
    )
    parser.add_argument(
        "--host",
        metavar="URL",
        help="the receiver (default: $SEGMENT_HOST, else https://api.segment.io)",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="per request (default: 15)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retries of a request that failed for a reason worth retrying (default: 3)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentio-logging",
        description="Segment analytics for Python's logging module.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    send_parser = commands.add_parser(
        "send",
        help="send one message and wait for the answer",
        description="Send one message synchronously; exit 0 only when the receiver accepted it. "
        "The flags are those of Segment's library end-to-end tester; JSON values for "
        "--properties, --traits, --context and --integrations.",
        allow_abbrev=False,
    )
    _add_delivery_flags(send_parser)
    send_parser.add_argument("--type", required=True, choices=MESSAGE_TYPES)
    for flag in FIELD_KEYWORDS:
        if flag == "timestamp":
            send_parser.add_argument(
                "--timestamp", metavar="WHEN", help="ISO-8601 or epoch seconds (default: now)"
            )
        else:
            metavar = "JSON" if flag in JSON_FIELDS else flag.upper()
            send_parser.add_argument(f"--{flag}", metavar=metavar)
    send_parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the message before sending it"
    )
    send_parser.set_defaults(run=send)

    import_parser = commands.add_parser(
        "import",
        help="import historical messages from JSON Lines or CSV",
        description="Send every line of FILE, in order, at a steady rate. Progress is kept in a "
        "state file next to FILE: after an interruption the same command resumes where the "
        "last confirmed batch ended, and a line's messageId is the same on every run, so "
        "Segment drops what is sent twice.",
        allow_abbrev=False,
    )
    import_parser.add_argument("file", metavar="FILE", help="a .jsonl or .csv file")
    _add_delivery_flags(import_parser)
    import_parser.add_argument(
        "--format", choices=("jsonl", "csv"), help="default: csv for *.csv, else jsonl"
    )
    import_parser.add_argument(
        "--type",
        default="track",
        choices=MESSAGE_TYPES,
        help="the type of lines or rows without one (default: track)",
    )
    import_parser.add_argument(
        "--map",
        action="append",
        metavar="FIELD=COLUMN,...",
        help="CSV: which column fills which field, e.g. userId=user,event=action,timestamp=ts "
        "(also properties.KEY=COLUMN); other columns become properties (traits for identify "
        "and group)",
    )
    import_parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        metavar="N",
        help="at most N messages a second on average (default: 500; 0: no limit)",
    )
    import_parser.add_argument(
        "--batch-size", type=int, default=100, metavar="N", help="messages per request (100)"
    )
    import_parser.add_argument(
        "--state", metavar="PATH", help="the state file (default: FILE.segment-import.json)"
    )
    import_parser.add_argument(
        "--restart", action="store_true", help="ignore the state file and start from line 1"
    )
    import_parser.add_argument(
        "--limit", type=int, metavar="N", help="stop after N lines (the next run continues)"
    )
    import_parser.add_argument(
        "--dry-run", action="store_true", help="check every line; send nothing"
    )
    import_parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress (default: when stderr is a terminal)",
    )
    import_parser.set_defaults(run=import_file)

    collect_parser = commands.add_parser(
        "collect",
        help="run a local Segment-compatible receiver that checks every message",
        description="Receive POST /v1/batch and the single-call paths (gzip, Basic auth) as "
        "Segment's Tracking API does, check every message against the spec, and print a line "
        "for each. Exit status 1 when anything invalid arrived.",
        allow_abbrev=False,
    )
    collect_parser.add_argument("--host", default="127.0.0.1", help="address (127.0.0.1)")
    collect_parser.add_argument(
        "--port", type=int, default=0, help="port (default: 0, a free port, printed)"
    )
    collect_parser.add_argument(
        "--writeKey", metavar="KEY", help="accept only this write key (default: any)"
    )
    collect_parser.add_argument(
        "--strict",
        action="store_true",
        help="answer 400 to a request holding an invalid message (Segment answers 200)",
    )
    collect_parser.add_argument(
        "--jsonl",
        metavar="FILE",
        help="write each message and its verdict as JSON Lines to FILE ('-': stdout) "
        "instead of readable lines",
    )
    collect_parser.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    collect_parser.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after SECONDS"
    )
    collect_parser.set_defaults(run=collect)

    demo_parser = commands.add_parser(
        "demo", help="log a few events to a local receiver and show what it received"
    )
    demo_parser.set_defaults(run=demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Segment's end-to-end tester calls the program with its flags alone: that is a send.
    if arguments and arguments[0].startswith("--") and arguments[0] not in ("--help", "--version"):
        arguments.insert(0, "send")
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.run(args))
    except UsageError as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
