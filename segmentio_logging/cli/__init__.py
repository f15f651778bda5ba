"""``python -m segmentio_logging`` / ``segmentio-logging``: the command line.

    segmentio-logging send --writeKey=KEY --type=track --userId=u1 --event="Signed Up"
    segmentio-logging import events.jsonl --writeKey=KEY
    segmentio-logging collect --port 8088
    segmentio-logging demo

Exit status: 0 when everything asked for was done, 1 when something was not
accepted or not valid, 2 for a usage error, 130 after Ctrl-C in ``import``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ._common import EXIT_USAGE, UsageError, say
from ._parser import build_parser

__all__ = ["main"]


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
        say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_USAGE
