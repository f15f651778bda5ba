"""Real apps at full load: FastAPI under uvicorn and Django under gunicorn, driven by wrk.

    python benchmarks/realapp/run.py --quick     # one short round (about 3 minutes)
    python benchmarks/realapp/run.py             # 3 rounds of 15 s per server and sender

Each request logs 3 events. The app runs with no handler (the same logging calls to a
NullHandler), with ``SegmentHandler`` (orjson as installed, and without it), and with the
official client's ``track`` in the view. A fast receiver counts what arrives, in its own
process. For each: requests/s, p50 and p99 latency (wrk --latency), events logged against
events received once the load stops, and what a SIGTERM sent right after a burst of load
loses. Loopback only; needs ``wrk`` (``apt-get install -y wrk``), fastapi, uvicorn, django,
gunicorn and the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from receiver import Receiver  # noqa: E402

EVENTS_PER_REQUEST = 3
MODES = {
    "none": "no handler (NullHandler)",
    "handler": "SegmentHandler",
    "handler-stdlib": "SegmentHandler, no orjson",
    "official": "official client track()",
}
SERVERS = ("fastapi", "django")
EXPERIMENTS: List[str] = []  # --experiment: worker-side changes tried from the benchmark


@dataclass
class Run:
    """One server and sender under load."""

    server: str
    mode: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_per_request: float = 0.0
    switches_per_request: float = 0.0
    logged: int = 0
    received: int = 0
    batches: int = 0
    errors: int = 0
    stats: Dict[str, Any] = field(default_factory=dict)
    term_logged: int = 0
    term_received: int = 0
    term_dropped_before: Optional[int] = None
    term_queued: Optional[int] = None
    exit_seconds: float = 0.0


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def _task_figures(task: str) -> Tuple[float, int]:
    """CPU seconds (user and system) and voluntary context switches of one thread."""
    with open(f"{task}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    switches = 0
    with open(f"{task}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                switches += int(line.split()[1])
    return (int(fields[11]) + int(fields[12])) / _TICKS, switches


def process_figures(pid: int) -> Tuple[float, int]:
    """CPU seconds and voluntary context switches of ``pid``'s threads and its children's
    (gunicorn's worker). A voluntary switch is a thread that blocked: waiting for a socket,
    or for the interpreter lock that the other thread holds (preemptions by a busy
    machine are left out)."""
    cpu, switches = 0.0, 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            more_cpu, more_switches = _task_figures(task)
        except (OSError, ValueError, IndexError):  # a thread that just ended
            continue
        cpu += more_cpu
        switches += more_switches
    for child in _children(pid):
        more_cpu, more_switches = process_figures(child)
        cpu += more_cpu
        switches += more_switches
    return cpu, switches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(server: str, port: int) -> List[str]:
    if server == "fastapi":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "django_app:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]


def get(url: str, timeout: float = 2.0) -> Optional[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except OSError:
        return None


def start_server(server: str, mode: str, receiver_url: str) -> Tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    env["REALAPP_MODE"] = "handler" if mode.startswith("handler") else mode
    env["REALAPP_URL"] = receiver_url
    if mode == "handler-stdlib":
        env["REALAPP_NO_ORJSON"] = "1"
    if "full-batches" in EXPERIMENTS:
        env["REALAPP_FULL_BATCHES"] = "1"
    proc = subprocess.Popen(server_command(server, port), cwd=HERE, env=env)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], base: str) -> int:
    """Wait until the app answers; the /play requests that did (their events count)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        if get(base + "/play", 1.0) is not None:
            return 1
        time.sleep(0.1)
    raise RuntimeError("the server did not answer within 30 s")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(base: str, seconds: float, connections: int) -> Dict[str, float]:
    """requests/s, p50 and p99 in ms, requests completed, and non-2xx or socket errors."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(round(seconds), 1)}s",
        "--latency",
        "--timeout",
        "10s",
        base + "/play",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    found: Dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("50%"):
            found["p50"] = _ms(parts[1])
        elif line.strip().startswith("99%"):
            found["p99"] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            found["rps"] = float(parts[1])
        elif "requests in" in line:
            found["requests"] = float(parts[0])
        elif "Non-2xx" in line:
            found["errors"] = found.get("errors", 0) + float(parts[-1])
        elif line.strip().startswith("Socket errors"):
            found["errors"] = found.get("errors", 0) + sum(
                float(n) for n in re.findall(r"\b(?:connect|read|write|timeout) (\d+)", line)
            )
    if "rps" not in found or "p99" not in found:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return found


def settle(receiver: Receiver, goal: int, quiet: float, limit: float) -> int:
    """Wait until ``goal`` messages arrived, or none for ``quiet`` s (``limit`` at most)."""
    end = time.monotonic() + limit
    last, since = receiver.count, time.monotonic()
    while receiver.count < goal and time.monotonic() < end:
        time.sleep(0.05)
        now = receiver.count
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            break
    return receiver.count


def stop(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """SIGTERM, then wait for the exit (SIGKILL after ``timeout``); seconds it took."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return time.monotonic() - t0


def one_run(
    receiver: Receiver, server: str, mode: str, seconds: float, term_seconds: float, conns: int
) -> Run:
    run = Run(server, mode)
    proc, base = start_server(server, mode, receiver.url)
    try:
        start = receiver.count
        start_batches = receiver.requests
        ready = wait_ready(proc, base)
        cpu0, switches0 = process_figures(proc.pid)
        found = wrk(base, seconds, conns)
        cpu1, switches1 = process_figures(proc.pid)
        run.rps, run.p50_ms, run.p99_ms = found["rps"], found["p50"], found["p99"]
        run.errors = int(found.get("errors", 0))
        served = int(found["requests"]) - run.errors
        body = get(base + "/stats")
        run.stats = json.loads(body) if body else {}
        # The app's own count: wrk leaves out the requests in flight when it stops.
        run.logged = int(run.stats.get("logged", EVENTS_PER_REQUEST * (ready + served)))
        run.cpu_us_per_request = (cpu1 - cpu0) / max(served, 1) * 1e6
        run.switches_per_request = (switches1 - switches0) / max(served, 1)
        if mode != "none":
            run.received = settle(receiver, start + run.logged, 3.0, 30.0) - start
            run.batches = receiver.requests - start_batches
        # A burst of load, then SIGTERM at once: what was queued then is what may be lost.
        before = receiver.count
        burst = wrk(base, term_seconds, conns)
        body = get(base + "/stats")
        after_burst = json.loads(body) if body else {}
        served = int(burst["requests"]) - int(burst.get("errors", 0))
        run.term_logged = int(after_burst.get("logged", 0)) - run.logged
        if run.term_logged <= 0:
            run.term_logged = EVENTS_PER_REQUEST * served
        if "dropped" in after_burst:
            run.term_dropped_before = int(after_burst["dropped"]) - int(run.stats.get("dropped", 0))
        run.term_queued = after_burst.get("queued", after_burst.get("pending"))
        run.exit_seconds = stop(proc, 40.0)
        if mode != "none":
            run.term_received = settle(receiver, before + run.term_logged, 2.0, 10.0) - before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return run


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(runs: List[Run], servers: List[str], modes: List[str]) -> str:
    rows = []
    for server in servers:
        base = [r for r in runs if r.server == server and r.mode == "none"]
        for mode in modes:
            mine = [r for r in runs if r.server == server and r.mode == mode]
            if not mine:
                continue
            rps = median([r.rps for r in mine])
            p99 = median([r.p99_ms for r in mine])
            vs_rps = median([a.rps / b.rps for a, b in zip(mine, base)]) if base else 1.0
            vs_p99 = median([a.p99_ms / b.p99_ms for a, b in zip(mine, base)]) if base else 1.0
            logged = sum(r.logged for r in mine)
            received = sum(r.received for r in mine)
            term_logged = sum(r.term_logged for r in mine)
            term_received = sum(r.term_received for r in mine)
            none = mode == "none"
            lost = "" if none else f"{(logged - received) / max(logged, 1):.1%}"
            dropped = [r.term_dropped_before for r in mine if r.term_dropped_before is not None]
            at_term = term_logged - term_received - (sum(dropped) if dropped else 0)
            rows.append(
                [
                    server,
                    MODES[mode],
                    f"{rps:,.0f}",
                    f"{vs_rps:.2f}",
                    f"{median([r.p50_ms for r in mine]):.1f}",
                    f"{p99:.1f}",
                    f"{vs_p99:.2f}",
                    f"{median([r.cpu_us_per_request for r in mine]):.0f}",
                    f"{median([r.switches_per_request for r in mine]):.2f}",
                    "" if none else f"{received / max(sum(r.batches for r in mine), 1):.1f}",
                    f"{logged:,}",
                    "" if none else f"{received:,}",
                    lost,
                    "" if none else f"{term_logged:,} / {term_received:,}",
                    "" if none or not dropped else f"{sum(dropped):,}",
                    "" if none else f"{at_term:,}",
                    f"{median([r.exit_seconds for r in mine]):.1f}",
                ]
            )
    return table(
        [
            "server",
            "sender",
            "req/s",
            "vs none",
            "p50 ms",
            "p99 ms",
            "p99 vs none",
            "server CPU us/request",
            "threads blocked/request",
            "events per batch",
            "events logged",
            "received",
            "not received",
            "SIGTERM burst: logged / received",
            "of which dropped (queue full)",
            "lost at SIGTERM",
            "exit s",
        ],
        rows,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 5 s per case")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument("--seconds", type=float, help="load per case (default 15, --quick 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="fastapi,django")
    parser.add_argument("--modes", default=",".join(MODES), help=",".join(MODES))
    parser.add_argument(
        "--handler-option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a SegmentHandler option, e.g. batch_size=500 (the figures that count use the"
        " defaults: for exploring only)",
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=["full-batches"],
        help="full-batches: the worker sends a partial batch only at the first send of a"
        " wake (see events.py); for measuring a worker-side change",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON")
    args = parser.parse_args(argv)
    options = {}
    for option in args.handler_option:
        name, _, value = option.partition("=")
        options[name] = json.loads(value)
    if options:
        os.environ["REALAPP_HANDLER_OPTIONS"] = json.dumps(options)
    EXPERIMENTS.extend(args.experiment)
    servers = [s for s in args.servers.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    if "none" not in modes:
        modes.insert(0, "none")  # the ratios are against it
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    term_seconds = 2.0
    print(f"## Real apps at full load ({'quick' if args.quick else 'full'} run)")
    print()
    print(
        f"- {os.cpu_count()} cores; Python {sys.version.split()[0]}; wrk -t1 -c{args.connections}"
        f" -d{seconds:g}s; {EVENTS_PER_REQUEST} events per request; {rounds} round(s)"
    )
    print(f"- command: `python {' '.join([os.path.relpath(__file__), *sys.argv[1:]])}`")
    if options:
        print(f"- SegmentHandler options (not the defaults): {options}")
    if EXPERIMENTS:
        print(f"- experiments on the worker (not the package as it is): {', '.join(EXPERIMENTS)}")
    print(flush=True)
    runs: List[Run] = []
    began = time.monotonic()
    with Receiver() as receiver:
        for r in range(rounds):
            for server in servers:
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                for mode in order:
                    run = one_run(receiver, server, mode, seconds, term_seconds, args.connections)
                    runs.append(run)
                    print(
                        f"  {server:8s} {mode:15s} {run.rps:9,.0f} req/s  p99 {run.p99_ms:7.1f} ms"
                        f"  logged {run.logged:8,}  received {run.received:8,}"
                        f"  SIGTERM {run.term_logged:,}/{run.term_received:,}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(report(runs, servers, modes))
    print()
    print(
        "not received: events logged under load that had not arrived 3 s after the load"
        " stopped (dropped: the queue was full). SIGTERM burst: "
        f"{term_seconds:g} s more of load, then SIGTERM at once; lost at SIGTERM: what neither"
        " arrived nor was dropped before it (what was queued and not delivered at exit)."
    )
    print(f"\n({time.monotonic() - began:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([run.__dict__ for run in runs], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
