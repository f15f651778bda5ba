"""Helpers shared by the test suite: free and closed ports, a callback recorder, the pages of
the documentation; for the mapping and JSON tests, both JSON backends, log records, values and
Hypothesis strategies."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import gzip
import http.server
import json
import logging
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from segmentio_logging import MessageTooLarge, __version__, _json
from segmentio_logging._capture import RecordMapper
from segmentio_logging._message import encode


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: every connection is refused."""
    return free_port()


def closed_url() -> str:
    """The ``http://`` URL of a port nothing listens on."""
    return f"http://127.0.0.1:{closed_port()}"


class Recorder:
    """Collects callback calls (``on_success``, ``on_failure``) from the worker thread."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, Any]] = []
        self.event = threading.Event()

    def __call__(self, data: Any, arg: Any) -> None:
        self.calls.append((data, arg))
        self.event.set()


# --------------------------------------------------------------------------- the documentation

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
CODE_FENCE = re.compile(r"^\s*(```|~~~)")


def doc_pages() -> List[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def doc_name(page: Path) -> str:
    """A page's path from the repository root, as tracebacks and messages name it."""
    return page.relative_to(ROOT).as_posix()


RECIPE_TAG = re.compile(r"^\s*<!--\s*recipe:\s*(?P<name>[^;\s]+)\s*(?:;[^>]*)?-->\s*$")


def tagged_recipes(pages: List[Path]) -> Dict[str, Tuple[Path, str]]:
    """Every block tagged ``<!-- recipe: NAME -->`` on ``pages``: its page and its code.

    The code is prefixed by blank lines, so that a traceback gives the page's line
    numbers. A name may be used once across the pages.
    """
    found: Dict[str, Tuple[Path, str]] = {}
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            tag = RECIPE_TAG.match(line)
            if tag is None:
                continue
            where = f"{doc_name(page)}:{index + 1}"
            assert CODE_FENCE.match(lines[index + 1]), f"{where}: no code block after the tag"
            name = tag.group("name")
            assert name not in found, (
                f"{where}: recipe {name!r} already in {doc_name(found[name][0])}"
            )
            end = index + 2
            while not CODE_FENCE.match(lines[end]):
                end += 1
            code = "\n" * (index + 2) + "\n".join(lines[index + 2 : end]) + "\n"
            found[name] = (page, code)
    return found


def section_code(title: str) -> Tuple[Path, str]:
    """The first ``python`` block under the heading ``title``, on the one page that has it.

    The code is prefixed by blank lines, so that a traceback gives the page's line numbers.
    """
    found = []
    for page in doc_pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        in_code = False
        for index, line in enumerate(lines):
            if CODE_FENCE.match(line):
                in_code = not in_code
                continue
            heading = None if in_code else HEADING.match(line)
            if heading is not None and heading.group("title") == title:
                found.append((page, lines, index))
    assert len(found) == 1, f"{len(found)} headings {title!r} in the docs, not one"
    page, lines, index = found[0]
    start = next(i for i in range(index, len(lines)) if lines[i].strip() == "```python") + 1
    end = next(i for i in range(start, len(lines)) if CODE_FENCE.match(lines[i]))
    return page, "\n" * start + "\n".join(lines[start:end]) + "\n"


# --------------------------------------------------------------------------- mapping and JSON


@pytest.fixture(autouse=True, scope="module", params=["stdlib-json", "orjson"])
def json_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every test of a module that imports this with both encoders: the standard
    library and orjson."""
    saved = _json.FAST_JSON, _json.PLAIN_JSON
    if request.param == "stdlib-json":
        _json.FAST_JSON = _json.PLAIN_JSON = None
    elif saved[0] is None:
        pytest.skip("orjson is not installed")
    try:
        yield str(request.param)
    finally:
        _json.FAST_JSON, _json.PLAIN_JSON = saved


LIBRARY = {"name": "segmentio-logging", "version": __version__}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TOO_LARGE = re.compile(
    r"^message is \d{1,3}(,\d{3})* bytes, over Segment's 32 KB limit \(32,768 bytes\)$"
)
CREATED = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
CREATED_ISO = "2023-11-14T22:13:20.250Z"
_logger = logging.getLogger("tests.message.records")


def make_record(msg: Any = "Played a Song", *args: Any, **extra: Any) -> logging.LogRecord:
    """A real LogRecord, as ``logger.info(msg, *args, extra=extra)`` makes it."""
    record = _logger.makeRecord(
        _logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra or None
    )
    record.created = CREATED
    return record


class GeneralOnlyMapper(RecordMapper):
    """A mapper that never takes the plain track path: what every record got before it."""

    def _capture_track(self, *args: Any) -> None:
        return None


def mapped(record: logging.LogRecord, **options: Any) -> Dict[str, Any]:
    """The message a default (or configured) mapper makes of ``record``.

    Also checks that what the worker sends (``encode``, which may capture and splice a
    plain track without a dict) is the JSON the general path makes of the same record,
    key for key and in the same order.
    """
    mapper = RecordMapper(**options)
    captured = mapper.capture(record)
    assert captured is not None
    message = mapper.build(captured)
    general = GeneralOnlyMapper(**options).capture(record)
    assert general is not None
    try:
        expected = json.loads(encode(GeneralOnlyMapper(**options).build(general)))
    except MessageTooLarge:
        with pytest.raises(MessageTooLarge):
            mapper.encode(captured)
        return message
    no_message, data = mapper.encode(captured)
    assert no_message is None  # callbacks decode what was sent
    sent = json.loads(data)
    assert json.loads(encode(message)).keys() == sent.keys()
    del sent["messageId"], expected["messageId"]  # a new one for each message
    assert list(sent.items()) == list(expected.items())
    return message


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    y: Any


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "BadStr()"


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def nested_lists(depth: int) -> List[Any]:
    value: List[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# Hypothesis strategies for values a caller may log: JSON's own, and any other.


class _Thing:
    """An arbitrary object with a stable str()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __str__(self) -> str:
        return f"thing-{self.n}"


_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)),
)
_hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.uuids(),
    st.dates(),
    st.tuples(st.integers(), st.text(max_size=3)),
)
_odd = st.one_of(
    _hashables,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.datetimes(timezones=_offsets),
    st.times(),
    st.timedeltas(),
    st.sets(st.one_of(st.integers(), st.text(max_size=4), st.floats()), max_size=4),
    st.frozensets(st.integers(), max_size=4),
    st.sampled_from([Color.RED, Level.HIGH, Point(1, 2)]),
    st.builds(Hostile),  # built, not sampled: Hypothesis shows sampled values with repr()
    st.builds(BadStr),
    st.integers(0, 5).map(_Thing),
    st.sampled_from(["\ud800", "a\udfffb", "\x00\u2028", "é" * 3]),
)
any_values = st.recursive(
    _odd,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(_hashables, children, max_size=3),
    ),
    max_leaves=25,
)
_big = st.integers(0, 40_000).map(lambda n: "x" * n)
property_sets = st.dictionaries(
    st.one_of(st.text(max_size=8), _hashables), st.one_of(any_values, _big), max_size=6
)

property_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------- Segment requests and messages

AUTH = {"authorization": "Basic " + base64.b64encode(b"key:").decode()}  # write key "key"


def valid(**fields: Any) -> Dict[str, Any]:
    """A valid track message with ``fields`` changed (None removes a field)."""
    message = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def identity_holds(stats: Dict[str, int]) -> bool:
    """Every message offered is accounted for: enqueued = delivered + failed + dropped +
    filtered (by before_send) + pending."""
    settled = stats["delivered"] + stats["failed"] + stats["dropped"] + stats["filtered"]
    return stats["enqueued"] == settled + stats["pending"]


# --------------------------------------------------------------------------- proxies and TLS

# Every variable that chooses a proxy or a CA bundle: the tests that use them set their own.
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
PROXY_AND_CA_VARIABLES = (
    *_PROXY_VARIABLES,
    *(name.lower() for name in _PROXY_VARIABLES),
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SEGMENT_PROXY",
    "SEGMENT_CA_CERTS",
    "SEGMENT_CLIENT_CERT",
    "SEGMENT_CLIENT_KEY",
)


@pytest.fixture
def clean_network_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA bundle variable of the machine applies (this one sets REQUESTS_CA_BUNDLE)."""
    for name in PROXY_AND_CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class PrivateCA:
    """A CA of its own (trustme) with a server certificate for 127.0.0.1 and localhost, a
    client certificate, and their PEM files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("client@example.test")
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = str(directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.bundle)
        self.client_pem = str(directory / "client.pem")  # the key and the certificate
        self.client.private_key_and_cert_chain_pem.write_to_path(self.client_pem)
        self.client_cert = str(directory / "client.crt")
        self.client.cert_chain_pems[0].write_to_path(self.client_cert)
        self.client_key = str(directory / "client.key")
        self.client.private_key_pem.write_to_path(self.client_key)

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server-side context with the server certificate; optionally mutual TLS."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class ProxyServer:
    """A real HTTP proxy (proxy.py) on 127.0.0.1 in a child process; its access log is read
    to tell which requests went through it."""

    def __init__(self, directory: Path, *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        port_file = directory / "port"
        self.log_path = directory / "proxy.log"
        command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"]
        command += ["--port-file", str(port_file), "--num-acceptors", "1", "--num-workers", "1"]
        command += ["--threaded", "--log-file", str(self.log_path), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxy.py did not start: {self.process.stderr!r}")
            time.sleep(0.02)  # polls for the port file, within the deadline above
        self.port = int(port_file.read_text().split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> bool:
        """Wait until the access log has a line matching ``pattern`` (written when the
        connection it describes closes); False at the timeout."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not found.search(self.log()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # polls the log file, within the deadline above
        return True


# --------------------------------------------------------------------------- real networks


class ScriptedReceiver:
    """A Segment-like receiver on 127.0.0.1 that sees how many requests are in flight.

    Each request answers ``statuses.pop(0)`` while the script lasts, then
    ``default`` (a status, with ``headers``); ``delay`` seconds before each
    answer; while ``held`` is clear every request waits for it. It records the
    most requests it served at once, every message id it accepted (a retry of an
    accepted batch shows as a duplicate) and each request's status.
    """

    def __init__(self, *, delay: float = 0.0, default: int = 200) -> None:
        self.delay = delay
        self.default = default
        self.headers: Dict[str, str] = {}
        self.statuses: List[int] = []
        self.refuse_ids: Set[str] = set()  # a batch holding one of these is answered 400
        self.held = threading.Event()
        self.held.set()
        self.cond = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0
        self.accepted: List[str] = []
        self.batches: List[int] = []  # messages per accepted request
        self.answered: List[int] = []
        self.alone: List[bool] = []  # per answer: whether no other request was in flight
        self.connections = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with receiver.cond:
                    receiver.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.handle(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        with self.cond:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            alone = self.in_flight == 1
            self.cond.notify_all()
        try:
            self.held.wait(30)
            if self.delay:
                time.sleep(self.delay)  # the receiver's round trip, not a wait in a test
            if request.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            ids = [m["messageId"] for m in json.loads(body)["batch"]]
            with self.cond:  # recorded before the answer: the client may look at once
                status = self.statuses.pop(0) if self.statuses else self.default
                if self.refuse_ids.intersection(ids):
                    status = 400
                headers = dict(self.headers)
                self.answered.append(status)
                self.alone.append(alone)
                if status < 300:
                    self.accepted.extend(ids)
                    self.batches.append(len(ids))
                self.cond.notify_all()
            reply = b'{"success":true}' if status < 300 else b'{"error":"scripted"}'
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(reply)))
            request.end_headers()
            request.wfile.write(reply)
        finally:
            with self.cond:
                self.in_flight -= 1
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait (under the receiver's lock) until ``predicate()`` holds."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def stop(self) -> None:
        self.held.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ScriptedReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
