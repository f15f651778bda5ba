"""What the commands share: the write key and host from the flags or the environment."""

from __future__ import annotations

import pytest

from segmentio_logging.cli import main
from segmentio_logging.testing import LocalCollector


class TestOptionsFromFlags:
    """Options come from the flags, else ``SEGMENT_*``; a missing write key is a usage error."""

    def test_no_write_key_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --writeKey or SEGMENT_WRITE_KEY the command says so and exits 2."""
        assert main(["send", "--type=identify", "--userId=u"]) == 2
        assert "SEGMENT_WRITE_KEY" in capsys.readouterr().err

    def test_write_key_and_host_from_the_environment(
        self, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SEGMENT_WRITE_KEY and SEGMENT_HOST stand in for the flags."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        monkeypatch.setenv("SEGMENT_HOST", collector.url)
        assert main(["send", "--type=identify", "--userId=u"]) == 0
        assert collector.requests[0].write_key == "env-key"
