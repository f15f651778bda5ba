"""The parser and ``main``: commands, flags, usage errors, the tester's bare flags."""

from __future__ import annotations

import pytest

from segmentio_logging import __version__
from segmentio_logging.cli import main
from segmentio_logging.testing import LocalCollector


class TestMain:
    """``main`` parses the command line, runs the command and returns its exit status."""

    def test_flags_alone_mean_send(self, collector: LocalCollector) -> None:
        """Called as the end-to-end tester calls it, with no command name, it sends."""
        status = main(["--writeKey=key", f"--host={collector.url}", "--type=track", "--userId=u"])
        assert status == 2  # a track needs an event: the flags were taken as a send
        status = main(["--writeKey=key", f"--host={collector.url}", "--type=page", "--userId=u"])
        assert status == 0
        assert collector.messages[0]["type"] == "page"

    def test_unknown_type_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--type must be one of Segment's six types."""
        assert main(["send", "--writeKey=k", "--type=purchase", "--userId=u"]) == 2
        assert "invalid choice" in capsys.readouterr().err

    def test_usage_errors_exit_2(self) -> None:
        """An unknown command or flag is a usage error."""
        assert main(["bogus"]) == 2
        assert main(["send", "--writeKey=k", "--type=track", "--nope=1"]) == 2

    def test_help_and_version_exit_0(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help lists every command and --version prints the version, both with exit 0."""
        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        assert all(command in out for command in ("send", "import", "collect", "demo"))
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.strip() == f"segmentio-logging {__version__}"
