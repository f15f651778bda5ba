"""Reading ``import``'s input: JSON Lines and CSV as Segment fields, line by line.

Each line (or CSV row) becomes a :class:`Record`: its fields, or why it cannot
be used. The lines are counted and hashed as they are read, so that a resumed
import can check that the lines it skips are the ones an earlier run sent.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Set

from .._errors import InvalidMessage
from .._spec import SERVER_FIELDS
from ._common import FIELD_KEYWORDS, JSON_FIELDS, UsageError

CSV_TARGETS = ("type", *FIELD_KEYWORDS)
NESTED_TARGETS = ("properties", "traits", "context")


class Lines:
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
class Record:
    """One line (or CSV row) of the input: its fields, or why it cannot be used."""

    line: int
    fields: Optional[Dict[str, Any]]
    error: Optional[str]
    text: str = ""


class StateMismatch(Exception):
    """The input no longer starts with the lines a state file says were sent."""


def count_lines(path: str) -> int:
    """How many lines ``path`` holds (a last line without a newline counts)."""
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


def _check_sent(lines: Lines, after: int, digest: Optional[str]) -> None:
    """Check, once ``after`` lines were read, that they are the ones a state file describes."""
    if lines.count != after or (digest is not None and lines.digest() != digest):
        raise StateMismatch(
            f"the first {after:,} lines are not the ones imported before (the file changed)"
        )


def _skip_sent(lines: Lines, reads: Iterator[object], after: int, digest: Optional[str]) -> None:
    """Read on to line ``after``, where an earlier run stopped, and check those lines are the ones
    it sent. ``reads`` is what the reading goes through: the lines, or the rows of a CSV file."""
    if not after:
        return
    if lines.count < after:  # a CSV header may already reach it
        for _ in reads:
            if lines.count >= after:
                break
    _check_sent(lines, after, digest)


def _jsonl_record(line: int, text: str, undecodable: bool) -> Record:
    """The record of one JSON line, not blank: a message's fields, or why it is not one."""
    if undecodable:
        return Record(line, None, "not valid UTF-8")
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Record(line, None, f"invalid JSON: {exc}")
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        return Record(line, None, f"a line must be a JSON object, got {kind}")
    unknown = sorted(set(value) - set(FIELD_KEYWORDS) - SERVER_FIELDS)
    if unknown:
        return Record(
            line,
            None,
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            "(Segment's fields are camelCase: userId, anonymousId, event, properties...)",
        )
    if value.get("timestamp") is None and value.get("originalTimestamp") is not None:
        value["timestamp"] = value["originalTimestamp"]
    return Record(line, value, None, text)


def jsonl_records(lines: Lines, after: int, digest: Optional[str]) -> Iterator[Record]:
    """The records of a JSON Lines file, after its first ``after`` lines (checked by ``digest``)."""
    _skip_sent(lines, lines, after, digest)
    for text in lines:
        stripped = text.strip()
        if stripped:
            yield _jsonl_record(lines.count, stripped, lines.count in lines.undecodable)


@dataclass
class _Row:
    """One CSV row as read: its cells, or why it could not be read, and the lines it spans."""

    first: int  # the line it starts on
    line: int  # the line it ends on, which names it in reports
    cells: List[str]
    error: Optional[str] = None


def _csv_rows(rows: Iterator[List[str]], lines: Lines) -> Iterator[_Row]:
    """The rows after the header; a row the csv module cannot read comes as an error."""
    while True:
        first = lines.count + 1
        try:
            cells = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _Row(first, lines.count, [], f"invalid CSV: {exc}")
        else:
            yield _Row(first, lines.count, cells)


def _csv_header(
    rows: Iterator[List[str]], lines: Lines, after: int, digest: Optional[str]
) -> Optional[List[str]]:
    """The header row; None for an empty file, which is checked as a resumed one."""
    try:
        return next(rows)
    except StopIteration:
        if after:
            _check_sent(lines, after, digest)
        return None
    except csv.Error as exc:
        raise UsageError(f"cannot read the CSV header: {exc}") from None


def _csv_record(
    plan: _CsvPlan, row: _Row, undecodable: Set[int], default_type: str
) -> Optional[Record]:
    """The record of one row: its fields, or why it cannot be used; None for a blank row."""
    if row.error is not None:
        return Record(row.line, None, row.error)
    if not any(cell.strip() for cell in row.cells):
        return None
    if any(n in undecodable for n in range(row.first, row.line + 1)):
        return Record(row.line, None, "not valid UTF-8")
    if len(row.cells) != len(plan.header):
        return Record(
            row.line, None, f"{len(row.cells)} columns where the header has {len(plan.header)}"
        )
    try:
        fields = plan.fields_of(row.cells, default_type)
    except InvalidMessage as exc:
        return Record(row.line, None, exc.reason)
    return Record(row.line, fields, None, "\x1f".join(row.cells))


def csv_records(
    lines: Lines,
    mapping: Dict[str, str],
    default_type: str,
    after: int,
    digest: Optional[str],
) -> Iterator[Record]:
    """The records of a CSV file, its columns filling fields by ``mapping`` (see :func:`parse_map`).

    Rows up to line ``after`` were sent before: they are read, checked by
    ``digest``, and skipped. ``default_type`` is the type of rows without one.
    """
    rows = csv.reader(lines)
    header = _csv_header(rows, lines, after, digest)
    if header is None:
        return
    plan = _CsvPlan(header, mapping)
    read = _csv_rows(rows, lines)
    _skip_sent(lines, read, after, digest)
    for row in read:
        record = _csv_record(plan, row, lines.undecodable, default_type)
        if record is not None:
            yield record
