"""The command line's flags: one subparser per command, each pointing at its entry function."""

from __future__ import annotations

import argparse

from .._receiver import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_DECODED_BYTES,
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
)
from .._segment import MESSAGE_TYPES
from .._version import __version__
from ._collect import collect
from ._common import FIELD_KEYWORDS, JSON_FIELDS
from ._demo import demo
from ._import import import_file
from ._send import send

# A command line is visible to every user of the machine (ps, /proc/PID/cmdline).
_SEEN_IN_PS = "other users can see it in ps: prefer --writeKey-file"
_KEY_FILE_HELP = (
    "read {what} from PATH ('-': standard input, asked for without echo at a terminal); "
    "one trailing newline is stripped"
)


def _add_write_key_flags(parser: argparse.ArgumentParser, *, key_help: str, file_help: str) -> None:
    """``--writeKey KEY`` or ``--writeKey-file PATH`` (also ``--write-key-file``), not both."""
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--writeKey", metavar="KEY", help=key_help)
    flags.add_argument(
        "--writeKey-file", "--write-key-file", dest="writeKey_file", metavar="PATH", help=file_help
    )


def _add_delivery_flags(parser: argparse.ArgumentParser) -> None:
    _add_write_key_flags(
        parser,
        key_help=f"the source's write key (default: $SEGMENT_WRITE_KEY); {_SEEN_IN_PS} "
        "or $SEGMENT_WRITE_KEY",
        file_help=_KEY_FILE_HELP.format(what="the write key"),
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
    _add_connection_flags(parser)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """How requests reach the host: a proxy, the CAs to trust, a client certificate."""
    network = parser.add_argument_group(
        "proxy and TLS",
        "Each flag, when not given, falls back to its SEGMENT_* variable, then to the "
        "standard ones named below. See docs/proxies-and-tls.md.",
    )
    network.add_argument(
        "--proxy",
        metavar="URL",
        help="an HTTP proxy, http://host:port or http://user:password@host:port; HTTPS goes "
        "through it with CONNECT (default: $SEGMENT_PROXY, else $HTTPS_PROXY or $HTTP_PROXY "
        "for the host's scheme, then $ALL_PROXY, unless $NO_PROXY names the host or its network; "
        "--proxy='': none); with a password, other users can see it in ps: prefer the variables",
    )
    network.add_argument(
        "--ca-certs",
        metavar="PATH",
        help="a PEM bundle of the CAs that verify the host, for a private CA or a proxy that "
        "inspects TLS (default: $SEGMENT_CA_CERTS, else $REQUESTS_CA_BUNDLE, else "
        "$SSL_CERT_FILE, else the system's CA store)",
    )
    network.add_argument(
        "--client-cert",
        metavar="PATH",
        help="a client certificate (PEM) for mutual TLS, its key in the same file or in "
        "--client-key (default: $SEGMENT_CLIENT_CERT)",
    )
    network.add_argument(
        "--client-key",
        metavar="PATH",
        help="the unencrypted private key (PEM) of --client-cert (default: $SEGMENT_CLIENT_KEY)",
    )


def _add_receiver_limits(parser: argparse.ArgumentParser) -> None:
    """What one client may make ``collect`` hold (it may face anyone who can reach it)."""
    limits = parser.add_argument_group("limits on what a client may send")
    limits.add_argument(
        "--max-request-bytes",
        type=int,
        default=MAX_REQUEST_BYTES,
        metavar="N",
        help=f"the largest body as sent (default: {MAX_REQUEST_BYTES:,}, 1 MiB); a larger "
        "Content-Length is answered 413 before the body is read",
    )
    limits.add_argument(
        "--max-decoded-bytes",
        type=int,
        default=MAX_DECODED_BYTES,
        metavar="N",
        help=f"the largest body once gzip is undone (default: {MAX_DECODED_BYTES:,}, 4 MiB; "
        "413 past it)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection that sends nothing for SECONDS (default: {IDLE_TIMEOUT:g})",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="the time a client has to send a whole request, from its first byte; 408 past "
        f"it (default: {REQUEST_TIMEOUT:g})",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once, a thread each; more wait to be accepted "
        f"(default: {MAX_CONNECTIONS})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each one's entry function is its ``run`` default."""
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
        "--batch-size", type=int, default=500, metavar="N", help="messages per request (500)"
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
    _add_write_key_flags(
        collect_parser,
        key_help=f"accept only this write key (default: any); {_SEEN_IN_PS}",
        file_help=_KEY_FILE_HELP.format(what="the only write key to accept"),
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
    _add_receiver_limits(collect_parser)
    collect_parser.set_defaults(run=collect)

    demo_parser = commands.add_parser(
        "demo", help="log a few events to a local receiver and show what it received"
    )
    demo_parser.set_defaults(run=demo)
    return parser
