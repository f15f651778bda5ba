"""``demo``: the whole pipeline against a local receiver, printed as a table."""

from __future__ import annotations

from .helpers import run_cli


class TestDemo:
    """``demo`` still runs the whole pipeline and prints its table."""

    def test_demo_exits_0_with_a_table(self) -> None:
        """``python -m segmentio_logging demo`` prints the received messages and exits 0."""
        done = run_cli("demo")
        assert done.returncode == 0, done.stderr
        assert "Played a Song" in done.stdout and "identify" in done.stdout
