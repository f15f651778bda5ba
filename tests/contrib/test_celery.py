"""segmentio_logging.contrib.celery with a real worker process (prefork and solo pools).

The worker runs the docs page's ``tasks.py`` recipe (and the tasks of
``celery_worker.py``) over kombu's filesystem transport (``celery_broker.py``),
so no broker server is needed; its events go to a LocalCollector in this
process. One worker start per pool: the tasks are sent, the worker is stopped
by SIGTERM, then each test checks one side of that run.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import segmentio_logging
from segmentio_logging.testing import LocalCollector, Request

from ..helpers import tagged_recipes

pytest.importorskip("celery")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "celery-gevent-uwsgi.md"
CELERYCONFIG = Path(__file__).resolve().parent  # celeryconfig.py: a broker in files
WRITE_KEY = "celery-key"
RESULT_TIMEOUT = 60.0
UUID_USER = uuid.UUID("12345678-1234-5678-1234-567812345678")


def doc_recipe(name: str) -> str:
    """The fenced block after ``<!-- recipe: integrations/NAME -->`` in the docs page."""
    return tagged_recipes([DOC])[f"integrations/{name}"][1].lstrip("\n")


@dataclasses.dataclass
class Run:
    """What one worker run left: the events, the task results, the exit, the output."""

    pool: str
    messages: List[Dict[str, Any]]
    requests: List[Request]
    held_before_stop: List[Request]
    results: Dict[str, Any]
    status: int
    output: str

    def events(self, name: str) -> List[Dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Any, Path]]:
    """The app module, imported here as the worker imports it; and the broker's folder."""
    folder = tmp_path_factory.mktemp("celery")
    (folder / "tasks.py").write_text(doc_recipe("celery/tasks.py"), encoding="utf-8")
    broker = folder / "broker"
    saved_path = list(sys.path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CELERY_TEST_DIR", str(broker))
        sys.path[:0] = [str(folder), str(CELERYCONFIG)]
        try:
            from tests.contrib import celery_worker

            yield celery_worker, folder
        finally:
            sys.path[:] = saved_path
            for name in ("tests.contrib.celery_worker", "tasks", "celeryconfig"):
                sys.modules.pop(name, None)


def send_all(module: Any) -> Dict[str, Any]:
    """Send every kind of task with an identity bound; wait for each result."""
    from celery import chain

    app = module.app
    order_completed = sys.modules["tasks"].order_completed
    sent = {}
    for n in range(4):
        with segmentio_logging.identified(user_id=f"u{n}", context={"ip": f"10.0.0.{n}"}):
            sent[f"o-{n}"] = order_completed.delay(f"o-{n}", 10.0 + n)
    with segmentio_logging.identified(user_id=UUID_USER):
        sent["o-uuid"] = order_completed.apply_async(("o-uuid", 1.0))
    with segmentio_logging.identified(anonymous_id="a-chain"):
        sent["chain"] = chain(
            order_completed.s("o-chain", 2.0), module.order_shipped.s()
        ).apply_async()
    with segmentio_logging.identified(user_id="u-retry"):
        sent["retry"] = module.payment_attempted.delay("o-retry")
    with segmentio_logging.identified(user_id="u-fail"):
        sent["fail"] = app.send_task("tests.contrib.celery_worker.order_failed", ("o-fail",))
    results = {
        key: result.get(timeout=RESULT_TIMEOUT, propagate=False) for key, result in sent.items()
    }
    # Sent without an identity, after the others ran: nothing of theirs is left bound.
    unbound = [module.identity_now.delay() for _ in range(4)]
    results["identity_now"] = [r.get(timeout=RESULT_TIMEOUT) for r in unbound]
    return results


def stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """A warm shutdown (SIGTERM); kill and fail when the worker does not exit in time."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"the worker did not exit within {timeout} s of SIGTERM")


@pytest.fixture(scope="module", params=["prefork", "solo"])
def run(request: pytest.FixtureRequest, tasks: Tuple[Any, Path]) -> Iterator[Run]:
    """One worker with this pool: the tasks sent, then SIGTERM; what reached the collector."""
    module, folder = tasks
    pool = str(request.param)
    log_path = folder / f"worker-{pool}.log"
    with LocalCollector() as collector, log_path.open("wb") as log_file:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
        path = [str(folder), str(CELERYCONFIG), str(ROOT), env.get("PYTHONPATH", "")]
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in path if p),
            SEGMENT_HOST=collector.url,
            SEGMENT_WRITE_KEY=WRITE_KEY,
            # Nothing leaves before the stop unless the processes deliver it as they exit.
            SEGMENT_FLUSH_INTERVAL="30",
        )
        command = [sys.executable, "-m", "celery", "-A", "tests.contrib.celery_worker"]
        command += ["worker", f"--pool={pool}", "--concurrency=2", "--loglevel=INFO"]
        command += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            results = send_all(module)
            held = list(collector.requests)
        finally:
            status = stop(process)
        yield Run(
            pool=pool,
            messages=collector.messages,
            requests=collector.requests,
            held_before_stop=held,
            results=results,
            status=status,
            output=log_path.read_text(encoding="utf-8", errors="replace"),
        )


def test_each_event_carries_the_identity_of_its_sender(run: Run) -> None:
    """An event logged in a task has the user id and context bound where it was sent."""
    by_order = {m["properties"]["order_id"]: m for m in run.events("Order Completed")}
    for n in range(4):
        message = by_order[f"o-{n}"]
        assert message["userId"] == f"u{n}", run.output
        assert message["context"]["ip"] == f"10.0.0.{n}"
        assert message["properties"]["total"] == 10.0 + n
    assert by_order["o-uuid"]["userId"] == str(UUID_USER)


def test_a_chain_carries_the_identity_to_every_step(run: Run) -> None:
    """Both steps of a chain (the second sent by the worker) carry the sender's anonymous id."""
    assert run.results["chain"] == "o-chain"
    [first] = [m for m in run.events("Order Completed") if m["properties"]["order_id"] == "o-chain"]
    [second] = run.events("Order Shipped")
    for message in (first, second):
        assert message["anonymousId"] == "a-chain"
        assert "userId" not in message


def test_a_retry_carries_the_identity(run: Run) -> None:
    """The retried attempt (published from inside the task) has the first attempt's user."""
    assert run.results["retry"] == "o-retry"
    attempts = sorted(run.events("Payment Attempted"), key=lambda m: m["properties"]["attempt"])
    assert [m["properties"]["attempt"] for m in attempts] == [0, 1]
    assert {m["userId"] for m in attempts} == {"u-retry"}


def test_a_failing_task_logs_with_its_identity_and_unbinds(run: Run) -> None:
    """A task that raises still logs with its identity, and leaves nothing bound after it."""
    assert isinstance(run.results["fail"], RuntimeError)
    [message] = run.events("Order Failed")
    assert message["userId"] == "u-fail"
    assert run.results["identity_now"] == [{}, {}, {}, {}]


def test_nothing_queued_in_the_worker_is_lost_at_a_warm_shutdown(run: Run) -> None:
    """The events wait in the worker's processes until SIGTERM; then every one is delivered."""
    assert run.held_before_stop == []  # a 30 s flush interval: only the exit delivers them
    assert run.status == 0, run.output
    assert len(run.messages) == 4 + 1 + 2 + 2 + 1, run.output
    assert {r.write_key for r in run.requests} == {WRITE_KEY}
    assert len({m["messageId"] for m in run.messages}) == len(run.messages)


# --------------------------------------------------------------------------- in this process


def test_setup_twice_connects_each_signal_once() -> None:
    """A second setup() changes nothing: one receiver per signal."""
    from celery import signals

    from segmentio_logging.contrib import celery as contrib

    contrib.setup()
    contrib.setup()
    for signal_, receiver in [
        (signals.before_task_publish, contrib._put_identity),
        (signals.task_prerun, contrib._bind_identity),
        (signals.task_postrun, contrib._unbind_identity),
        (signals.worker_process_shutdown, contrib._close_at_process_exit),
        (signals.worker_shutdown, contrib._flush_at_worker_shutdown),
    ]:
        connected = [entry[1] for entry in signal_.receivers]  # weak=False: the functions
        assert connected.count(receiver) == 1, signal_


def task_with_header(sent: Any) -> Any:
    """A task as task_prerun and task_postrun see it, its request carrying ``sent``."""
    from celery.app.task import Context

    from segmentio_logging.contrib import celery as contrib

    class Task:
        request = Context({contrib.HEADER: sent})

    return Task()


@pytest.mark.parametrize(
    ("sent", "bound", "ignored"),
    [
        ({"user_id": "u1", "context": ["x"]}, {"user_id": "u1"}, "context (a list)"),
        ({"user_id": {"id": 1}, "anonymous_id": "a1"}, {"anonymous_id": "a1"}, "user_id (a dict)"),
        ({"user_id": ["u"], "anonymous_id": 7}, {"anonymous_id": 7}, "user_id (a list)"),
        (
            {"user_id": True, "anonymous_id": "a1", "integrations": {"All": False}},
            {"anonymous_id": "a1", "integrations": {"All": False}},
            "user_id (a bool)",
        ),
        (
            {"anonymous_id": 1.5, "user_id": 42, "integrations": ["not", "a", "dict"]},
            {"user_id": 42},
            "anonymous_id (a float), integrations (a list)",
        ),
        ({"user_id": "u1", "context": "not a dict"}, {"user_id": "u1"}, "context (a str)"),
        ("not a mapping", {}, "the whole header (a str, not an object)"),
    ],
)
def test_a_bad_field_of_the_identity_header_is_left_out_and_the_rest_bound(
    sent: Any,
    bound: Dict[str, Any],
    ignored: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each field of a header from elsewhere is checked alone: the valid ones are bound
    while the task runs, the others named in one warning, and the task runs."""
    from segmentio_logging import _report
    from segmentio_logging.contrib import celery as contrib

    monkeypatch.setattr(_report, "_last", {})  # no rate limit left by another test
    task = task_with_header(sent)
    contrib._bind_identity(task=task)
    try:
        assert dict(segmentio_logging.current_identity()) == bound
    finally:
        contrib._unbind_identity(task=task)
    assert segmentio_logging.current_identity() == {}
    err = capsys.readouterr().err
    assert err.count("task identity header: ignored") == 1
    assert f"ignored {ignored}\n" in err


def test_a_valid_header_is_bound_without_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    """Ids given as strings or integers and object fields bind as they are, silently."""
    from segmentio_logging.contrib import celery as contrib

    sent = {"user_id": 42, "anonymous_id": "a1", "context": {"ip": "10.0.0.1"}, "later": 1}
    task = task_with_header(sent)
    contrib._bind_identity(task=task)
    assert dict(segmentio_logging.current_identity()) == {
        "user_id": 42,
        "anonymous_id": "a1",
        "context": {"ip": "10.0.0.1"},
    }
    contrib._unbind_identity(task=task)
    assert "task identity header" not in capsys.readouterr().err


def test_a_task_whose_header_has_a_bad_user_id_still_sends_its_events(
    make_handler: Any, collector: LocalCollector, logger: Any
) -> None:
    """The events of such a task go with the header's valid anonymous_id, none dropped."""
    from segmentio_logging.contrib import celery as contrib

    handler = make_handler()
    logger.addHandler(handler)
    task = task_with_header({"user_id": {"id": 1}, "anonymous_id": "a1"})
    contrib._bind_identity(task=task)
    logger.info("Task Ran")
    contrib._unbind_identity(task=task)
    assert handler.flush(10)
    assert [(m.get("userId"), m["anonymousId"]) for m in collector.messages] == [(None, "a1")]
    stats = handler.stats()
    assert (stats["delivered"], stats["dropped"]) == (1, 0)


def test_the_dictconfig_recipe_keeps_celery_records_out(collector: LocalCollector) -> None:
    """With the docs' dictConfig, Celery's records inside a task are not events; the app's are."""
    import logging

    from celery.signals import setup_logging

    from segmentio_logging import SegmentHandler

    scope: Dict[str, Any] = {"__name__": "docs_celery_dictconfig"}
    exec(compile(doc_recipe("celery/dictconfig"), str(DOC), "exec"), scope)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SEGMENT_HOST", collector.url)
            patch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
            scope["configure_logging"]()
        [handler] = [h for h in logging.getLogger().handlers if isinstance(h, SegmentHandler)]
        with segmentio_logging.identified(user_id="u-task"):
            logging.getLogger("celery.app.trace").info("Task shop.x[1] succeeded in 0.1s")
            logging.getLogger("shop.tasks").info("Order Completed")
        assert handler.flush(10)
        assert [m["event"] for m in collector.messages] == ["Order Completed"]
        handler.close()
    finally:
        setup_logging.disconnect(scope["configure_logging"])
