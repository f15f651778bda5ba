"""``segmentio-logging import FILE``: historical import from JSON Lines or CSV.

Paced, resumable (a state file records the last line the receiver accepted),
with progress on a terminal and bad lines reported by number.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
)

from ._cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FIELD_KEYWORDS,
    JSON_FIELDS,
    SERVER_FIELDS,
    UsageError,
    _deliver,
    _resolve,
    _say,
    _transport,
    make_message,
)
from ._errors import InvalidMessage
from ._message import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    envelope_size,
)
from ._options import Options
from ._timestamps import format_timestamp

if TYPE_CHECKING:
    pass


CSV_TARGETS = ("type", *FIELD_KEYWORDS)
NESTED_TARGETS = ("properties", "traits", "context")


class _Lines:
    """The lines of a binary file as text, counted and hashed as they are read.

    The hash of the first ``count`` lines is what a state file records, so that
    a resumed import can tell that the lines it skips are the ones it sent.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.count = 0
        self.undecodable: Set[int] = set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._stream.readline()
        if not raw:
            raise StopIteration
        self._hash.update(raw)
        self.count += 1
        if self.count == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a byte order mark, as spreadsheets write
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.undecodable.add(self.count)
            return raw.decode("utf-8", "replace")

    def digest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._stream.close()


@dataclass
class _Record:
    """One line (or CSV row) of the input: its fields, or why it cannot be used."""

    line: int
    fields: Optional[Dict[str, Any]]
    error: Optional[str]
    text: str = ""


class StateMismatch(Exception):
    """The input no longer starts with the lines a state file says were sent."""


def _count_lines(path: str) -> int:
    count = 0
    last = b"\n"
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (0 if last == b"\n" else 1)


def parse_map(specs: Sequence[str]) -> Dict[str, str]:
    """``["userId=user,event=action"]`` as ``{"userId": "user", "event": "action"}``."""
    mapping: Dict[str, str] = {}
    for spec in specs:
        for pair in spec.split(","):
            if not pair.strip():
                continue
            target, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not target or not column:
                raise UsageError(f"--map takes FIELD=COLUMN pairs, got {pair.strip()!r}")
            head, dot, key = target.partition(".")
            if dot:
                if head not in NESTED_TARGETS or not key:
                    raise UsageError(
                        f"--map: {target!r} is not a field; nested fields are "
                        f"{', '.join(t + '.KEY' for t in NESTED_TARGETS)}"
                    )
            elif target not in CSV_TARGETS:
                raise UsageError(
                    f"--map: {target!r} is not a Segment field; the fields are "
                    f"{', '.join(CSV_TARGETS)} (and properties.KEY, traits.KEY, context.KEY)"
                )
            mapping[target] = column
    return mapping


class _CsvPlan:
    """Which column fills which field; the other columns become properties or traits."""

    def __init__(self, header: List[str], mapping: Dict[str, str]) -> None:
        self.header = [name.strip() for name in header]
        index = {name: i for i, name in enumerate(self.header)}
        missing = sorted(column for column in mapping.values() if column not in index)
        if missing:
            raise UsageError(
                f"--map names column{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
                f"not in the CSV header ({', '.join(self.header)})"
            )
        targets = dict(mapping)
        for name in self.header:  # a column named like a field fills it unless mapped away
            if name in CSV_TARGETS and name not in targets and name not in mapping.values():
                targets[name] = name
        self.fields = [(target, index[column]) for target, column in targets.items()]
        used = {index[column] for column in targets.values()}
        self.rest = [(name, i) for i, name in enumerate(self.header) if i not in used]

    def fields_of(self, row: List[str], default_type: str) -> Dict[str, Any]:
        fields: Dict[str, Any] = {}
        for target, i in self.fields:
            value = row[i]
            if value == "":
                continue
            head, dot, key = target.partition(".")
            if dot:
                fields.setdefault(head, {})[key] = value
            elif target in JSON_FIELDS:
                fields[target] = _cell_object(self.header[i], value)
            else:
                fields[target] = value
        kind = fields.get("type", default_type)
        bucket = "traits" if kind in ("identify", "group") else "properties"
        if kind != "alias":
            data = fields.setdefault(bucket, {})
            if isinstance(data, dict):
                for name, i in self.rest:
                    if row[i] != "":
                        data.setdefault(name, row[i])
        return fields


def _cell_object(column: str, text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidMessage(f"column {column!r} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"column {column!r} must hold a JSON object")
    return value


def _skip_to(lines: _Lines, after: int, digest: Optional[str]) -> None:
    """Check, once ``after`` lines were read, that they are the ones a state file describes."""
    if lines.count != after or (digest is not None and lines.digest() != digest):
        raise StateMismatch(
            f"the first {after:,} lines are not the ones imported before (the file changed)"
        )


def _jsonl_records(
    lines: _Lines, default_type: str, after: int, digest: Optional[str]
) -> Iterator[_Record]:
    if after:
        for _ in lines:
            if lines.count >= after:
                break
        _skip_to(lines, after, digest)
    for text in lines:
        line = lines.count
        stripped = text.strip()
        if not stripped:
            continue
        if line in lines.undecodable:
            yield _Record(line, None, "not valid UTF-8")
            continue
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            yield _Record(line, None, f"invalid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            kind = "null" if value is None else type(value).__name__
            yield _Record(line, None, f"a line must be a JSON object, got {kind}")
            continue
        unknown = sorted(set(value) - set(FIELD_KEYWORDS) - SERVER_FIELDS)
        if unknown:
            yield _Record(
                line,
                None,
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                "(Segment's fields are camelCase: userId, anonymousId, event, properties...)",
            )
            continue
        if value.get("timestamp") is None and value.get("originalTimestamp") is not None:
            value["timestamp"] = value["originalTimestamp"]
        yield _Record(line, value, None, stripped)


def _csv_records(
    lines: _Lines,
    plan_for: Callable[[List[str]], _CsvPlan],
    default_type: str,
    after: int,
    digest: Optional[str],
) -> Iterator[_Record]:
    rows = csv.reader(lines)
    try:
        header = next(rows)
    except StopIteration:
        if after:
            _skip_to(lines, after, digest)
        return
    except csv.Error as exc:
        raise UsageError(f"cannot read the CSV header: {exc}") from None
    plan = plan_for(header)
    checked = lines.count >= after
    if after and checked:
        _skip_to(lines, after, digest)
    while True:
        start = lines.count
        error: Optional[str] = None
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            row, error = [], f"invalid CSV: {exc}"
        line = lines.count
        if not checked:  # rows sent by an earlier run
            if line >= after:
                _skip_to(lines, after, digest)
                checked = True
            continue
        if error is not None:
            yield _Record(line, None, error)
            continue
        if not any(cell.strip() for cell in row):
            continue
        if any(n in lines.undecodable for n in range(start + 1, line + 1)):
            yield _Record(line, None, "not valid UTF-8")
            continue
        if len(row) != len(plan.header):
            yield _Record(line, None, f"{len(row)} columns where the header has {len(plan.header)}")
            continue
        try:
            fields = plan.fields_of(row, default_type)
        except InvalidMessage as exc:
            yield _Record(line, None, exc.reason)
            continue
        yield _Record(line, fields, None, "\x1f".join(row))
    if not checked:
        _skip_to(lines, after, digest)


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
    options = _resolve(args, need_key=not args.dry_run)
    fmt = args.format or ("csv" if path.lower().endswith(".csv") else "jsonl")
    if fmt != "csv" and args.map:
        raise UsageError("--map is for CSV input (the file reads as JSON Lines; pass --format csv)")
    if args.batch_size < 1 or args.batch_size > 2500:
        raise UsageError("--batch-size must be between 1 and 2500")
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

    The state file records the line where the last accepted batch ended and
    the hash of the lines up to it; a state is written only after the receiver
    accepted a batch, so that a rerun never skips a line that was not sent.
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
        self.transport = None if self.dry_run else _transport(options)
        # Cut a batch while one more message of the largest size still fits in a request.
        self.max_bytes = MAX_BATCH_BYTES - envelope_size(options.write_key) - MAX_MESSAGE_BYTES - 1
        self.pacer = _Pacer(args.rate)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        total = _count_lines(self.path) if show else 0
        self.progress = _Progress(sys.stderr, show, total, self.after)
        self.counts = {"records": 0, "sent": 0, "bad": 0, "failed": 0, "undated": 0}
        self.failure: Optional[str] = None
        self.batch: List[bytes] = []
        self.batch_bytes = 0
        self.lines = _Lines(open(self.path, "rb"))  # closed by run()
        self.started = time.monotonic()

    def run(self) -> int:
        args = self.args
        stopped = False
        try:
            for record in self._records():
                self.counts["records"] += 1
                if not self._take(record):
                    break
                self.progress.update(self.lines.count, self.counts["sent"])
                if args.limit and self.counts["records"] >= args.limit:
                    stopped = True
                    break
            if self.failure is None:
                self._flush()
        except StateMismatch as exc:
            self.progress.clear()
            raise UsageError(
                f"{exc}; state in {self.state_path}: pass --restart to import anew"
            ) from None
        except KeyboardInterrupt:
            self.progress.close()
            self._summary()
            _say(f"interrupted: run the same command again to resume after line {self._last():,}")
            return EXIT_INTERRUPTED
        finally:
            self.lines.close()
            if self.transport is not None:
                self.transport.close()
        self.progress.update(self.lines.count, self.counts["sent"], force=True)
        self.progress.close()
        self._summary()
        if self.failure is not None:
            failed = self.counts["failed"]
            _say(
                f"error: {failed} message{'s' if failed != 1 else ''} not accepted: {self.failure}"
            )
            _say(f"stopped; run the same command again to resume after line {self._last():,}")
            return EXIT_FAILED
        if stopped:
            _say(f"stopped after --limit {args.limit}; run again to continue", sys.stdout)
        elif self.after and not self.counts["records"]:
            _say(
                f"nothing new to import: every line of {self.path} was imported before "
                f"(state in {self.state_path}; pass --restart to import again)",
                sys.stdout,
            )
        return EXIT_FAILED if self.counts["bad"] else EXIT_OK

    def _records(self) -> Iterator[_Record]:
        if self.fmt == "csv":

            def plan_for(header: List[str]) -> _CsvPlan:
                return _CsvPlan(header, self.mapping)

            return _csv_records(self.lines, plan_for, self.args.type, self.after, self.digest)
        return _jsonl_records(self.lines, self.args.type, self.after, self.digest)

    def _take(self, record: _Record) -> bool:
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
            _say(f"{self.path}:{record.line}: skipped: {record.error}")
            return True
        if record.fields is not None and record.fields.get("timestamp") is None:
            self.counts["undated"] += 1
        self.batch.append(data)
        self.batch_bytes += len(data) + 1
        if len(self.batch) >= self.args.batch_size or self.batch_bytes > self.max_bytes:
            return self._flush()
        return True

    def _flush(self) -> bool:
        """Send the batch; checkpoint once it is accepted. False when it was refused."""
        if self.batch:
            self.pacer.wait(len(self.batch))
            if self.transport is not None:
                accepted, detail = _deliver(self.transport, self.batch)
                if not accepted:
                    self.counts["failed"] += len(self.batch)
                    self.failure = detail
                    return False
            self.counts["sent"] += len(self.batch)
            self.batch, self.batch_bytes = [], 0
        self._checkpoint()
        self.progress.update(self.lines.count, self.counts["sent"])
        return True

    def _checkpoint(self) -> None:
        if self.dry_run:
            return
        _write_state(
            self.state_path,
            {
                "version": 1,
                "input": self.source,
                "line": self.lines.count,
                "sha256": self.lines.digest(),
                "sent": self.before["sent"] + self.counts["sent"],
                "bad": self.before["bad"] + self.counts["bad"],
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
        _say(f"{text}; {'; '.join(notes)}", sys.stdout)
