"""The route to the host: proxies (option, environment, NO_PROXY, auth), private CAs, mutual
TLS, refusals that are not retried, and the clear-text warning. Real servers on 127.0.0.1:
proxy.py as the proxy, LocalCollector over TLS with trustme certificates."""

from __future__ import annotations

import itertools
import logging
import logging.config
import re
import ssl
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import segmentio_logging
from segmentio_logging import ClearTextWarning, Client, DeliveryError, SegmentHandler
from segmentio_logging._connection import (
    CertificateRefused,
    ProxyRefused,
    is_loopback,
    refusal,
    route_for,
)
from segmentio_logging._options import resolve_options
from segmentio_logging._transport import Transport, transport_for
from segmentio_logging.testing import LocalCollector

from .helpers import PrivateCA, ProxyServer, Recorder, clean_network_environment, closed_url

PASSWORD = "s3cr:t@pass"  # ':' and '@' percent-encoded in the URL
QUOTED = "s3cr%3At%40pass"
UNIQUE = itertools.count(20000)  # a value no other test set: its warning is yet to be given

pytestmark = pytest.mark.usefixtures(clean_network_environment.__name__)
MakeClient = Callable[..., Client]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """A second CA, which signed none of the servers."""
    return PrivateCA(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    server = ProxyServer(tmp_path_factory.mktemp("proxy"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """A proxy that wants Basic auth: user ``user``, password :data:`PASSWORD`."""
    server = ProxyServer(tmp_path_factory.mktemp("auth-proxy"), "--basic-auth", f"user:{PASSWORD}")
    yield server
    server.stop()


@pytest.fixture
def https_collector(ca: PrivateCA) -> Iterator[LocalCollector]:
    with LocalCollector(ssl_context=ca.server_context()) as receiver:
        yield receiver


@pytest.fixture
def mtls_collector(ca: PrivateCA) -> Iterator[LocalCollector]:
    """An HTTPS collector that requires a client certificate signed by ``ca``."""
    with LocalCollector(ssl_context=ca.server_context(require_client_cert=True)) as receiver:
        yield receiver


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    made: List[Client] = []

    def make(host: str, **options: Any) -> Client:
        options.setdefault("flush_interval", 0.05)
        client = Client("test-key", host=host, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown()


def deliver_one(client: Client, event: str = "Played") -> None:
    client.track(None, "u1", event)
    assert client.flush(timeout=30) is True


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def only_failure(recorder: Recorder) -> DeliveryError:
    assert recorder.event.wait(30)
    assert len(recorder.calls) == 1
    error = recorder.calls[0][1]
    assert isinstance(error, DeliveryError)
    return error


class TestProxyOption:
    def test_an_http_host_goes_through_the_proxy(
        self, make_client: MakeClient, collector: LocalCollector, proxy: ProxyServer
    ) -> None:
        """proxy=...: a plain-http request is forwarded by the proxy, which the receiver sees."""
        client = make_client(collector.url, proxy=proxy.url)
        deliver_one(client)
        assert collector.messages[0]["event"] == "Played"
        assert "proxy.py" in collector.requests[0].headers["via"]
        client.shutdown()
        assert proxy.wait_for_log(rf"POST 127\.0\.0\.1:{port_of(collector.url)}/v1/batch - 200")

    def test_an_https_host_goes_through_a_connect_tunnel(
        self,
        make_client: MakeClient,
        https_collector: LocalCollector,
        proxy: ProxyServer,
        ca: PrivateCA,
    ) -> None:
        """An https host is reached by CONNECT through the proxy, TLS end to end inside it."""
        client = make_client(https_collector.url, proxy=proxy.url, ca_certs=ca.bundle)
        deliver_one(client)
        assert [m["event"] for m in https_collector.messages] == ["Played"]
        assert "via" not in https_collector.requests[0].headers  # the proxy saw no HTTP
        client.shutdown()
        assert proxy.wait_for_log(rf"CONNECT 127\.0\.0\.1:{port_of(https_collector.url)} ")

    def test_the_option_wins_over_the_environment(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        proxy: ProxyServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With proxy=... the proxy variables (here one where nothing listens) are not read."""
        monkeypatch.setenv("HTTP_PROXY", closed_url())
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client = make_client(collector.url, proxy=proxy.url)
        deliver_one(client)
        assert "proxy.py" in collector.requests[0].headers["via"]

    def test_an_empty_option_turns_the_environment_proxy_off(
        self, make_client: MakeClient, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """proxy="": a direct connection, although HTTP_PROXY names a proxy that is down."""
        monkeypatch.setenv("HTTP_PROXY", closed_url())
        client = make_client(collector.url, proxy="")
        deliver_one(client)
        assert len(collector.messages) == 1
        assert "via" not in collector.requests[0].headers

    def test_the_segment_proxy_variable_sets_the_option(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        proxy: ProxyServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """SEGMENT_PROXY is the option's own variable, and it beats HTTP_PROXY."""
        monkeypatch.setenv("SEGMENT_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", closed_url())
        client = make_client(collector.url)
        deliver_one(client)
        assert "proxy.py" in collector.requests[0].headers["via"]


class TestProxyEnvironment:
    @pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
    def test_an_https_host_takes_the_https_or_all_proxy_variable(
        self,
        make_client: MakeClient,
        https_collector: LocalCollector,
        proxy: ProxyServer,
        ca: PrivateCA,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        """HTTPS_PROXY (either case), else ALL_PROXY, routes an https host through CONNECT."""
        monkeypatch.setenv(variable, proxy.url)
        client = make_client(https_collector.url, ca_certs=ca.bundle)
        assert client._pipeline.transport.route.proxy_source == variable  # type: ignore[attr-defined]
        deliver_one(client)
        client.shutdown()
        assert proxy.wait_for_log(rf"CONNECT 127\.0\.0\.1:{port_of(https_collector.url)} ")

    def test_an_http_host_takes_http_proxy_not_https_proxy(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        proxy: ProxyServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """HTTP_PROXY is the proxy of an http:// host; HTTPS_PROXY is not read for it."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", closed_url())
        client = make_client(collector.url)
        deliver_one(client)
        assert "proxy.py" in collector.requests[0].headers["via"]

    @pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*", "NO_PROXY"])
    def test_no_proxy_sends_the_host_direct(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        monkeypatch: pytest.MonkeyPatch,
        no_proxy: str,
    ) -> None:
        """A host NO_PROXY names (with its port, in a list, or *) bypasses the proxy variable."""
        if no_proxy == "NO_PROXY":  # host:port, in the lower-case variable
            monkeypatch.setenv("no_proxy", f"127.0.0.1:{port_of(collector.url)}")
        else:
            monkeypatch.setenv("NO_PROXY", no_proxy)
        monkeypatch.setenv("HTTP_PROXY", closed_url())  # through it nothing could arrive
        client = make_client(collector.url)
        assert client._pipeline.transport.route.proxy is None  # type: ignore[attr-defined]
        deliver_one(client)
        assert len(collector.messages) == 1

    def test_a_no_proxy_network_sends_an_ip_host_direct(
        self, make_client: MakeClient, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """NO_PROXY=10.0.0.0/8,127.0.0.0/8: 127.0.0.1 is in a network listed, so direct."""
        monkeypatch.setenv("NO_PROXY", "10.0.0.0/8, 127.0.0.0/8,localhost")
        monkeypatch.setenv("HTTP_PROXY", closed_url())  # through it nothing could arrive
        client = make_client(collector.url)
        assert client._pipeline.transport.route.proxy_source == "NO_PROXY"  # type: ignore[attr-defined]
        deliver_one(client)
        assert len(collector.messages) == 1

    @pytest.mark.parametrize(
        ("host", "no_proxy", "direct"),
        [
            ("http://10.1.2.3:8080", "10.0.0.0/8,localhost", True),
            ("http://10.1.2.3:8080", "10.1.2.0/255.255.255.0", True),
            ("http://10.1.2.3:8080", "10.1.2.3/32", True),
            ("http://11.1.2.3:8080", "10.0.0.0/8", False),
            ("http://[fd00::5]:8080", "fd00::/8", True),
            ("http://[fd00::5]:8080", "[fd00::]/8", True),
            ("http://[fe80::5]:8080", "fd00::/8", False),
            ("http://10.1.2.3:8080", "::/0", False),  # an IPv4 host is in no IPv6 network
            ("http://ten.example:8080", "10.0.0.0/8", False),  # names are not resolved
            ("http://10.1.2.3:8080", "10.0.0.0/99,example.test", False),
            ("http://[::1]:8080", "::1", True),  # as before: proxy_bypass_environment's own
            ("http://[::1]:8080", "[::1]", False),
        ],
    )
    def test_which_ip_hosts_a_no_proxy_network_sends_direct(
        self, monkeypatch: pytest.MonkeyPatch, host: str, no_proxy: str, direct: bool
    ) -> None:
        """CIDR entries (IPv4 and IPv6) match IP hosts inside them, as requests matches them."""
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert (route_for(host).proxy is None) is direct

    def test_no_proxy_for_another_host_keeps_the_proxy(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        proxy: ProxyServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """NO_PROXY naming other hosts leaves this one on the proxy."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.test,.internal")
        client = make_client(collector.url)
        deliver_one(client)
        assert "proxy.py" in collector.requests[0].headers["via"]

    @pytest.mark.parametrize(
        ("variable", "value", "why"),
        [
            ("ALL_PROXY", "socks5h://127.0.0.1:{n}", "SOCKS proxies are not supported"),
            ("HTTP_PROXY", "https://127.0.0.1:{n}", "https:// proxies"),
            ("HTTP_PROXY", "garbage with spaces {n}", "host name or IP address"),
            ("http_proxy", "http://proxy_-.example:{n}", "host name or IP address"),
            ("HTTP_PROXY", "http://alice:s3cr/et@127.0.0.1:{n}", "not a valid URL"),
        ],
    )
    def test_a_proxy_variable_that_cannot_be_used_is_warned_about_and_skipped(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        variable: str,
        value: str,
        why: str,
    ) -> None:
        """The machine's variable, unusable: one warning naming it, then a direct connection."""
        monkeypatch.setenv(variable, value.format(n=next(UNIQUE)))
        client = make_client(collector.url)
        make_client(collector.url)  # the same variable again: no second warning
        err = capsys.readouterr().err
        assert client._pipeline.transport.route.proxy is None  # type: ignore[attr-defined]
        assert err.count("segmentio_logging:") == 1, err
        assert f"proxy (from {variable})" in err and why in err
        assert f"{variable} is ignored, 127.0.0.1 is reached directly" in err
        assert "s3cr" not in err and "et@" not in err
        deliver_one(client)
        assert "via" not in collector.requests[0].headers

    def test_a_segment_handler_starts_under_a_socks_variable(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """dictConfig builds the handler although ALL_PROXY names a SOCKS proxy."""
        monkeypatch.setenv("ALL_PROXY", f"socks5h://127.0.0.1:{next(UNIQUE)}")
        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {
                    "segment": {
                        "class": "segmentio_logging.SegmentHandler",
                        "write_key": "k",
                        "host": closed_url(),
                        "send": False,
                    }
                },
                "loggers": {"tests.socks": {"handlers": ["segment"]}},
            }
        )
        handler = logging.getLogger("tests.socks").handlers[0]
        logging.getLogger("tests.socks").removeHandler(handler)
        handler.close()
        assert "ALL_PROXY is ignored" in capsys.readouterr().err

    @pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "garbage with spaces"])
    @pytest.mark.parametrize("given", ["option", "SEGMENT_PROXY"])
    def test_a_proxy_option_that_cannot_be_used_is_an_error(
        self, monkeypatch: pytest.MonkeyPatch, value: str, given: str
    ) -> None:
        """proxy= and SEGMENT_PROXY are Segment's own settings: a ValueError naming them."""
        options: Dict[str, Any] = {}
        if given == "option":
            options["proxy"] = value
        else:
            monkeypatch.setenv("SEGMENT_PROXY", value)
        with pytest.raises(ValueError, match=r"^proxy\b.*(SOCKS|host name or IP)") as raised:
            Client("k", host="https://127.0.0.1:9", **options)
        assert (given == "SEGMENT_PROXY") == ("SEGMENT_PROXY" in str(raised.value))


class TestProxyAuth:
    @pytest.mark.parametrize("scheme", ["http", "https"])
    def test_credentials_in_the_url_are_accepted(
        self,
        make_client: MakeClient,
        collector: LocalCollector,
        https_collector: LocalCollector,
        auth_proxy: ProxyServer,
        ca: PrivateCA,
        scheme: str,
    ) -> None:
        """http://user:password@proxy: Basic proxy auth, for forwarded and tunnelled requests."""
        target = collector if scheme == "http" else https_collector
        url = f"http://user:{QUOTED}@127.0.0.1:{auth_proxy.port}"
        client = make_client(target.url, proxy=url, ca_certs=ca.bundle)
        deliver_one(client)
        assert len(target.messages) == 1

    def test_a_refused_tunnel_fails_at_once_without_retries(
        self,
        make_client: MakeClient,
        https_collector: LocalCollector,
        auth_proxy: ProxyServer,
        ca: PrivateCA,
    ) -> None:
        """A 407 to CONNECT (a wrong password) is a failure that says so, not retried."""
        failures = Recorder()
        url = f"http://user:wrong@127.0.0.1:{auth_proxy.port}"
        client = make_client(
            https_collector.url, proxy=url, ca_certs=ca.bundle, on_failure=failures
        )
        deliver_one(client)
        error = only_failure(failures)
        assert "407 Proxy Authentication Required" in error.reason
        assert "check the user and password" in error.reason
        assert error.attempts == 1 and error.status is None
        assert client.stats()["failed"] == 1 and client.stats()["delivered"] == 0
        assert https_collector.requests == []

    def test_no_credentials_for_a_proxy_that_wants_them(
        self, https_collector: LocalCollector, auth_proxy: ProxyServer, ca: PrivateCA
    ) -> None:
        """Without user:password the 407 says how to give them."""
        route = route_for(https_collector.url, proxy=auth_proxy.url, ca_certs=ca.bundle)
        outcome = Transport(host=https_collector.url, write_key="k", route=route).deliver([b"{}"])
        error = outcome[0][2]
        assert isinstance(error, DeliveryError)
        assert "it wants a user and password" in error.reason
        assert error.attempts == 1

    def test_a_refused_forwarded_request_is_a_407_not_retried(
        self, make_client: MakeClient, collector: LocalCollector, auth_proxy: ProxyServer
    ) -> None:
        """For a plain-http host the proxy answers 407 itself: rejected, not retried."""
        failures = Recorder()
        url = f"http://user:wrong@127.0.0.1:{auth_proxy.port}"
        client = make_client(collector.url, proxy=url, on_failure=failures)
        deliver_one(client)
        error = only_failure(failures)
        assert error.status == 407 and error.attempts == 1
        assert collector.requests == []

    def test_the_password_never_shows(
        self, collector: LocalCollector, auth_proxy: ProxyServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The proxy password is in no repr (options, route, transport, client) or failure."""
        failures = Recorder()
        url = f"http://user:{QUOTED}wrong@127.0.0.1:{auth_proxy.port}"
        client = Client("k", host="https://127.0.0.1:9", proxy=url, on_failure=failures)
        options = resolve_options({"write_key": "k", "proxy": url})
        transport = transport_for(options)
        texts = [repr(options), repr(transport.route), repr(transport), repr(client)]
        client.track(None, "u1", "e")
        client.flush(timeout=30)
        error = only_failure(failures)
        texts += [error.reason, repr(error), error.body, capsys.readouterr().err]
        client.shutdown()
        for text in texts:
            assert QUOTED not in text and PASSWORD not in text and "wrong" not in text
        assert "user:***@" in repr(options)
        assert options.proxy == url  # the value itself is whole


class TestPrivateCA:
    def test_ca_certs_trusts_a_private_ca(
        self, make_client: MakeClient, https_collector: LocalCollector, ca: PrivateCA
    ) -> None:
        """ca_certs=bundle: a server whose certificate that CA signed is trusted."""
        client = make_client(https_collector.url, ca_certs=ca.bundle)
        deliver_one(client)
        assert len(https_collector.messages) == 1

    @pytest.mark.parametrize(
        "variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SEGMENT_CA_CERTS"]
    )
    def test_a_bundle_variable_is_read_when_the_option_is_unset(
        self,
        make_client: MakeClient,
        https_collector: LocalCollector,
        ca: PrivateCA,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        """REQUESTS_CA_BUNDLE, SSL_CERT_FILE (and SEGMENT_CA_CERTS) each name the bundle."""
        monkeypatch.setenv(variable, ca.bundle)
        client = make_client(https_collector.url)
        deliver_one(client)
        assert len(https_collector.messages) == 1

    @pytest.mark.parametrize(
        ("settings", "delivered"),
        [
            ({"REQUESTS_CA_BUNDLE": "right", "SSL_CERT_FILE": "wrong"}, True),
            ({"REQUESTS_CA_BUNDLE": "wrong", "SSL_CERT_FILE": "right"}, False),
            ({"option": "right", "REQUESTS_CA_BUNDLE": "wrong"}, True),
            ({"option": "wrong", "REQUESTS_CA_BUNDLE": "right"}, False),
        ],
    )
    def test_the_order_option_requests_ca_bundle_ssl_cert_file(
        self,
        make_client: MakeClient,
        https_collector: LocalCollector,
        ca: PrivateCA,
        other_ca: PrivateCA,
        monkeypatch: pytest.MonkeyPatch,
        settings: Dict[str, str],
        delivered: bool,
    ) -> None:
        """ca_certs beats REQUESTS_CA_BUNDLE, which beats SSL_CERT_FILE."""
        bundles = {"right": ca.bundle, "wrong": other_ca.bundle}
        options: Dict[str, Any] = {"on_failure": Recorder()}
        for name, which in settings.items():
            if name == "option":
                options["ca_certs"] = bundles[which]
            else:
                monkeypatch.setenv(name, bundles[which])
        client = make_client(https_collector.url, **options)
        deliver_one(client)
        assert client.stats()["delivered"] == (1 if delivered else 0)

    def test_an_untrusted_certificate_fails_fast_and_says_why(
        self, make_client: MakeClient, https_collector: LocalCollector
    ) -> None:
        """A certificate no trusted CA signed: failed at once (no retry), counted, told why."""
        failures = Recorder()
        client = make_client(https_collector.url, on_failure=failures, max_retries=10)
        deliver_one(client)
        error = only_failure(failures)
        assert error.reason.startswith("1 message not delivered")
        assert "certificate verify failed" in error.reason
        assert "the system's CA store" in error.reason
        assert "set ca_certs" in error.reason
        assert error.attempts == 1 and error.status is None
        stats = client.stats()
        assert stats["failed"] == 1 and stats["delivered"] == 0 and stats["retries"] == 0
        assert https_collector.requests == []

    def test_a_certificate_for_another_name_fails_fast(
        self, make_client: MakeClient, ca: PrivateCA
    ) -> None:
        """A trusted certificate for another host name: a refusal that names the mismatch."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.ca.issue_cert("collector.example.test").configure_cert(context)
        failures = Recorder()
        with LocalCollector(ssl_context=context) as receiver:
            client = make_client(receiver.url, ca_certs=ca.bundle, on_failure=failures)
            deliver_one(client)
        error = only_failure(failures)
        assert "not for that name" in error.reason and error.attempts == 1

    def test_a_missing_bundle_is_an_error_at_construction(self, tmp_path: Path) -> None:
        """ca_certs naming no file raises ValueError naming the option, before any request."""
        with pytest.raises(ValueError, match=r"^ca_certs: cannot use the CA bundle .*missing"):
            SegmentHandler("k", host="https://127.0.0.1:9", ca_certs=str(tmp_path / "missing"))

    def test_a_missing_bundle_from_the_environment_names_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """REQUESTS_CA_BUNDLE naming no file: the error names the variable."""
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
        with pytest.raises(ValueError, match=r"^ca_certs \(from REQUESTS_CA_BUNDLE\)"):
            Client("k", host="https://127.0.0.1:9")

    def test_a_file_without_certificates_is_an_error(self, tmp_path: Path) -> None:
        """A bundle that holds no PEM certificate is refused at construction."""
        path = tmp_path / "empty.pem"
        path.write_text("not a certificate\n")
        with pytest.raises(ValueError, match=r"^ca_certs: .*empty\.pem"):
            Client("k", host="https://127.0.0.1:9", ca_certs=str(path))

    def test_the_variables_are_not_read_for_an_http_host(
        self, make_client: MakeClient, collector: LocalCollector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An http:// host uses no TLS: a wrong REQUESTS_CA_BUNDLE does not matter to it."""
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
        deliver_one(make_client(collector.url))
        assert len(collector.messages) == 1


class TestMutualTLS:
    @pytest.mark.parametrize("files", ["one file", "two files"])
    def test_a_client_certificate_is_accepted(
        self,
        make_client: MakeClient,
        mtls_collector: LocalCollector,
        ca: PrivateCA,
        files: str,
    ) -> None:
        """client_cert (with its key, or client_key apart) passes a server that requires one."""
        given = (
            {"client_cert": ca.client_pem}
            if files == "one file"
            else {"client_cert": ca.client_cert, "client_key": ca.client_key}
        )
        client = make_client(mtls_collector.url, ca_certs=ca.bundle, **given)
        deliver_one(client)
        assert len(mtls_collector.messages) == 1

    def test_without_a_client_certificate_it_fails_fast(
        self, make_client: MakeClient, mtls_collector: LocalCollector, ca: PrivateCA
    ) -> None:
        """No client certificate for a server that wants one: a clear, permanent failure."""
        failures = Recorder()
        client = make_client(mtls_collector.url, ca_certs=ca.bundle, on_failure=failures)
        deliver_one(client)
        error = only_failure(failures)
        assert "set client_cert and client_key" in error.reason
        assert error.attempts == 1
        assert client.stats()["failed"] == 1
        assert mtls_collector.requests == []

    def test_a_certificate_from_an_unknown_ca_fails_fast(
        self,
        make_client: MakeClient,
        mtls_collector: LocalCollector,
        ca: PrivateCA,
        other_ca: PrivateCA,
    ) -> None:
        """A client certificate the server does not trust: refused, not retried."""
        failures = Recorder()
        client = make_client(
            mtls_collector.url,
            ca_certs=ca.bundle,
            client_cert=other_ca.client_pem,
            on_failure=failures,
        )
        deliver_one(client)
        error = only_failure(failures)
        assert f"refused the client certificate {other_ca.client_pem}" in error.reason
        assert error.attempts == 1

    def test_unusable_client_files_are_errors_at_construction(
        self, ca: PrivateCA, other_ca: PrivateCA, tmp_path: Path
    ) -> None:
        """A missing certificate, a key of another certificate, a key alone: ValueErrors."""
        host = "https://127.0.0.1:9"
        with pytest.raises(ValueError, match=r"^client_cert: cannot load .*missing"):
            Client("k", host=host, client_cert=str(tmp_path / "missing.pem"))
        with pytest.raises(ValueError, match=r"^client_cert: cannot load"):
            Client("k", host=host, client_cert=ca.client_cert, client_key=other_ca.client_key)
        with pytest.raises(ValueError, match=r"^client_key needs client_cert"):
            Client("k", host=host, client_key=ca.client_key)


class TestClearText:
    @pytest.mark.parametrize("host", ["http://example.test", "http://10.1.2.3:8080"])
    def test_a_plain_http_host_beyond_loopback_is_warned_about(self, host: str) -> None:
        """One ClearTextWarning at construction; nothing is sent (nothing was logged)."""
        with pytest.warns(ClearTextWarning, match="clear text") as caught:
            handler = SegmentHandler("k", host=host)
        handler.close()
        assert len(caught) == 1
        assert host in str(caught[0].message)

    def test_the_warning_class_is_public(self) -> None:
        """ClearTextWarning comes from the package itself: filtering by it silences the warning."""
        assert "ClearTextWarning" in segmentio_logging.__all__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", category=segmentio_logging.ClearTextWarning)
            SegmentHandler("k", host="http://example.test").close()

    @pytest.mark.parametrize(
        "host",
        [
            "http://127.0.0.1:9",
            "http://127.3.2.1:9",
            "http://localhost:9",
            "http://[::1]:9",
            "https://example.test",
        ],
    )
    def test_loopback_and_https_hosts_are_silent(self, host: str) -> None:
        """Loopback (127.0.0.0/8, ::1, localhost) and https:// hosts warn about nothing."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SegmentHandler("k", host=host).close()

    def test_nothing_is_warned_without_sending(self) -> None:
        """send=False sends no write key anywhere: no warning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SegmentHandler(host="http://example.test", send=False).close()

    @pytest.mark.parametrize(
        ("name", "loopback"),
        [
            ("127.0.0.1", True),
            ("127.255.0.9", True),
            ("::1", True),
            ("[::1]", True),
            ("::ffff:127.0.0.1", True),
            ("LOCALHOST", True),
            ("app.localhost", True),
            ("128.0.0.1", False),
            ("10.0.0.1", False),
            ("localhost.example.test", False),
            ("example.test", False),
        ],
    )
    def test_what_counts_as_loopback(self, name: str, loopback: bool) -> None:
        """127.0.0.0/8, ::1 (also IPv4-mapped) and localhost names are loopback."""
        assert is_loopback(name) is loopback


class TestRefusals:
    def test_a_network_error_is_no_refusal(self) -> None:
        """A refused connection is worth retrying: refusal() says None."""
        route = route_for(closed_url())
        assert refusal(ConnectionRefusedError(111, "Connection refused"), route) is None

    def test_the_refusal_is_found_under_urllib3s_wrapping(self) -> None:
        """A certificate error inside urllib3's SSLError inside MaxRetryError is found."""
        from urllib3.exceptions import MaxRetryError, SSLError

        cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
        cause.verify_message = "self-signed certificate"  # type: ignore[attr-defined]
        wrapped = MaxRetryError(None, "/v1/batch", SSLError(cause))  # type: ignore[arg-type]
        found = refusal(wrapped, route_for("https://127.0.0.1:9"))
        assert isinstance(found, CertificateRefused)
        assert re.match(r"certificate verify failed: self-signed certificate", str(found))

    @pytest.mark.parametrize(("status", "refused"), [(407, True), (403, True), (502, False)])
    def test_a_proxy_refusal_by_status(self, status: int, refused: bool) -> None:
        """A proxy's 4xx to CONNECT is a refusal; its 5xx (the host unreachable) is retried."""
        error = OSError(f"Tunnel connection failed: {status} Whatever")
        found = refusal(error, route_for("https://127.0.0.1:9", proxy="http://127.0.0.1:8"))
        assert isinstance(found, ProxyRefused) is refused
