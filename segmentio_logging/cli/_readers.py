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


def _skip_to(lines: Lines, after: int, digest: Optional[str]) -> None:
    """Check, once ``after`` lines were read, that they are the ones a state file describes."""
    if lines.count != after or (digest is not None and lines.digest() != digest):
        raise StateMismatch(
            f"the first {after:,} lines are not the ones imported before (the file changed)"
        )


def jsonl_records(lines: Lines, after: int, digest: Optional[str]) -> Iterator[Record]:
    """The records of a JSON Lines file, after its first ``after`` lines (checked by ``digest``)."""
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
            yield Record(line, None, "not valid UTF-8")
            continue
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            yield Record(line, None, f"invalid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            kind = "null" if value is None else type(value).__name__
            yield Record(line, None, f"a line must be a JSON object, got {kind}")
            continue
        unknown = sorted(set(value) - set(FIELD_KEYWORDS) - SERVER_FIELDS)
        if unknown:
            yield Record(
                line,
                None,
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                "(Segment's fields are camelCase: userId, anonymousId, event, properties...)",
            )
            continue
        if value.get("timestamp") is None and value.get("originalTimestamp") is not None:
            value["timestamp"] = value["originalTimestamp"]
        yield Record(line, value, None, stripped)


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
    try:
        header = next(rows)
    except StopIteration:
        if after:
            _skip_to(lines, after, digest)
        return
    except csv.Error as exc:
        raise UsageError(f"cannot read the CSV header: {exc}") from None
    plan = _CsvPlan(header, mapping)
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
            yield Record(line, None, error)
            continue
        if not any(cell.strip() for cell in row):
            continue
        if any(n in lines.undecodable for n in range(start + 1, line + 1)):
            yield Record(line, None, "not valid UTF-8")
            continue
        if len(row) != len(plan.header):
            yield Record(line, None, f"{len(row)} columns where the header has {len(plan.header)}")
            continue
        try:
            fields = plan.fields_of(row, default_type)
        except InvalidMessage as exc:
            yield Record(line, None, exc.reason)
            continue
        yield Record(line, fields, None, "\x1f".join(row))
    if not checked:
        _skip_to(lines, after, digest)
