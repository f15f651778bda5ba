"""Segment's spec as checks: what is wrong with a message, how a request is answered.

:func:`check_message` and :func:`check_request` are pure: they say what is
wrong with a message or a request, in words a person can act on. ``collect``
runs them on everything it receives, ``import`` on every line before it is
sent, and :mod:`segmentio_logging.testing` reads the paths and the write key
as they define them.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from ._segment import (
    MAX_BATCH_BYTES,
    MAX_BATCH_COUNT,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ID_LENGTH,
    MESSAGE_TYPES,
)

__all__ = [
    "BATCH_PATHS",
    "COMMON_FIELDS",
    "OBJECT_FIELDS",
    "SERVER_FIELDS",
    "SINGLE_CALL_PATHS",
    "TIMESTAMP_FIELDS",
    "TYPE_FIELDS",
    "Checked",
    "Verdict",
    "basic_auth_user",
    "check_message",
    "check_request",
    "is_iso8601",
]

BATCH_PATHS = ("/v1/batch", "/v1/import")  # /v1/import is Segment's alias of /v1/batch
# The Tracking API's one-message paths, and the type each one implies.
SINGLE_CALL_PATHS = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/page": "page",
    "/v1/screen": "screen",
}

TIMESTAMP_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
# The fields a client sets on a message of any type, and those of each type.
COMMON_FIELDS: FrozenSet[str] = frozenset(
    {"userId", "anonymousId", "context", "integrations", "timestamp", "messageId"}
)
TYPE_FIELDS: Dict[str, FrozenSet[str]] = {
    "track": frozenset({"event", "properties"}),
    "identify": frozenset({"traits"}),
    "group": frozenset({"groupId", "traits"}),
    "alias": frozenset({"previousId"}),
    "page": frozenset({"name", "category", "properties"}),
    "screen": frozenset({"name", "category", "properties"}),
}
# Fields a Segment export carries that the server sets: an import leaves them out.
SERVER_FIELDS: FrozenSet[str] = frozenset(
    {
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
)

_ISO8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)

# The form clients send (2026-01-02T03:04:05.678Z), its hours, minutes and seconds in range:
# a subset of _ISO8601 checked without reading a number, for a check that runs on every
# timestamp the receiver gets.
_CANONICAL = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


@functools.lru_cache(maxsize=4096)
def _valid_date(year: str, month: str, day: str) -> bool:
    """Whether the digits of a date name a real day (a batch's timestamps share a few dates)."""
    try:
        dt.date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def is_iso8601(value: Any) -> bool:
    """True for an ISO-8601 date and time such as ``2026-01-02T03:04:05.678Z``."""
    if not isinstance(value, str):
        return False
    if _CANONICAL.fullmatch(value) is not None:
        return _valid_date(value[:4], value[5:7], value[8:10])
    match = _ISO8601.fullmatch(value.strip())
    if match is None:
        return False
    year, month, day, hour, minute, second = match.group(1, 2, 3, 4, 5, 6)
    # Hours up to 23, minutes up to 59, seconds up to 60 (a leap second).
    return (
        int(hour) <= 23
        and int(minute) <= 59
        and (second is None or int(second) <= 60)
        and _valid_date(year, month, day)
    )


# The compact encoding whose size Segment limits. One encoder for every message: json.dumps
# with these options would build a new one per call, a tenth of the time of a check.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _encoded_size(value: Any) -> int:
    # A lone surrogate (a "\\ud800" escape that JSON allows) counts as the 3 bytes of the
    # replacement character a receiver stores in its place, instead of raising.
    return len(_COMPACT_JSON.encode(value).encode("utf-8", "surrogatepass"))


# How many bytes of messages are sized in one encoding (see _known_to_fit): half the limit
# per message, so that a run of ordinary messages rarely needs sizing one by one.
_SIZED_AT_ONCE = MAX_MESSAGE_BYTES // 2


def _known_to_fit(batch: List[Any], body_bytes: int) -> List[bool]:
    """For each message of ``batch``, whether it certainly fits the 32 KB limit.

    Messages are encoded a run at a time: a run that fits the limit whole holds only
    messages that fit (each is shorter than the run). One encoding per run instead of one
    per message is most of the cost of sizing. A message in a run over the limit is
    sized alone by check_message.
    """
    count = len(batch)
    fits = [False] * count
    if not count:
        return fits
    per_message = max(body_bytes // count, 1)
    run = max(_SIZED_AT_ONCE // per_message, 1)
    for start in range(0, count, run):
        part = batch[start : start + run]
        try:
            size = _encoded_size(part)
        except Exception:  # sized one by one, where the reason is reported
            continue
        if size <= MAX_MESSAGE_BYTES:
            fits[start : start + len(part)] = [True] * len(part)
    return fits


def _is_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (int, float))


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ----------------------------------------------------------------------------- one message
# Each rule adds to ``errors`` what is wrong with one part of a message of type ``kind``.
# check_message runs them in the order of _MESSAGE_RULES, the order the reasons are reported
# in; they append to one list rather than return their own, as the receiver runs them all
# on every message it gets.

_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId")
_LABEL_FIELDS = ("name", "category")
_Rule = Callable[[Dict[str, Any], Any, List[str]], None]


def _type_errors(kind: Any, expected_type: Optional[str]) -> List[str]:
    """The type is given (or implied by the path), agrees with the path, and is known."""
    if kind is None:
        return ["missing type"]
    if expected_type is not None and kind != expected_type:
        return [f"type {kind!r} sent to /v1/{expected_type}"]
    if kind not in MESSAGE_TYPES:
        return [f"unknown type {kind!r} (known: {', '.join(MESSAGE_TYPES)})"]
    return []


def _check_ids(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """Every id given is a non-empty string or a number."""
    for name in _ID_FIELDS:
        value = message.get(name)
        if value is not None and not _is_id(value):
            errors.append(f"{name} must be a non-empty string, got {_describe(value)}")


def _check_identity(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """An alias names both ids; any other message userId or anonymousId."""
    if kind == "alias":
        for name in ("previousId", "userId"):
            if message.get(name) is None:
                errors.append(f"alias needs {name}")
    elif message.get("userId") is None and message.get("anonymousId") is None:
        errors.append(
            f"{kind if isinstance(kind, str) else 'a message'} needs userId or anonymousId"
        )


def _check_event(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """A track names its event, a non-empty string."""
    if kind != "track":
        return
    event = message.get("event")
    if event is None:
        errors.append("track needs event")
    elif not isinstance(event, str) or not event.strip():
        errors.append(f"event must be a non-empty string, got {_describe(event)}")


def _check_group_id(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """A group names its groupId."""
    if kind == "group" and message.get("groupId") is None:
        errors.append("group needs groupId")


def _check_labels(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """name and category, when given, are strings."""
    for name in _LABEL_FIELDS:
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(f"{name} must be a string, got {_describe(value)}")


def _check_objects(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """properties, traits, context and integrations, when given, are objects."""
    for name in OBJECT_FIELDS:
        value = message.get(name)
        if value is not None and not isinstance(value, dict):
            errors.append(f"{name} must be an object, got {_describe(value)}")


def _check_timestamps(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """Every timestamp given is ISO-8601."""
    for name in TIMESTAMP_FIELDS:
        value = message.get(name)
        if value is not None and not is_iso8601(value):
            errors.append(f"{name} {value!r} is not ISO-8601 (like 2026-01-02T03:04:05.678Z)")


def _check_message_id(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """messageId is optional in the HTTP API (Segment fills it in); when given, it must be sound."""
    message_id = message.get("messageId")
    if message_id is None:
        return
    if not isinstance(message_id, str) or not message_id:
        errors.append(f"messageId must be a non-empty string, got {_describe(message_id)}")
    elif len(message_id) > MAX_MESSAGE_ID_LENGTH:
        errors.append(f"messageId is {len(message_id)} characters, over {MAX_MESSAGE_ID_LENGTH}")


def _check_size(message: Dict[str, Any], kind: Any, errors: List[str]) -> None:
    """The message, encoded, fits Segment's limit."""
    size = _encoded_size(message)
    if size > MAX_MESSAGE_BYTES:
        errors.append(f"message is {size:,} bytes, over the 32 KB limit ({MAX_MESSAGE_BYTES:,})")


_MESSAGE_RULES: Tuple[_Rule, ...] = (
    _check_ids,
    _check_identity,
    _check_event,
    _check_group_id,
    _check_labels,
    _check_objects,
    _check_timestamps,
    _check_message_id,
    _check_size,
)
# The rules for a message already known to fit the size limit (see _known_to_fit).
_RULES_BUT_SIZE = _MESSAGE_RULES[:-1]


def check_message(message: Any, expected_type: Optional[str] = None) -> List[str]:
    """What is wrong with one message (an empty list when it is valid).

    ``expected_type`` is the type a single-call path implies (``/v1/track``);
    a message there may omit ``type`` but must not contradict it.
    """
    return _message_errors(message, expected_type, _MESSAGE_RULES)


def _message_errors(
    message: Any, expected_type: Optional[str], rules: Tuple[_Rule, ...]
) -> List[str]:
    if not isinstance(message, dict):
        return [f"a message must be a JSON object, got {_describe(message)}"]
    kind = message.get("type", expected_type)
    errors = _type_errors(kind, expected_type)
    for rule in rules:
        rule(message, kind, errors)
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


def basic_auth_user(headers: Mapping[str, str]) -> Optional[str]:
    """The user name of a Basic ``authorization`` header (Segment's write key), if any.

    ``headers`` have lower-case names. The name may be empty (``Basic Og==``).
    """
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        user, _, _ = (
            base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
        )
    except ValueError:  # not base64 (binascii.Error), or not UTF-8 (UnicodeDecodeError)
        return None
    return user


# ----------------------------------------------------------------------------- one request
# Each step below either returns what the next one needs or raises _Rejected with the
# answer to the whole request; check_request runs them in the order Segment checks.


class _Rejected(Exception):
    """A request answered whole with an error: ``verdict`` is the answer."""

    def __init__(self, status: int, error: str, write_key: Optional[str] = None) -> None:
        super().__init__(error)
        self.verdict = Verdict(status, error, write_key=write_key)


def _path_type(path: str) -> Optional[str]:
    """The type a single-call path implies, None on a batch path; any other path is a 404."""
    route = path.split("?", 1)[0].rstrip("/")
    expected = SINGLE_CALL_PATHS.get(route)
    if route not in BATCH_PATHS and expected is None:
        known = ", ".join((*BATCH_PATHS, *SINGLE_CALL_PATHS))
        raise _Rejected(404, f"unknown path {route or '/'}; POST to one of {known}")
    return expected


def _decoded(headers: Mapping[str, str], raw: bytes) -> bytes:
    """The body as sent, undone from its Content-Encoding (none or gzip)."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise _Rejected(400, "body is not valid gzip (Content-Encoding: gzip)") from None
    if encoding not in ("", "identity"):
        raise _Rejected(400, f"unsupported Content-Encoding {encoding!r}")
    return raw


def _body_object(data: bytes) -> Dict[str, Any]:
    """The decoded body as a JSON object, within the size of a request."""
    if len(data) > MAX_BATCH_BYTES:
        raise _Rejected(
            400, f"request is {len(data):,} bytes, over the 500 KB limit ({MAX_BATCH_BYTES:,})"
        )
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Rejected(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _Rejected(400, f"body must be a JSON object, got {_describe(body)}")
    return body


def _request_write_key(
    headers: Mapping[str, str], body: Dict[str, Any], write_key: Optional[str]
) -> str:
    """The write key sent, which must be ``write_key`` when that is given (else a 401)."""
    # An empty Basic user name counts as none: the key may then come in the body.
    key = basic_auth_user(headers) or body.get("writeKey")
    if not key or not isinstance(key, str):
        raise _Rejected(401, "no write key: send it as the Basic auth user name (or writeKey)")
    if write_key is not None and key != write_key:
        raise _Rejected(401, f"write key {key!r} is not the expected one", write_key=key)
    return key


def _checked_batch(body: Dict[str, Any], key: str, body_bytes: int) -> List[Checked]:
    """Each message of a batch body and what is wrong with it."""
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise _Rejected(400, 'a batch body needs a "batch" array', write_key=key)
    if len(batch) > MAX_BATCH_COUNT:
        raise _Rejected(
            400, f"batch holds {len(batch):,} messages, over {MAX_BATCH_COUNT:,}", write_key=key
        )
    sent_at = body.get("sentAt")
    if sent_at is not None and not is_iso8601(sent_at):
        raise _Rejected(400, f"sentAt {sent_at!r} is not ISO-8601", write_key=key)
    fits = _known_to_fit(batch, body_bytes)
    return [
        Checked(m, _message_errors(m, None, _RULES_BUT_SIZE if fit else _MESSAGE_RULES))
        for m, fit in zip(batch, fits)
    ]


def _checked_single(body: Dict[str, Any], kind: str) -> List[Checked]:
    """The message of a single-call body (its type from the path) and what is wrong with it."""
    message = {"type": kind, **body}
    message.pop("writeKey", None)
    return [Checked(message, check_message(body, kind))]


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
    try:
        expected = _path_type(path)
        data = _decoded(headers, raw)
        body = _body_object(data)
        key = _request_write_key(headers, body, write_key)
        if expected is None:
            checked = _checked_batch(body, key, len(data))
        else:
            checked = _checked_single(body, expected)
    except _Rejected as rejected:
        return rejected.verdict
    verdict = Verdict(200, write_key=key, messages=checked)
    bad = verdict.invalid
    if strict and bad:
        verdict.status = 400
        verdict.error = f"{bad} of {len(checked)} message{'s' if len(checked) != 1 else ''} invalid"
    return verdict
