"""Benchmarks: SegmentHandler against a no-op handler, the official client and OpenTelemetry.

    python benchmarks/run.py            # full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick    # short run (about half a minute)

Needs the ``bench`` extra: ``pip install -e '.[bench]'``. Every section runs
against a local receiver (``benchmarks/receiver.py``) in a separate process,
and alternates the contenders in rounds so that machine drift hits all alike.
Prints Markdown tables of medians and ratios, with the performance goals beside them.

- hot path: one ``logger.info("Played a Song", extra={...})`` per call, timed in
  bursts; the wall time of the burst, the CPU time of the calling thread alone,
  and the whole process's CPU time until the burst is delivered (worker included).
- end to end: N events from the first call until the receiver counted them all.
- memory: traced Python memory per 10,000 events queued while the receiver is down.
- latency: one event on an idle pipeline, from the call until the receiver read it.
- receiver: checked messages/s that ``collect``'s receiver takes over keep-alive
  (``benchmarks/receiver_speed.py``).

"Default install" is ``SegmentHandler`` without orjson (the module-wide switch of
``_json``); ``[fast]`` is with it, as installed here.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from receiver import Receiver  # noqa: E402

WRITE_KEY = "bench-write-key"
EVENT = "Played a Song"
PROPERTIES = {"title": "Hey Jude", "artist": "The Beatles", "plays": 3}
EXTRA = {"user_id": "user-1234", "properties": PROPERTIES}


def use_source(src: str) -> None:
    """Import ``segmentio_logging`` from ``src`` (the repository by default)."""
    if src not in sys.path:
        sys.path.insert(0, src)


COMPARE: Optional[Any] = None  # a second copy of the package, from --compare
HANDLER_OPTIONS: Dict[str, Any] = {}  # --handler-option: not the defaults the goals name


def load_compare(src: str) -> Any:
    """Load ``src/segmentio_logging`` as a second package, to measure two versions side by side."""
    import importlib.util

    name = "segmentio_logging_compare"
    path = os.path.join(src, "segmentio_logging")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--compare: no segmentio_logging package in {src}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- contenders


class NoopHandler(logging.Handler):
    """The floor: a handler whose emit does nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}.{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class Contender:
    """One way of sending the benchmark event: ``burst(n)`` sends it n times."""

    name = ""

    def burst(self, n: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LoggingContender(Contender):
    def __init__(self, name: str, handler: logging.Handler) -> None:
        self.name = name
        self.handler = handler
        self.logger = _logger(name, handler)

    def burst(self, n: int) -> None:
        info = self.logger.info
        extra = EXTRA
        for _ in range(n):
            info(EVENT, extra=extra)

    def close(self) -> None:
        self.logger.handlers[:] = []
        self.handler.close()


class NoopContender(LoggingContender):
    def __init__(self) -> None:
        super().__init__("no-op logging.Handler", NoopHandler())


class SegmentContender(LoggingContender):
    def __init__(
        self,
        url: Optional[str],
        label: str = "SegmentHandler",
        compare: bool = False,
        **options: Any,
    ) -> None:
        if compare:
            handler_class = COMPARE.SegmentHandler  # type: ignore[union-attr]
            label += " [--compare]"
        else:
            from segmentio_logging import SegmentHandler as handler_class
        if url is not None:
            options["host"] = url
        if HANDLER_OPTIONS:
            options = {**HANDLER_OPTIONS, **options}
            label += " (" + ", ".join(f"{k}={v}" for k, v in HANDLER_OPTIONS.items()) + ")"
        super().__init__(label, handler_class(WRITE_KEY, **options))

    def flush(self) -> None:
        if not self.handler.flush(60):  # type: ignore[call-arg]
            raise RuntimeError("SegmentHandler.flush timed out")

    def stats(self) -> Dict[str, int]:
        return self.handler.stats()  # type: ignore[attr-defined,no-any-return]


class StdlibJsonContender(SegmentContender):
    """``SegmentHandler`` as it runs without the ``fast`` extra: the standard library's json.

    The switch is module-wide, so it is on only from a burst until its flush or close
    (the contenders take turns; no other one sends in between).
    """

    def __init__(self, url: Optional[str], **options: Any) -> None:
        super().__init__(url, label="SegmentHandler, default install (no orjson)", **options)
        self._saved: Optional[Tuple[Any, Any]] = None

    def burst(self, n: int) -> None:
        from segmentio_logging import _json

        if self._saved is None:
            self._saved = _json.FAST_JSON, _json.PLAIN_JSON
            _json.FAST_JSON = _json.PLAIN_JSON = None
        super().burst(n)

    def _restore(self) -> None:
        from segmentio_logging import _json

        if self._saved is not None:
            _json.FAST_JSON, _json.PLAIN_JSON = self._saved
            self._saved = None

    def flush(self) -> None:
        try:
            super().flush()
        finally:
            self._restore()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._restore()


class OfficialContender(Contender):
    def __init__(self, url: str, **options: Any) -> None:
        from segment.analytics import Client

        self.name = "segment-analytics-python track()"
        self.client = Client(WRITE_KEY, host=url, **options)

    def burst(self, n: int) -> None:
        track = self.client.track
        props = PROPERTIES
        for _ in range(n):
            track(user_id="user-1234", event=EVENT, properties=props)

    def flush(self) -> None:
        self.client.flush()

    def close(self) -> None:
        self.client.shutdown()


class OtelContender(LoggingContender):
    def __init__(self) -> None:
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )

        class NoopExporter(LogRecordExporter):  # type: ignore[misc]
            def export(self, batch: Any) -> Any:
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return True

        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            handler = LoggingHandler(logger_provider=self.provider)
        super().__init__("OpenTelemetry BatchLogRecordProcessor", handler)

    def flush(self) -> None:
        self.provider.force_flush()

    def close(self) -> None:
        super().close()
        self.provider.shutdown()


# --------------------------------------------------------------------------- helpers


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(dist)
        except Exception:
            return "not installed"

    import urllib3

    import segmentio_logging

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(terse=True),
        "segmentio-logging": segmentio_logging.__version__,
        "segment-analytics-python": version("segment-analytics-python"),
        "opentelemetry-sdk": version("opentelemetry-sdk"),
        "urllib3": urllib3.__version__,
        "orjson": version("orjson"),
    }


def table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: List[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- hot path


def hot_path(receiver: Receiver, rounds: int, calls: int) -> Tuple[str, Dict[str, Any]]:
    contenders: List[Contender] = [
        NoopContender(),
        SegmentContender(receiver.url),
        OfficialContender(receiver.url),
        OtelContender(),
        StdlibJsonContender(receiver.url),
    ]
    if COMPARE is not None:
        contenders.append(SegmentContender(receiver.url, compare=True))
    names = [c.name for c in contenders]
    wall: Dict[str, List[float]] = {n: [] for n in names}
    caller: Dict[str, List[float]] = {n: [] for n in names}
    total: Dict[str, List[float]] = {n: [] for n in names}
    try:
        for c in contenders:  # warm up: threads started, connections open, caches filled
            c.burst(calls)
            c.flush()
        for r in range(rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            if r % 2:
                order.reverse()
            for c in order:
                gc.collect()
                p0 = time.process_time()
                c0 = time.thread_time()
                t0 = time.perf_counter()
                c.burst(calls)
                t1 = time.perf_counter()
                c1 = time.thread_time()
                c.flush()
                p1 = time.process_time()
                wall[c.name].append((t1 - t0) / calls * 1e6)
                caller[c.name].append((c1 - c0) / calls * 1e6)
                total[c.name].append((p1 - p0) / calls * 1e6)
    finally:
        for c in contenders:
            c.close()

    noop, seg, off, otel, stdlib = names[:5]

    def ratio(series: Dict[str, List[float]], a: str, b: str) -> float:
        # Per round, then the median: drift within a round cancels.
        return median([x / y for x, y in zip(series[a], series[b])])

    rows = [
        [
            n,
            f"{median(wall[n]):.2f}",
            f"{median(caller[n]):.2f}",
            f"{median(total[n]):.2f}",
            f"{ratio(wall, n, noop):.2f}x",
            f"{ratio(caller, n, noop):.2f}x",
            f"{ratio(total, n, noop):.2f}x",
        ]
        for n in names
    ]
    out = [
        f"### Hot path: one `logger.info(..., extra=...)` ({rounds} rounds of {calls:,} calls,"
        " medians, microseconds per call)",
        "",
        "Caller-thread CPU is what the call itself costs; wall also holds the share of the GIL"
        " that a sender's background thread takes during the burst; process CPU counts every"
        " thread from the first call until the burst is delivered (the whole cost of an event:"
        " capture, encoding, gzip, HTTP). Ratios are per round, then the median.",
        "",
        table(
            [
                "contender",
                "wall us/call",
                "caller-thread CPU us",
                "process CPU us (to delivered)",
                "wall vs no-op",
                "caller CPU vs no-op",
                "process CPU vs no-op",
            ],
            rows,
        ),
        "",
    ]
    r_seg_noop_wall = ratio(wall, seg, noop)
    r_seg_noop_cpu = ratio(caller, seg, noop)
    r_off_seg_wall = ratio(wall, off, seg)
    r_off_seg_cpu = ratio(caller, off, seg)
    goals = [
        # (label, series, contender, goal)
        ("caller CPU / no-op, default install (no orjson)", caller, stdlib, 1.25),
        ("caller CPU / no-op, [fast]", caller, seg, 1.2),
        ("process CPU per delivered event / no-op, default install", total, stdlib, 2.5),
        ("process CPU per delivered event / no-op, [fast]", total, seg, 2.0),
    ]
    goal_rows = []
    for label, series, name, goal in goals:
        value = ratio(series, name, noop)
        goal_rows.append([label, f"{value:.2f}", f"<= {goal:g}", verdict(value <= goal)])
    goal_rows.append(
        [
            "official track() / SegmentHandler, caller CPU",
            f"{r_off_seg_cpu:.2f}",
            ">= 3",
            verdict(r_off_seg_cpu >= 3),
        ]
    )
    goal_rows.append(
        ["SegmentHandler / OpenTelemetry, caller CPU", f"{ratio(caller, seg, otel):.2f}", "", ""]
    )
    out.append(table(["ratio", "value", "goal", "met"], goal_rows))
    if COMPARE is not None:
        cmp_name = names[5]
        out.append("")
        out.append(
            table(
                ["ratio", "wall", "caller-thread CPU", "process CPU"],
                [
                    [
                        "SegmentHandler [--compare] / SegmentHandler",
                        f"{ratio(wall, cmp_name, seg):.2f}",
                        f"{ratio(caller, cmp_name, seg):.2f}",
                        f"{ratio(total, cmp_name, seg):.2f}",
                    ],
                    [
                        "SegmentHandler [--compare] / no-op",
                        f"{ratio(wall, cmp_name, noop):.2f}",
                        f"{ratio(caller, cmp_name, noop):.2f}",
                        "",
                    ],
                ],
            )
        )
    data = {
        "ratios": {row[0]: float(row[1]) for row in goal_rows},
        "wall_us": {n: median(wall[n]) for n in names},
        "caller_cpu_us": {n: median(caller[n]) for n in names},
        "process_cpu_us": {n: median(total[n]) for n in names},
        "segment_over_noop_wall": r_seg_noop_wall,
        "segment_over_noop_caller_cpu": r_seg_noop_cpu,
        "official_over_segment_wall": r_off_seg_wall,
        "official_over_segment_caller_cpu": r_off_seg_cpu,
    }
    return "\n".join(out), data


# --------------------------------------------------------------------------- end to end


def _end_to_end_once(receiver: Receiver, kind: str, events: int) -> float:
    """Events per second from the first call until the receiver counted all ``events``."""
    # Default options on both sides, except a queue that holds the whole burst:
    # with the default 10,000 both would drop what a tight loop outruns.
    start = receiver.count
    contender: Contender
    if kind == "official":
        contender = OfficialContender(receiver.url, max_queue_size=events)
    elif kind == "stdlib":
        contender = StdlibJsonContender(receiver.url, max_queue_size=events)
    else:
        contender = SegmentContender(
            receiver.url,
            compare=kind.endswith("@compare"),
            gzip=kind.startswith("gzip"),
            max_queue_size=events,
        )
    gc.collect()
    try:
        t0 = time.perf_counter()
        contender.burst(events)
        if not receiver.wait_for(start + events, timeout=120, poll=0.0005):
            got = receiver.count - start
            raise RuntimeError(f"{kind}: the receiver got {got} of {events} events in 120 s")
        elapsed = time.perf_counter() - t0
    finally:
        contender.close()
    time.sleep(0.05)
    extra = receiver.count - start - events
    if extra:
        raise RuntimeError(f"{kind}: the receiver got {extra} events too many")
    return events / elapsed


# Events per second against the official client's, by sender: [fast] (orjson), and the
# default install.
E2E_GOALS = {"gzip": 4.0, "plain": 4.0, "stdlib": 3.0}


def end_to_end(receiver: Receiver, rounds: int, events: int) -> Tuple[str, Dict[str, Any]]:
    kinds = ["gzip", "plain", "stdlib", "official"]
    labels = {
        "gzip": "SegmentHandler, gzip on (default)",
        "plain": "SegmentHandler, gzip off",
        "stdlib": "SegmentHandler, default install (no orjson), gzip on",
        "official": "segment-analytics-python (default: gzip off)",
        "gzip@compare": "SegmentHandler [--compare], gzip on",
        "plain@compare": "SegmentHandler [--compare], gzip off",
    }
    if HANDLER_OPTIONS:
        given = ", ".join(f"{k}={v}" for k, v in HANDLER_OPTIONS.items())
        labels = {k: v if k == "official" else f"{v} ({given})" for k, v in labels.items()}
    if COMPARE is not None:
        kinds[3:3] = ["gzip@compare", "plain@compare"]
    rates: Dict[str, List[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            rates[kind].append(_end_to_end_once(receiver, kind, events))

    def ratio(a: str) -> float:
        return median([x / y for x, y in zip(rates[a], rates["official"])])

    rows = [
        [
            labels[k],
            f"{median(rates[k]):,.0f}",
            f"{min(rates[k]):,.0f} to {max(rates[k]):,.0f}",
            f"{ratio(k):.2f}x",
            f">= {E2E_GOALS[k]:g}x" if k in E2E_GOALS else "",
            verdict(ratio(k) >= E2E_GOALS[k]) if k in E2E_GOALS else "",
        ]
        for k in kinds
    ]
    text = "\n".join(
        [
            f"### End to end: {events:,} events from the first call until all are at the receiver"
            f" ({rounds} rounds, medians)",
            "",
            table(
                ["sender", "events/s", "range", "vs official", "goal", "met"],
                rows,
            ),
            "",
            f"Default options on both sides except `max_queue_size={events}` (the whole burst;"
            " with the default 10,000 both senders drop what a tight loop outruns).",
        ]
    )
    data = {
        "events_per_s": {k: median(rates[k]) for k in kinds},
        "over_official": {k: ratio(k) for k in kinds},
    }
    return text, data


# --------------------------------------------------------------------------- memory


def memory_child(kind: str, events: int, max_queue_size: int) -> Dict[str, Any]:
    """In a child process: traced memory that ``events`` calls leave queued, receiver down."""
    url = dead_url()
    contender: Contender
    if kind == "official":
        contender = OfficialContender(url, max_queue_size=max_queue_size)
    else:
        if kind == "stdlib":  # the default install: this child process never has orjson
            from segmentio_logging import _json

            _json.FAST_JSON = _json.PLAIN_JSON = None
        contender = SegmentContender(url, max_queue_size=max_queue_size)
    contender.burst(1)  # start the worker thread and let it take the first event
    time.sleep(0.3)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    contender.burst(events)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    result: Dict[str, Any] = {"bytes": after - before, "peak": peak - before}
    if isinstance(contender, SegmentContender):
        stats = contender.stats()
        result["queued"] = stats["queued"]
        result["held"] = stats["pending"]  # queued, and taken into batches waiting to be sent
        result["dropped"] = stats["dropped"]
    else:
        result["queued"] = contender.client.queue.qsize()  # type: ignore[attr-defined]
        result["held"] = None  # its consumer's batch is not counted
        result["dropped"] = None
    return result


def _run_memory_child(src: str, kind: str, events: int, max_queue_size: int) -> Dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--src",
        src,
        "--memory-child",
        f"{kind},{events},{max_queue_size}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def memory(src: str, max_queue_size: int) -> Tuple[str, Dict[str, Any]]:
    cases = [
        ("SegmentHandler, default install (no orjson)", "stdlib", max_queue_size),
        ("SegmentHandler, default install (no orjson)", "stdlib", 2 * max_queue_size),
        ("SegmentHandler [fast]", "segment", max_queue_size),
        ("SegmentHandler [fast]", "segment", 2 * max_queue_size),
        ("segment-analytics-python", "official", max_queue_size),
        ("segment-analytics-python", "official", 2 * max_queue_size),
    ]
    rows = []
    data: Dict[str, Any] = {}
    for label, kind, events in cases:
        res = _run_memory_child(src, kind, events, max_queue_size)
        held = res["held"] or res["queued"] or 1
        per_10k = res["bytes"] / held * 10_000 / 1e6
        per_10k_queued = res["bytes"] / (res["queued"] or 1) * 10_000 / 1e6
        rows.append(
            [
                label,
                f"{events:,}",
                f"{res['queued']:,}",
                "" if res["held"] is None else f"{res['held'] - res['queued']:,}",
                "" if res["dropped"] is None else f"{res['dropped']:,}",
                f"{res['bytes'] / 1e6:.2f}",
                f"{per_10k_queued:.2f}",
                f"{per_10k:.2f}",
                "<= 2.5" if kind != "official" else "",
                verdict(per_10k <= 2.5) if kind != "official" else "",
            ]
        )
        data[f"{kind}_{events}"] = {
            **res,
            "mb_per_10k": per_10k,
            "mb_per_10k_queued": per_10k_queued,
        }
    text = "\n".join(
        [
            f"### Memory with the receiver down (`max_queue_size={max_queue_size:,}`,"
            " tracemalloc, after gc)",
            "",
            table(
                [
                    "sender",
                    "events logged",
                    "queued",
                    "in batches",
                    "dropped",
                    "MB held",
                    "MB per 10,000 queued",
                    "MB per 10,000 held",
                    "goal",
                    "met",
                ],
                rows,
            ),
            "",
            "Held is what is queued plus what batches waiting out the outage hold (their"
            " messages' bytes); the MB are all of it, so per 10,000 held is the cost of an"
            " event kept, and per 10,000 queued charges the batches to the queue.",
        ]
    )
    return text, data


# --------------------------------------------------------------------------- latency


def latency(receiver: Receiver, samples: int) -> Tuple[str, Dict[str, Any]]:
    from segmentio_logging import SegmentHandler

    seg = SegmentContender(receiver.url)
    off = OfficialContender(receiver.url)
    flush_interval = SegmentHandler(WRITE_KEY, send=False).options.flush_interval
    got: Dict[str, List[float]] = {seg.name: [], off.name: []}
    rng = random.Random(5)
    try:
        for c in (seg, off):  # connections open, threads started
            c.burst(1)
            c.flush()
        for i in range(samples):
            for c in (seg, off) if i % 2 == 0 else (off, seg):
                time.sleep(rng.uniform(0.05, 0.6))  # idle, at a random phase of the worker
                start = receiver.count
                t0 = time.monotonic()
                c.burst(1)
                if not receiver.wait_for(start + 1, timeout=10):
                    raise RuntimeError(f"{c.name}: the event did not arrive within 10 s")
                got[c.name].append((receiver.last_arrival - t0) * 1000)
    finally:
        seg.close()
        off.close()
    bound = flush_interval * 1000 + 50
    rows = [
        [
            name,
            f"{median(v):.0f}",
            f"{max(v):.0f}",
            f"<= {bound:.0f}" if name == seg.name else "",
            verdict(max(v) <= bound) if name == seg.name else "",
        ]
        for name, v in got.items()
    ]
    text = "\n".join(
        [
            f"### Latency on an idle pipeline ({samples} samples, default flush interval"
            f" {flush_interval:g} s; milliseconds from the call until the receiver read it)",
            "",
            table(["sender", "median ms", "max ms", "goal (max)", "met"], rows),
        ]
    )
    return text, {"ms": {k: {"median": median(v), "max": max(v)} for k, v in got.items()}}


# --------------------------------------------------------------------------- receiver


def receiver_speed(rounds: int, requests: int) -> Tuple[str, Dict[str, Any]]:
    """The receiver behind ``collect`` and LocalCollector: checked messages/s over keep-alive."""
    import receiver_speed as speed

    speed.one_round(1, 20, "text")  # warm up
    rates: List[float] = []
    cpus: List[float] = []
    for _ in range(rounds):
        rate, cpu = speed.one_round(1, requests, "text")
        rates.append(rate)
        cpus.append(cpu)
    rate = median(rates)
    text = "\n".join(
        [
            f"### Receiver: LocalCollector with collect's spec check and output ({rounds} rounds"
            f" of {requests:,} gzip batches of {speed.BATCH} messages over one keep-alive"
            " connection; `benchmarks/receiver_speed.py`)",
            "",
            table(
                ["figure", "median", "range", "goal", "met"],
                [
                    [
                        "checked messages/s",
                        f"{rate:,.0f}",
                        f"{min(rates):,.0f} to {max(rates):,.0f}",
                        ">= 30,000",
                        verdict(rate >= 30_000),
                    ],
                    [
                        "receiver CPU us per message",
                        f"{median(cpus):.1f}",
                        f"{min(cpus):.1f} to {max(cpus):.1f}",
                        "",
                        "",
                    ],
                ],
            ),
        ]
    )
    return text, {"messages_per_s": rate, "cpu_us_per_message": median(cpus)}


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="segmentio-logging benchmarks.")
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument(
        "--sections",
        default="hot,e2e,memory,latency,receiver",
        help="comma-separated subset of hot,e2e,memory,latency,receiver",
    )
    parser.add_argument("--events", type=int, help="events per end-to-end run (default 50,000)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--src", default=ROOT, help="where to import segmentio_logging from (the repository)"
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also measure the segmentio_logging package in DIR (hot path, end to end)",
    )
    parser.add_argument(
        "--handler-option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a SegmentHandler option for every SegmentHandler contender, e.g. batch_size=500"
        " (the goals are about the defaults: for exploring only)",
    )
    parser.add_argument(
        "--hot-rounds",
        type=int,
        help="rounds of the hot path (default 21, --quick 7); more rounds of fewer calls"
        " give a steadier caller ratio on a busy machine, e.g. --hot-rounds 101 --hot-calls 500",
    )
    parser.add_argument(
        "--hot-calls", type=int, help="calls per contender and round (default 2,000, --quick 1,000)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for option in args.handler_option:
        name, _, value = option.partition("=")
        HANDLER_OPTIONS[name] = json.loads(value)
    use_source(os.path.abspath(args.src))
    if args.compare:
        global COMPARE
        COMPARE = load_compare(os.path.abspath(args.compare))

    if args.memory_child:
        kind, events, max_queue_size = args.memory_child.split(",")
        print(json.dumps(memory_child(kind, int(events), int(max_queue_size))), flush=True)
        os._exit(0)  # the senders would retry the dead receiver at exit

    logging.getLogger("segment").setLevel(logging.CRITICAL)  # the official client's own logs
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.quick:
        hot_rounds, hot_calls, e2e_rounds, events, samples = 7, 1_000, 1, 20_000, 3
        receiver_rounds, receiver_requests = 3, 150
    else:
        hot_rounds, hot_calls, e2e_rounds, events, samples = 21, 2_000, 5, 50_000, 7
        receiver_rounds, receiver_requests = 5, 500
    if args.events:
        events = args.events
    hot_rounds = args.hot_rounds or hot_rounds
    hot_calls = args.hot_calls or hot_calls

    info = machine()
    command = "python " + " ".join([os.path.relpath(__file__, os.getcwd()), *sys.argv[1:]])
    print(f"## segmentio-logging benchmarks ({'quick' if args.quick else 'full'} run)")
    print()
    print(f"- machine: {info['cpu']}, {info['cores']} cores; {info['os']}")
    print(
        f"- {info['python']}; segmentio-logging {info['segmentio-logging']}, "
        f"segment-analytics-python {info['segment-analytics-python']}, "
        f"opentelemetry-sdk {info['opentelemetry-sdk']}, urllib3 {info['urllib3']}, "
        f"orjson {info['orjson']}"
    )
    print(f"- command: `{command}`")
    if COMPARE is not None:
        print(f"- --compare: {COMPARE.__file__}")
    print(flush=True)

    results: Dict[str, Any] = {"machine": info, "command": command}
    began = time.monotonic()
    with Receiver() as receiver:
        runs: List[Tuple[str, Callable[[], Tuple[str, Dict[str, Any]]]]] = [
            ("hot", lambda: hot_path(receiver, hot_rounds, hot_calls)),
            ("e2e", lambda: end_to_end(receiver, e2e_rounds, events)),
            ("memory", lambda: memory(os.path.abspath(args.src), 10_000)),
            ("latency", lambda: latency(receiver, samples)),
            ("receiver", lambda: receiver_speed(receiver_rounds, receiver_requests)),
        ]
        for name, run in runs:
            if name not in sections:
                continue
            text, data = run()
            results[name] = data
            print(text)
            print(flush=True)
    print(f"({time.monotonic() - began:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
