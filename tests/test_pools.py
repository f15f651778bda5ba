"""Process pools, in subprocesses: every event a pool's tasks log is delivered by the end.

``multiprocessing.Pool`` (``close(); join()``) and ``ProcessPoolExecutor``
(``shutdown()``), for each start method, with the handler configured in the pool's
initializer or when the main module is imported. Up to Python 3.12 a pool worker
ends with ``os._exit`` after multiprocessing's finalizers, without atexit; a
``forkserver`` or ``spawn`` worker first imports this package after its bootstrap.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Iterator

import pytest

from segmentio_logging.testing import LocalCollector

from .processes import child_env, finish, launch, python, reap_launched

TASKS = 16
PER_TASK = 100

# argv: the receiver's URL, the start method, "Pool" or "ProcessPoolExecutor", and
# where the handler is configured: "initializer" or "import" (of the main module,
# which spawn and forkserver workers import again).
POOL_SCRIPT = f"""\
import concurrent.futures
import logging
import multiprocessing
import sys

URL, METHOD, KIND, WHERE = sys.argv[1:5]


def configure(url):
    from segmentio_logging import SegmentHandler

    log = logging.getLogger("pool")
    log.setLevel(logging.INFO)
    log.propagate = False
    # Nothing is sent before the worker ends: a batch would need 2,500 events, or 30 s.
    log.addHandler(SegmentHandler("key", host=url, flush_interval=30, batch_size=2500))


if WHERE == "import":
    configure(URL)


def initializer(url):
    if WHERE == "initializer":
        configure(url)


def task(number):
    log = logging.getLogger("pool")
    for i in range(number * {PER_TASK}, (number + 1) * {PER_TASK}):
        log.info("Pool Task", extra={{"user_id": f"u{{i}}", "properties": {{"i": i}}}})
    return number


if __name__ == "__main__":
    context = multiprocessing.get_context(METHOD)
    if KIND == "Pool":
        pool = context.Pool(2, initializer=initializer, initargs=(URL,))
        done = pool.map(task, range({TASKS}), chunksize=1)
        pool.close()
        pool.join()
    else:
        executor = concurrent.futures.ProcessPoolExecutor(
            2, mp_context=context, initializer=initializer, initargs=(URL,)
        )
        done = list(executor.map(task, range({TASKS})))
        executor.shutdown()
    print(len(done))
"""

START_METHODS = [
    pytest.param(
        method,
        marks=pytest.mark.skipif(
            method not in multiprocessing.get_all_start_methods(),
            reason=f"no {method} start method here",
        ),
    )
    for method in ("fork", "spawn", "forkserver")
]


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """The script, its pool's workers and a forkserver are killed when a test ends."""
    yield
    reap_launched()


@pytest.mark.parametrize("where", ["initializer", "import"])
@pytest.mark.parametrize("kind", ["Pool", "ProcessPoolExecutor"])
@pytest.mark.parametrize("method", START_METHODS)
def test_every_event_logged_in_a_pool_is_delivered_by_its_end(
    method: str, kind: str, where: str, collector: LocalCollector, tmp_path: Path
) -> None:
    """All 1,600 events of 16 tasks on 2 workers arrive, once each, after the pool ends."""
    script = tmp_path / "pool_script.py"  # spawn and forkserver workers import it by path
    script.write_text(POOL_SCRIPT, encoding="utf-8")
    process = launch(python(str(script), collector.url, method, kind, where), child_env())
    code, out, err = finish(process, timeout=60)
    assert code == 0, err
    assert "Traceback" not in err
    assert out.strip() == str(TASKS)
    total = TASKS * PER_TASK
    assert collector.wait_for_messages(total, timeout=10), len(collector.messages)
    assert sorted(m["properties"]["i"] for m in collector.messages) == list(range(total))


# argv: the receiver's URL and the start method. The parent's handler installs the
# SIGTERM hook there; each worker reports SIGTERM's disposition after its own.
DISPOSITION_SCRIPT = """\
import logging
import multiprocessing
import signal
import sys

from segmentio_logging import SegmentHandler

URL, METHOD = sys.argv[1:3]


def initializer(url):
    logging.getLogger("pool").addHandler(SegmentHandler("key", host=url))


def disposition(_):
    handler = signal.getsignal(signal.SIGTERM)
    return "default" if handler is signal.SIG_DFL else getattr(handler, "__name__", "?")


if __name__ == "__main__":
    logging.getLogger("main").addHandler(SegmentHandler("key", host=URL))
    print(disposition(None))
    with multiprocessing.get_context(METHOD).Pool(2, initializer, (URL,)) as pool:
        print(" ".join(sorted(set(pool.map(disposition, range(8), chunksize=1)))))
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_pool_workers_keep_sigterm_for_terminate(
    method: str, collector: LocalCollector, tmp_path: Path
) -> None:
    """Workers keep SIGTERM's default (terminate() kills them at once), even when forked
    from a parent whose handler installed the SIGTERM hook."""
    script = tmp_path / "disposition_script.py"
    script.write_text(DISPOSITION_SCRIPT, encoding="utf-8")
    process = launch(python(str(script), collector.url, method), child_env())
    code, out, err = finish(process, timeout=60)
    assert code == 0, err
    assert out.split("\n")[:2] == ["close_then_die_of_sigterm", "default"]
