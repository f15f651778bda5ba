"""``segmentio-logging import FILE``: historical import from JSON Lines or CSV.

Paced, resumable (a state file records the last line up to which the receiver
accepted every batch), with progress on a terminal and bad lines reported by
number. The lines are read by :mod:`._readers`; batches are sent up to
``max_in_flight`` at once by :mod:`._inflight`, so that a receiver far away
does not slow the import down to one round trip per batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from typing import IO, Any, Dict, Iterator, List, Optional

from .._errors import InvalidMessage
from .._options import Options
from .._segment import MAX_BATCH_BYTES, MAX_BATCH_COUNT, MAX_MESSAGE_BYTES, MESSAGE_TYPES
from .._timestamps import format_timestamp
from .._transport import envelope_size, transport_for
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    make_message,
    options_from,
    say,
)
from ._inflight import InFlight
from ._readers import (
    Lines,
    Record,
    StateMismatch,
    count_lines,
    csv_records,
    jsonl_records,
    parse_map,
)


def line_message_id(source: str, line: int, text: str) -> str:
    """The messageId of a line without one: the same on every run, so a resend is deduplicated."""
    seed = f"{source}\x00{line}\x00{text}".encode("utf-8", "surrogatepass")
    return "import-" + hashlib.sha256(seed).hexdigest()[:40]


class _Pacer:
    """Keeps the average rate at or under ``rate`` messages a second (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next: Optional[float] = None

    def wait(self, count: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self._next is not None and self._next > now:
            time.sleep(self._next - now)
            now = self._next
        self._next = now + count / self.rate


def _duration(seconds: float) -> str:
    seconds = max(int(seconds + 0.5), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Progress:
    """One line on a terminal, redrawn at most five times a second: count, rate, ETA."""

    def __init__(self, stream: IO[str], enabled: bool, total: int, first: int) -> None:
        self.stream = stream
        self.enabled = enabled
        self.total = total
        self.first = first
        self.started = time.monotonic()
        self._shown = 0.0
        self._width = 0

    def update(self, line: int, sent: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown < 0.2:
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = sent / elapsed
        done = max(line - self.first, 0)
        left = max(self.total - line, 0)
        eta = _duration(left * elapsed / done) if done and left else "-"
        percent = 100.0 * line / self.total if self.total else 100.0
        text = (
            f"line {line:,}/{self.total:,} ({percent:.0f}%)  {sent:,} sent  "
            f"{rate:,.0f} msg/s  ETA {eta}"
        )
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Erase the line, so that a message can be printed; the next update redraws it."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
            self._shown = 0.0

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _read_state(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            state = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read the state file {path}: {exc}; delete it or pass --restart"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("line"), int):
        raise UsageError(f"{path} is not an import state file; delete it or pass --restart")
    return state


def _write_state(path: str, state: Dict[str, Any]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(state, stream, indent=1)
        stream.write("\n")
    os.replace(temporary, path)


def import_file(args: argparse.Namespace) -> int:
    """Import a JSON Lines or CSV file of historical messages, resumably."""
    path: str = args.file
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    options = options_from(args, need_key=not args.dry_run)
    fmt = args.format or ("csv" if path.lower().endswith(".csv") else "jsonl")
    if fmt != "csv" and args.map:
        raise UsageError("--map is for CSV input (the file reads as JSON Lines; pass --format csv)")
    if args.batch_size < 1 or args.batch_size > MAX_BATCH_COUNT:
        raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH_COUNT}")
    if args.rate < 0 or not math.isfinite(args.rate):
        raise UsageError("--rate must be a number of messages a second (0: no limit)")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    try:
        run = _Import(args, options, fmt)
    except OSError as exc:
        raise UsageError(f"cannot import {path}: {exc}") from None
    return run.run()


class _Import:
    """One run of ``import``: read, check, batch, pace, send, and checkpoint each batch.

    The state file records the line where the last batch ended of which it and
    every earlier batch were accepted, and the hash of the lines up to it, so
    that a rerun never skips a line that was not sent. Batches are sent several
    at once and may be accepted out of order.
    """

    def __init__(self, args: argparse.Namespace, options: Options, fmt: str) -> None:
        self.args = args
        self.path: str = args.file
        self.source = os.path.basename(self.path)
        self.fmt = fmt
        self.mapping = parse_map(args.map or [])
        self.dry_run: bool = args.dry_run
        self.state_path = args.state or f"{self.path}.segment-import.json"
        state = {} if args.restart or self.dry_run else _read_state(self.state_path)
        self.after = int(state.get("line", 0))
        self.digest: Optional[str] = state.get("sha256")
        self.before = {"sent": int(state.get("sent", 0)), "bad": int(state.get("bad", 0))}
        if not self.dry_run:  # find out now, not after the first batch, that it cannot be saved
            try:
                _write_state(f"{self.state_path}.check", {})
                os.remove(f"{self.state_path}.check")
            except OSError as exc:
                raise UsageError(f"cannot write the state file {self.state_path}: {exc}") from None
        self.transport = None if self.dry_run else transport_for(options)
        self.window = (
            None
            if self.transport is None
            else InFlight(self.transport, options.max_in_flight, self._accepted)
        )
        # Cut a batch while one more message of the largest size still fits in a request.
        self.max_bytes = MAX_BATCH_BYTES - envelope_size(options.write_key) - MAX_MESSAGE_BYTES - 1
        self.pacer = _Pacer(args.rate)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        total = count_lines(self.path) if show else 0
        self.progress = _Progress(sys.stderr, show, total, self.after)
        self.counts = {"records": 0, "sent": 0, "bad": 0, "failed": 0, "undated": 0}
        self.failure: Optional[str] = None
        self.batch: List[bytes] = []
        self.batch_bytes = 0
        self.lines = Lines(open(self.path, "rb"))  # closed by run()
        self.started = time.monotonic()

    def run(self) -> int:
        try:
            stopped = self._send_records()
        except StateMismatch as exc:
            self.progress.clear()
            raise UsageError(
                f"{exc}; state in {self.state_path}: pass --restart to import anew"
            ) from None
        except KeyboardInterrupt:
            self.progress.close()
            self._summary()
            say(f"interrupted: run the same command again to resume after line {self._last():,}")
            return EXIT_INTERRUPTED
        finally:
            self.lines.close()
            if self.window is not None:
                self.window.close()
            if self.transport is not None:
                self.transport.close()
        self.progress.update(self.lines.count, self.counts["sent"], force=True)
        self.progress.close()
        self._summary()
        return self._outcome(stopped)

    def _send_records(self) -> bool:
        """Batch and send every record, then the last batch; True when --limit stopped it."""
        limit = self.args.limit
        stopped = False
        for record in self._records():
            self.counts["records"] += 1
            if not self._take(record):
                break
            self.progress.update(self.lines.count, self.counts["sent"])
            if limit and self.counts["records"] >= limit:
                stopped = True
                break
        if self.failure is None:
            self._flush()
        self._settle_window()
        return stopped

    def _settle_window(self) -> None:
        """Wait for the batches in flight; checkpoint the end when every one was accepted."""
        window = self.window
        if window is None:
            self._checkpoint()
            return
        window.wait()
        self.counts["sent"] = window.sent
        self.counts["failed"] = window.failed
        self.failure = window.failure
        if self.failure is None:
            self._checkpoint()  # also past trailing bad lines, now that all was accepted

    def _outcome(self, stopped: bool) -> int:
        """Say how the run ended, after its summary; the exit status."""
        if self.failure is not None:
            failed = self.counts["failed"]
            say(f"error: {failed} message{'s' if failed != 1 else ''} not accepted: {self.failure}")
            say(f"stopped; run the same command again to resume after line {self._last():,}")
            return EXIT_FAILED
        if stopped:
            say(f"stopped after --limit {self.args.limit}; run again to continue", sys.stdout)
        elif self.after and not self.counts["records"]:
            say(
                f"nothing new to import: every line of {self.path} was imported before "
                f"(state in {self.state_path}; pass --restart to import again)",
                sys.stdout,
            )
        return EXIT_FAILED if self.counts["bad"] else EXIT_OK

    def _records(self) -> Iterator[Record]:
        if self.fmt == "csv":
            return csv_records(self.lines, self.mapping, self.args.type, self.after, self.digest)
        return jsonl_records(self.lines, self.after, self.digest)

    def _take(self, record: Record) -> bool:
        """Batch one record (or report it); False when a batch was refused."""
        message_id = line_message_id(self.source, record.line, record.text)
        data = None
        if record.fields is not None:
            kind = record.fields.get("type") or self.args.type
            if kind not in MESSAGE_TYPES:
                record.error = f"unknown type {kind!r} (known: {', '.join(MESSAGE_TYPES)})"
            else:
                try:
                    _, data = make_message(record.fields, kind, message_id)
                except InvalidMessage as exc:
                    record.error = exc.reason
        if data is None:
            self.counts["bad"] += 1
            self.progress.clear()
            say(f"{self.path}:{record.line}: skipped: {record.error}")
            return True
        if record.fields is not None and record.fields.get("timestamp") is None:
            self.counts["undated"] += 1
        self.batch.append(data)
        self.batch_bytes += len(data) + 1
        if len(self.batch) >= self.args.batch_size or self.batch_bytes > self.max_bytes:
            return self._flush()
        return True

    def _flush(self) -> bool:
        """Hand the batch to the window (checkpointed once accepted); False once a batch
        was refused."""
        if self.batch:
            self.pacer.wait(len(self.batch))
            window = self.window
            if window is not None:
                if not window.submit(self.batch, self._mark()):
                    self.failure = window.failure
                    return False
                self.counts["sent"] = window.sent
            else:
                self.counts["sent"] += len(self.batch)
            self.batch, self.batch_bytes = [], 0
        self.progress.update(self.lines.count, self.counts["sent"])
        return True

    def _mark(self) -> Dict[str, Any]:
        """Where the batch being sent ends: what its checkpoint records."""
        return {"line": self.lines.count, "sha256": self.lines.digest(), "bad": self.counts["bad"]}

    def _accepted(self, mark: Dict[str, Any], sent: int) -> None:
        """Every batch up to the one ending at ``mark`` was accepted: ``sent`` messages."""
        self._write_checkpoint(mark, sent)

    def _checkpoint(self) -> None:
        sent = self.window.prefix_sent if self.window is not None else self.counts["sent"]
        self._write_checkpoint(self._mark(), sent)

    def _write_checkpoint(self, mark: Dict[str, Any], sent: int) -> None:
        if self.dry_run:
            return
        _write_state(
            self.state_path,
            {
                "version": 1,
                "input": self.source,
                "line": mark["line"],
                "sha256": mark["sha256"],
                "sent": self.before["sent"] + sent,
                "bad": self.before["bad"] + mark["bad"],
                "updated": format_timestamp(time.time()),
            },
        )

    def _last(self) -> int:
        """The line the next run resumes after."""
        try:
            return int(_read_state(self.state_path).get("line", self.after))
        except UsageError:
            return self.after

    def _summary(self) -> None:
        counts = self.counts
        elapsed = time.monotonic() - self.started
        rate = counts["sent"] / elapsed if elapsed > 0 else 0.0
        verb = "checked" if self.dry_run else "imported"
        text = (
            f"{verb} {counts['sent']:,} message{'s' if counts['sent'] != 1 else ''} "
            f"from {self.path} in {elapsed:.1f}s ({rate:,.0f}/s)"
        )
        notes = []
        if self.after:
            notes.append(f"resumed after line {self.after:,}")
        if counts["bad"]:
            notes.append(f"{counts['bad']:,} bad line{'s' if counts['bad'] != 1 else ''} skipped")
        if counts["failed"]:
            notes.append(f"{counts['failed']:,} not accepted")
        if counts["undated"]:
            notes.append(f"{counts['undated']:,} without a timestamp (stamped now)")
        notes.append(f"read to line {self.lines.count:,}")
        say(f"{text}; {'; '.join(notes)}", sys.stdout)
