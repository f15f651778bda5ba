"""A request's body as the receiver takes it: its framing (Content-Length or chunked) and
its gzip undone, each within the receiver's limits, or :class:`Refused`."""

from __future__ import annotations

import re
import zlib
from email.message import Message
from typing import Dict, Optional

from ._receiver_limits import Limits, Refused
from ._receiver_stream import RequestStream

_CHUNK_LINE = 4096  # a chunk-size line, extensions included
_MAX_TRAILERS = 100
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


def body_length(headers: Message, limits: Limits) -> Optional[int]:
    """The length a request's head declares for its body; None for a chunked body.

    :class:`Refused` when the body cannot be taken: its length is missing
    (411), malformed or ambiguous (400), over ``max_request_bytes`` (413), or
    its transfer coding unknown (501).
    """
    coding = headers.get("Transfer-Encoding")
    lengths = headers.get_all("Content-Length") or []
    if coding is not None:
        if lengths:
            raise Refused(400, "a request may not carry both Transfer-Encoding and Content-Length")
        if coding.strip().lower() != "chunked":
            raise Refused(501, f"Transfer-Encoding {coding!r} is not supported; send chunked")
        return None
    if not lengths:
        raise Refused(411, "a POST needs a Content-Length (or Transfer-Encoding: chunked)")
    values = {value.strip() for value in lengths}
    value = values.pop()
    if values:
        raise Refused(400, "the request declares more than one Content-Length")
    if not value.isdigit() or not value.isascii():
        raise Refused(400, f"Content-Length {value[:40]!r} is not a number of bytes")
    limit = limits.max_request_bytes
    if not _DIGITS.fullmatch(value) or int(value) > limit:
        raise Refused(413, f"a body of {value} bytes is over this receiver's {limit:,}")
    return int(value)


def read_body(stream: RequestStream, length: Optional[int], limit: int) -> bytes:
    """The body :func:`body_length` declared: ``length`` bytes, or the chunks of a chunked one."""
    if length is None:
        return _read_chunked(stream, limit)
    data = stream.read(length) if length else b""
    if len(data) < length:
        raise Refused(400, f"the body ended after {len(data):,} of {length:,} bytes")
    return data


def _read_chunked(stream: RequestStream, limit: int) -> bytes:
    """A chunked body, its chunks joined; never more than ``limit`` bytes of them."""
    parts = []
    total = 0
    while True:
        line = stream.readline(_CHUNK_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
            raise Refused(400, "a chunk's size line is malformed, too long, or missing")
        size = int(size_text, 16)
        if not size:
            break
        total += size
        if total > limit:
            raise Refused(413, f"the chunks add up to more than this receiver's {limit:,} bytes")
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(3).strip():
            raise Refused(400, "a chunk ended before its size, or without its line end")
        parts.append(chunk)
    for _ in range(_MAX_TRAILERS):
        line = stream.readline(_CHUNK_LINE + 1)
        if not line.strip():
            return b"".join(parts)
    raise Refused(400, f"more than {_MAX_TRAILERS} trailer lines after the chunks")


def decoded_body(headers: Dict[str, str], raw: bytes, limit: int) -> Optional[bytes]:
    """``raw`` undone from its Content-Encoding, at most ``limit`` bytes; None when a gzip
    body is not valid gzip. :class:`Refused` (413) past ``limit``, found while decoding.

    ``headers`` have lower-case names. Any encoding but gzip is left as it is.
    """
    if headers.get("content-encoding", "").strip().lower() != "gzip":
        if len(raw) > limit:
            raise Refused(
                413, f"a body of {len(raw):,} bytes is over this receiver's {limit:,}", close=False
            )
        return raw
    try:
        return _gunzip(raw, limit)
    except zlib.error:
        return None


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Every gzip member of ``raw``, decompressed piece by piece up to ``limit`` bytes.

    The same members (and the zero padding after them) that ``gzip.decompress``
    takes, so that a check reading the body again gets what was counted here.
    """
    parts = []
    size = 0
    data = raw
    while True:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        part = member.decompress(data, limit - size + 1)
        size += len(part)
        if size > limit:
            raise Refused(
                413,
                f"the body decompresses to more than this receiver's {limit:,} bytes",
                close=False,
            )
        if not member.eof:
            raise zlib.error("the gzip stream ends early")
        parts.append(part)
        data = member.unused_data.lstrip(b"\x00")
        if not data:
            return b"".join(parts)
