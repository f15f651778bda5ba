"""Reading ``import``'s input: JSON Lines and CSV lines as Segment fields, bad ones by number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segmentio_logging.cli import main
from segmentio_logging.cli._common import UsageError
from segmentio_logging.cli._readers import parse_map
from segmentio_logging.testing import LocalCollector

from .helpers import import_args, jsonl_events, state_of, write_lines


class TestJsonLines:
    """JSON Lines: one Segment message a line, in any of the six types."""

    def test_jsonl_with_a_bad_line(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Good lines go out with their timestamps; bad ones are reported by line number."""
        good = jsonl_events(3)
        path = write_lines(
            tmp_path / "events.jsonl",
            [good[0], "{not json", good[1], "", '{"user_id": "u9", "event": "E"}', good[2]],
        )
        status = main(import_args(path, collector))
        out, err = capsys.readouterr()
        assert status == 1  # something was skipped
        assert [m["userId"] for m in collector.messages] == ["u1", "u2", "u3"]
        assert collector.messages[0]["timestamp"] == "2021-03-04T05:06:01.000Z"
        assert collector.messages[0]["properties"] == {"n": 1}
        assert f"{path}:2: skipped: invalid JSON" in err
        assert f"{path}:5: skipped: unknown field user_id" in err
        assert "imported 3 messages" in out and "2 bad lines skipped" in out
        assert state_of(path)["line"] == 6

    def test_every_line_type_and_epoch_timestamps(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """Lines carry any of the six types; epoch seconds and milliseconds become ISO-8601."""
        lines = [
            {"type": "identify", "userId": "u", "traits": {"a": 1}, "timestamp": 1600000000},
            {"type": "group", "userId": "u", "groupId": "g", "timestamp": 1600000000500},
            {"type": "alias", "userId": "u", "previousId": "p"},
            {"type": "page", "anonymousId": "a", "name": "Home"},
            {"type": "screen", "anonymousId": "a", "name": "Main", "messageId": "own-id"},
            {
                "userId": "u",
                "event": "Untyped, so --type",
                "originalTimestamp": "2020-01-01T00:00:00Z",
            },
        ]
        path = write_lines(tmp_path / "mixed.ndjson", [json.dumps(line) for line in lines])
        assert main(import_args(path, collector)) == 0
        got = collector.messages
        assert [m["type"] for m in got] == ["identify", "group", "alias", "page", "screen", "track"]
        assert got[0]["timestamp"] == "2020-09-13T12:26:40.000Z"
        assert got[1]["timestamp"] == "2020-09-13T12:26:40.500Z"
        assert got[4]["messageId"] == "own-id"
        assert got[5]["timestamp"] == "2020-01-01T00:00:00.000Z"


class TestCsv:
    """CSV: columns fill fields by name or by --map; the other columns become properties."""

    def test_csv_with_map_and_a_bad_row(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """CSV columns fill fields by --map; other columns become properties; bad rows skipped."""
        path = tmp_path / "orders.csv"
        path.write_text(
            "user,action,ts,price,note\n"
            "u1,Ordered,2021-05-01T10:00:00Z,9.99,first\n"
            "u2,,2021-05-01T10:00:01Z,1,no action\n"
            "u3,Refunded,1620000000,2\n"
            'u4,Ordered,2021-05-01T10:00:03Z,5,"multi\nline"\n',
            encoding="utf-8",
        )
        status = main(
            import_args(path, collector, "--map", "userId=user,event=action", "--map=timestamp=ts")
        )
        err = capsys.readouterr().err
        assert status == 1
        first, last = collector.messages
        assert first["userId"] == "u1" and first["event"] == "Ordered"
        assert first["timestamp"] == "2021-05-01T10:00:00.000Z"
        assert first["properties"] == {"price": "9.99", "note": "first"}
        assert last["properties"]["note"] == "multi\nline"
        assert f"{path}:3: skipped: track needs event" in err
        assert f"{path}:4: skipped: 4 columns where the header has 5" in err
        assert state_of(path)["line"] == 6

    def test_csv_identify_rows_put_columns_in_traits(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """With --type identify, unmapped columns become traits; properties.KEY maps one in."""
        path = tmp_path / "people.csv"
        path.write_text("userId,email,plan\nu1,a@example.com,pro\n", encoding="utf-8")
        assert main(import_args(path, collector, "--type=identify", "--map=traits.tier=plan")) == 0
        (message,) = collector.messages
        assert message["type"] == "identify"
        assert message["traits"] == {"email": "a@example.com", "tier": "pro"}

    @pytest.mark.parametrize(
        ("spec", "reason"),
        [
            ("user", "FIELD=COLUMN"),
            ("user_id=user", "not a Segment field"),
            ("props.x=user", "nested fields"),
        ],
    )
    def test_bad_map_is_a_usage_error(self, spec: str, reason: str) -> None:
        """--map names Segment's fields; anything else is refused with the list of fields."""
        with pytest.raises(UsageError, match=reason):
            parse_map([spec])

    def test_map_to_a_missing_column_exits_2_before_sending(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --map column absent from the header stops the import before anything is sent."""
        path = tmp_path / "a.csv"
        path.write_text("user,action\nu1,E\n", encoding="utf-8")
        assert main(import_args(path, collector, "--map=userId=uid,event=action")) == 2
        assert "uid" in capsys.readouterr().err
        assert collector.requests == []

    def test_csv_resume(self, tmp_path: Path, collector: LocalCollector) -> None:
        """A CSV import resumes after its header and the rows already sent."""
        path = tmp_path / "e.csv"
        path.write_text("userId,event\n" + "".join(f"u{i},E\n" for i in range(5)), "utf-8")
        assert main(import_args(path, collector, "--limit=2")) == 0
        assert main(import_args(path, collector)) == 0
        assert [m["userId"] for m in collector.messages] == [f"u{i}" for i in range(5)]

    def test_csv_resume_after_a_row_spanning_lines(
        self, tmp_path: Path, collector: LocalCollector
    ) -> None:
        """A row whose quoted cell holds a newline is resumed after its last line, sent once."""
        path = tmp_path / "notes.csv"
        path.write_text('userId,event,note\nu1,E,"two\nlines"\nu2,E,x\nu3,E,y\n', "utf-8")
        assert main(import_args(path, collector, "--limit=1")) == 0
        assert state_of(path)["line"] == 3
        assert main(import_args(path, collector)) == 0
        assert [m["userId"] for m in collector.messages] == ["u1", "u2", "u3"]
        assert collector.messages[0]["properties"] == {"note": "two\nlines"}

    def test_changed_csv_is_not_resumed(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """When the CSV rows already sent changed, resuming would skip the wrong rows: exit 2."""
        path = tmp_path / "f.csv"
        path.write_text("userId,event\n" + "".join(f"u{i},E\n" for i in range(4)), "utf-8")
        assert main(import_args(path, collector, "--limit=2")) == 0
        path.write_text("userId,event\n" + "".join(f"v{i},E\n" for i in range(4)), "utf-8")
        assert main(import_args(path, collector)) == 2
        assert "--restart" in capsys.readouterr().err
        assert len(collector.messages) == 2

    def test_unreadable_csv_row_is_skipped_by_line(
        self, tmp_path: Path, collector: LocalCollector, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A row the csv module cannot read (a cell over its size limit) is reported by line."""
        path = tmp_path / "big.csv"
        path.write_text(f"userId,event\nu1,E\nu2,{'x' * 200_000}\nu3,E\n", "utf-8")
        status = main(import_args(path, collector))
        err = capsys.readouterr().err
        assert status == 1
        assert f"{path}:3: skipped: invalid CSV: field larger than field limit" in err
        assert [m["userId"] for m in collector.messages] == ["u1", "u3"]
