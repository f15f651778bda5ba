"""``segmentio-logging send``: one message, synchronously, with the end-to-end tester's flags."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from .._errors import InvalidMessage
from .._spec import COMMON_FIELDS, TYPE_FIELDS
from .._transport import transport_for
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    FIELD_KEYWORDS,
    JSON_FIELDS,
    UsageError,
    deliver,
    make_message,
    options_from,
    say,
)


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


def _flag_names(reason: str) -> str:
    """Segment field names in a reason, spelled as the flags that set them."""
    for name in FIELD_KEYWORDS:
        reason = reason.replace(f"needs {name}", f"needs --{name}").replace(
            f"or {name}", f"or --{name}"
        )
    return reason


def send(args: argparse.Namespace) -> int:
    """Send one message and wait for the receiver's answer."""
    options = options_from(args)
    kind: str = args.type
    fields: Dict[str, Any] = {}
    for flag in FIELD_KEYWORDS:
        text = getattr(args, flag)
        if text is None:
            continue
        fields[flag] = _json_object(flag, text) if flag in JSON_FIELDS else text
    allowed = COMMON_FIELDS | TYPE_FIELDS[kind]
    for flag in sorted(set(fields) - allowed):
        say(f"note: --{flag} is not a field of {kind} messages; ignored")
        del fields[flag]
    try:
        message, data = make_message(fields, kind)
    except InvalidMessage as exc:
        raise UsageError(f"cannot send this {kind}: {_flag_names(exc.reason)}") from None
    if args.verbose:
        say(json.dumps(message, indent=2, ensure_ascii=False), sys.stdout)
    transport = transport_for(options)
    try:
        accepted, detail = deliver(transport, [data])
    finally:
        transport.close()
    if not accepted:
        say(f"error: {kind} {message['messageId']} not accepted by {options.host}: {detail}")
        return EXIT_FAILED
    say(f"accepted: {kind} {message['messageId']} ({detail} from {options.host})", sys.stdout)
    return EXIT_OK
