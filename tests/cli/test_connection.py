"""``send`` and ``import`` through a proxy, with a private CA and a client certificate:
the flags, and the variables behind them, against proxy.py and LocalCollector over TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from segmentio_logging.cli import main
from segmentio_logging.testing import LocalCollector

from ..helpers import PrivateCA, ProxyServer, clean_network_environment, closed_url
from .helpers import import_args, jsonl_events, run_cli, write_lines

pytestmark = pytest.mark.usefixtures(clean_network_environment.__name__)

TRACK = ["--type=track", "--userId=u1", "--event=Played"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    server = ProxyServer(tmp_path_factory.mktemp("proxy"))
    yield server
    server.stop()


@pytest.fixture
def https_collector(ca: PrivateCA) -> Iterator[LocalCollector]:
    with LocalCollector(ssl_context=ca.server_context()) as receiver:
        yield receiver


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("command", ["send", "import"])
def test_help_lists_the_flags(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """send --help and import --help show the proxy and TLS flags and their variables."""
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--proxy URL", "--ca-certs PATH", "--client-cert PATH", "--client-key PATH"):
        assert flag in text
    for variable in ("$HTTPS_PROXY", "$NO_PROXY", "$REQUESTS_CA_BUNDLE", "$SSL_CERT_FILE"):
        assert variable in text


def test_send_through_a_proxy_to_an_https_host(
    https_collector: LocalCollector, proxy: ProxyServer, ca: PrivateCA
) -> None:
    """send --proxy --ca-certs: accepted through a CONNECT tunnel."""
    result = run_cli(
        "send",
        "--writeKey=k",
        f"--host={https_collector.url}",
        f"--proxy={proxy.url}",
        f"--ca-certs={ca.bundle}",
        *TRACK,
    )
    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stdout
    assert len(https_collector.messages) == 1
    assert proxy.wait_for_log(rf"CONNECT 127\.0\.0\.1:{port_of(https_collector.url)} ")


def test_send_takes_the_proxy_and_bundle_variables(
    https_collector: LocalCollector,
    proxy: ProxyServer,
    ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the flags, HTTPS_PROXY and REQUESTS_CA_BUNDLE apply, as they do to the options."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca.bundle)
    result = run_cli("send", "--writeKey=k", f"--host={https_collector.url}", *TRACK)
    assert result.returncode == 0, result.stderr
    assert proxy.wait_for_log(rf"CONNECT 127\.0\.0\.1:{port_of(https_collector.url)} ")


def test_an_empty_proxy_flag_overrides_the_variable(
    collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--proxy='' sends direct although HTTP_PROXY names a proxy that is down."""
    monkeypatch.setenv("HTTP_PROXY", closed_url())
    status = main(["send", "--writeKey=k", f"--host={collector.url}", "--proxy=", *TRACK])
    assert status == 0
    assert len(collector.messages) == 1


def test_send_to_an_untrusted_host_fails_and_says_why(
    https_collector: LocalCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --ca-certs a private CA's certificate fails at once: exit 1, the reason."""
    status = main(["send", "--writeKey=k", f"--host={https_collector.url}", "--retries=5", *TRACK])
    assert status == 1
    error = capsys.readouterr().err
    assert "certificate verify failed" in error and "set ca_certs" in error
    assert https_collector.requests == []


def test_send_with_a_client_certificate(ca: PrivateCA) -> None:
    """--client-cert and --client-key pass a server that requires a client certificate."""
    context = ca.server_context(require_client_cert=True)
    with LocalCollector(ssl_context=context) as receiver:
        flags = [f"--ca-certs={ca.bundle}", f"--client-cert={ca.client_cert}"]
        flags.append(f"--client-key={ca.client_key}")
        status = main(["send", "--writeKey=k", f"--host={receiver.url}", *flags, *TRACK])
        assert status == 0
        assert len(receiver.messages) == 1


def test_a_bundle_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ca-certs naming no file: exit 2 and the flag's name, before anything is sent."""
    missing = tmp_path / "missing.pem"
    host = "--host=https://127.0.0.1:9"
    status = main(["send", "--writeKey=k", host, f"--ca-certs={missing}", *TRACK])
    assert status == 2
    assert "--ca-certs: cannot use the CA bundle" in capsys.readouterr().err


def test_a_proxy_flag_that_cannot_be_used_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--proxy=socks5://...: exit 2, saying why."""
    status = main(["send", "--writeKey=k", "--proxy=socks5://127.0.0.1:1", *TRACK])
    assert status == 2
    assert "--proxy: SOCKS proxies are not supported" in capsys.readouterr().err


def test_import_through_a_proxy_with_a_private_ca(
    tmp_path: Path, https_collector: LocalCollector, proxy: ProxyServer, ca: PrivateCA
) -> None:
    """import --proxy --ca-certs delivers every line through the tunnel."""
    path = write_lines(tmp_path / "events.jsonl", jsonl_events(5))
    flags = [f"--proxy={proxy.url}", f"--ca-certs={ca.bundle}"]
    assert main(import_args(path, https_collector, *flags)) == 0
    assert len(https_collector.messages) == 5
    assert proxy.wait_for_log(rf"CONNECT 127\.0\.0\.1:{port_of(https_collector.url)} ")
