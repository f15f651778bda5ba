"""_threads: whether threads run under uWSGI (its ``uwsgi`` module's options and version).

The gevent side of the module runs in subprocesses: tests/test_gevent.py.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any, Dict, Iterator, Tuple

import pytest

from segmentio_logging import _report, _threads


@pytest.fixture
def uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A ``uwsgi`` module as uWSGI provides it to its app: ``opt`` and ``version_info``."""
    module = types.ModuleType("uwsgi")
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    monkeypatch.setattr(_threads, "_uwsgi_warned", False)
    monkeypatch.setattr(_report, "_last", {})  # no rate limit left by another test
    yield module


@pytest.mark.parametrize(
    ("opt", "version", "run"),
    [
        ({}, (2, 0, 26, 0, ""), False),
        ({"enable-threads": True}, (2, 0, 26, 0, ""), True),
        ({"threads": b"4"}, (2, 0, 26, 0, ""), True),
        ({"threads": b"1"}, (2, 0, 26, 0, ""), False),
        ({"enable-threads": [b"false"]}, (2, 0, 20, 0, ""), False),
        ({}, (2, 0, 27, 0, ""), True),
        ({}, (2, 0, 31, 0, ""), True),
    ],
)
def test_threads_run_follows_the_options_and_the_version(
    uwsgi: types.ModuleType, opt: Dict[str, Any], version: Tuple[Any, ...], run: bool
) -> None:
    """Threads run with --enable-threads, --threads above 1, or a uWSGI from 2.0.27 on."""
    uwsgi.opt = opt  # type: ignore[attr-defined]
    uwsgi.version_info = version  # type: ignore[attr-defined]
    assert _threads.threads_run() is run


def test_without_threads_it_warns_once_with_the_fix(
    uwsgi: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warning names --enable-threads, and comes once however often it is asked."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    assert not _threads.threads_run()
    assert not _threads.threads_run()
    err = capsys.readouterr().err
    assert err.count("uWSGI runs without --enable-threads") == 1
    assert "Start uWSGI with --enable-threads" in err


def test_outside_uwsgi_and_gevent_threads_are_threads() -> None:
    """With neither, threads run and a worker is a plain daemon threading.Thread."""
    assert "uwsgi" not in sys.modules
    assert _threads.threads_run()
    thread = _threads.worker_thread(lambda: None, "w", made_with=threading.Event())
    assert isinstance(thread, threading.Thread) and thread.daemon


def test_without_threads_a_handler_sends_full_batches_from_the_caller_and_the_rest_at_close(
    uwsgi: types.ModuleType, make_handler: Any, collector: Any, logger: Any
) -> None:
    """No worker starts; a full batch goes from the logging thread, the rest at close."""
    uwsgi.opt = {}  # type: ignore[attr-defined]
    uwsgi.version_info = (2, 0, 26, 0, "")  # type: ignore[attr-defined]
    handler = make_handler(batch_size=5, flush_interval=30)
    logger.addHandler(handler)
    for n in range(7):
        logger.info("Song Played", extra={"user_id": f"u{n}"})
    assert not handler._pipeline.worker_alive()
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(5)]
    handler.close()
    assert [m["userId"] for m in collector.messages] == [f"u{n}" for n in range(7)]
    assert handler.stats()["delivered"] == 7
