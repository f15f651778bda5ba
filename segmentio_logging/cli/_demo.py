"""``segmentio-logging demo``: the whole pipeline against a local receiver, shown as a table."""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
from typing import Any, Dict, List, Sequence


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
    from .._handler import SegmentHandler
    from ..testing import LocalCollector

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
