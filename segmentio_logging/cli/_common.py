"""What the commands share: exit statuses, usage errors, options from the flags, delivery."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import re
import sys
from typing import IO, Any, Dict, List, Optional, Tuple

from .._connection import route_for
from .._errors import DeliveryError, InvalidMessage
from .._message import build_message, encode, new_message_id
from .._options import Options, env_var, resolve_options
from .._spec import OBJECT_FIELDS, check_message
from .._timestamps import format_timestamp
from .._transport import Response, Transport

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
# The fields whose values are objects: a flag or a CSV cell gives them as JSON text.
JSON_FIELDS = OBJECT_FIELDS


class UsageError(Exception):
    """A command line that cannot run as given (exit status 2)."""


def say(text: str, stream: Optional[IO[str]] = None) -> None:
    """Write a line to ``stream`` (default: stderr) at once."""
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


# --------------------------------------------------------------------------- write key

_KEY_FILE_LIMIT = 4096  # bytes: a write key is a few dozen; more is the wrong file


def write_key_flag(args: argparse.Namespace) -> Optional[str]:
    """The write key of ``--writeKey`` or ``--writeKey-file``; None when neither was given."""
    if args.writeKey_file is None:
        key: Optional[str] = args.writeKey
        return key
    return read_write_key(args.writeKey_file)


def read_write_key(path: str) -> str:
    """The write key held in the file at ``path`` (``-``: standard input), one newline stripped.

    A terminal on standard input is asked for the key without echo. Raises
    :class:`UsageError` for a file that cannot be read, is empty, or holds more
    than one line.
    """
    where = "- (standard input)" if path == "-" else repr(path)
    try:
        data = _read_key_bytes(path)
    except OSError as exc:
        raise UsageError(f"cannot read --writeKey-file {where}: {exc.strerror or exc}") from None
    if len(data) > _KEY_FILE_LIMIT:
        raise UsageError(f"--writeKey-file {where} is over {_KEY_FILE_LIMIT} bytes: not a key")
    try:
        key = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--writeKey-file {where} is not UTF-8 text") from None
    if key.endswith("\n"):
        key = key[:-2] if key.endswith("\r\n") else key[:-1]
    if not key.strip():
        raise UsageError(f"--writeKey-file {where} is empty: it must hold the write key")
    if "\n" in key or "\r" in key:
        raise UsageError(f"--writeKey-file {where} holds more than one line: only the key")
    return key


def _read_key_bytes(path: str) -> bytes:
    if path != "-":
        with open(path, "rb") as stream:
            return stream.read(_KEY_FILE_LIMIT + 1)
    stdin = sys.stdin
    if stdin is None:
        raise OSError("no standard input")
    if stdin.isatty():  # a person at a terminal: ask, and keep the key off the screen
        return getpass.getpass("write key: ").encode("utf-8")
    binary: Optional[IO[bytes]] = getattr(stdin, "buffer", None)
    if binary is None:  # replaced by a text stream (an embedding program, a test)
        return stdin.read(_KEY_FILE_LIMIT + 1).encode("utf-8")
    return binary.read(_KEY_FILE_LIMIT + 1)


# --------------------------------------------------------------------------- delivery


def options_from(args: argparse.Namespace, *, need_key: bool = True) -> Options:
    """Write key, host, timeout, retries, proxy and TLS: from the flags, else ``SEGMENT_*``
    (the standard proxy and CA variables after them), else defaults."""
    given: Dict[str, Any] = {"host": args.host, "timeout": args.timeout}
    given.update(proxy=args.proxy, ca_certs=args.ca_certs)
    given.update(client_cert=args.client_cert, client_key=args.client_key)
    key = write_key_flag(args)
    if key is None:
        key = os.environ.get(env_var("write_key"))
    if need_key and not (key or "").strip():
        raise UsageError(
            "no write key: pass --writeKey-file=PATH or set SEGMENT_WRITE_KEY "
            "(or --writeKey=KEY, which other users can see in ps)"
        )
    given["write_key"] = key
    given["send"] = need_key
    if args.retries is not None:
        given["max_retries"] = args.retries
    elif not os.environ.get(env_var("max_retries")):
        given["max_retries"] = 3  # a person waits on the command: fewer than the library's 10
    try:
        options = resolve_options(given)
        route_for(
            options.host,
            proxy=options.proxy,
            ca_certs=options.ca_certs,
            client_cert=options.client_cert,
            client_key=options.client_key,
        )  # a proxy or a certificate file that cannot be used is a usage error, said now
    except (TypeError, ValueError) as exc:
        raise UsageError(_flag_names(str(exc))) from None
    return options


# The options of the flags that tell how to reach the host, in errors spelled as the flags.
_FLAGS = {"ca_certs": "--ca-certs", "client_cert": "--client-cert", "client_key": "--client-key"}


def _flag_names(text: str) -> str:
    """``text`` with the names of the connection options spelled as their flags."""
    for name, flag in _FLAGS.items():
        text = re.sub(rf"\b{name}\b", flag, text)
    return "--" + text if text.startswith("proxy") else text


def _failure_text(error: DeliveryError) -> str:
    body = " ".join(error.body.split())
    if body and error.status is not None:  # for a network error the reason says it already
        body = body if len(body) <= 300 else body[:299] + "…"
        return f"{error.reason}: {body}"
    return error.reason


def deliver(transport: Transport, parts: List[bytes]) -> Tuple[bool, str]:
    """Send ``parts`` as one batch (or two halves after a 413); True when all were accepted."""
    outcomes = transport.deliver(parts)
    for _, _, outcome in outcomes:
        if isinstance(outcome, DeliveryError):
            return False, _failure_text(outcome)
    statuses = sorted({o.status for _, _, o in outcomes if isinstance(o, Response)})
    return True, "HTTP " + "/".join(str(s) for s in statuses)
