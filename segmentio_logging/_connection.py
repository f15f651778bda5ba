"""The urllib3 pool for a host: proxy, TLS, environment.

Everything is decided once, when the transport is built: which proxy (the
``proxy`` option, else ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` unless
``NO_PROXY`` names the host, read as ``urllib.request`` reads them, or lists a
network the host's IP address is in; a variable that cannot be used is reported
and skipped, where the option raises), which CAs
to trust (``ca_certs``, else ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``,
else the system store) and which client certificate to show. Files are read
then, so that a missing one is an error at construction; a later pool (after a
fork, after ``close``) is made from that decision without I/O.

A plain ``http://`` host that is not loopback is warned about once, when the
transport is built: the write key crosses the network in clear text.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import ssl
import threading
import urllib.request
import warnings
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Set, Tuple
from urllib.parse import SplitResult, unquote, urlsplit
from urllib.request import getproxies_environment

import urllib3
from urllib3.util.ssl_ import create_urllib3_context

from . import _report
from ._options import Options, ProxyURL, check_proxy, mask_password

# NO_PROXY as urllib.request reads it (a public function that typeshed does not list).
proxy_bypass_environment: Callable[[str, Mapping[str, str]], bool] = (
    urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
)

# Where a CA bundle comes from when ca_certs is unset, in order (requests', then OpenSSL's).
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
SYSTEM_STORE = "the system's CA store"

# Alerts a server sends about the client's certificate (or its absence): no retry mends them.
_CLIENT_CERT_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",  # TLS 1.2's answer to a missing client certificate
    }
)
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
# http.client's words when a proxy answers CONNECT with anything but 200.
_TUNNEL_FAILED = re.compile(r"Tunnel connection failed: (\d{3})\b ?(.*)")


class ClearTextWarning(UserWarning):
    """A plain ``http://`` host that is not loopback: the write key travels unencrypted."""


class Refusal(Exception):
    """A connection that retrying cannot mend; the request is not tried again."""


class CertificateRefused(Refusal):
    """TLS failed on a certificate: the server's did not verify, or the server refused ours."""


class ProxyRefused(Refusal):
    """The proxy refused to open a tunnel to the host (``407``: its credentials)."""


class Route:
    """How requests reach one host: directly or through a proxy, with which TLS trust.

    ``proxy`` is None for a direct connection; ``proxy_source`` says where it
    (or the decision to go direct) came from; ``trust`` which CAs verify the
    host; ``ssl_context`` is None when urllib3's own default (the system store,
    loaded per connection) is what the settings ask for.
    """

    __slots__ = (
        "_proxy_headers",
        "client_cert",
        "proxy",
        "proxy_source",
        "ssl_context",
        "trust",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        proxy: Optional[ProxyURL] = None,
        proxy_source: str = "",
        ssl_context: Optional[ssl.SSLContext] = None,
        trust: str = SYSTEM_STORE,
        client_cert: Optional[str] = None,
    ) -> None:
        self.url = url
        self.proxy = proxy
        self.proxy_source = proxy_source
        self.ssl_context = ssl_context
        self.trust = trust
        self.client_cert = client_cert
        self._proxy_headers = _proxy_headers(proxy) if proxy else {}

    def __repr__(self) -> str:
        via = f"proxy={self.proxy!r} ({self.proxy_source})" if self.proxy else "direct"
        return f"Route({self.url!r}, {via}, trust={self.trust!r})"

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https://")

    def new_pool(self, maxsize: int) -> urllib3.HTTPConnectionPool:
        """A keep-alive pool of at most ``maxsize`` connections to the host, as routed."""
        settings: Dict[str, Any] = {"maxsize": maxsize, "block": False, "retries": False}
        if self.https and self.ssl_context is not None:
            settings["ssl_context"] = self.ssl_context
        if self.proxy is None:
            return urllib3.connection_from_url(self.url, **settings)
        if not self.https:
            return _ForwardingPool(self.proxy, self.url, self._proxy_headers, **settings)
        # HTTPS through the proxy: a CONNECT tunnel, TLS with the host inside it. The manager
        # only builds the one pool; the transport holds the pool itself.
        manager = urllib3.ProxyManager(
            _without_credentials(self.proxy), num_pools=1, proxy_headers=self._proxy_headers
        )
        return manager.connection_from_url(self.url, pool_kwargs=settings)


class _ForwardingPool(urllib3.HTTPConnectionPool):
    """A pool to an HTTP proxy that forwards plain-``http://`` requests to one host.

    The transport asks for a path; a proxy wants the absolute URL, and its credentials.
    """

    def __init__(
        self, proxy: ProxyURL, origin: str, proxy_headers: Mapping[str, str], **settings: Any
    ) -> None:
        parts = urlsplit(proxy)
        super().__init__(parts.hostname or "", parts.port or 80, **settings)
        parsed = urlsplit(origin)
        self._origin = f"{parsed.scheme}://{parsed.netloc}"
        self._proxy_headers = dict(proxy_headers)

    def urlopen(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        *args: Any,
        **settings: Any,
    ) -> Any:
        merged = {**(headers or {}), **self._proxy_headers}
        settings["assert_same_host"] = False
        return super().urlopen(method, self._origin + url, body, merged, *args, **settings)


def _without_credentials(proxy: ProxyURL) -> str:
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _proxy_headers(proxy: ProxyURL) -> Dict[str, str]:
    """``Proxy-Authorization`` (Basic) for a proxy URL with ``user:password@``."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}


# --------------------------------------------------------------------------- choosing


def route_for(
    url: str,
    *,
    proxy: Optional[str] = None,
    ca_certs: Optional[str] = None,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
) -> Route:
    """The route to ``url`` that these settings (None: unset) and the environment describe.

    Raises ``ValueError``, naming the option or variable, for a proxy URL that
    cannot be used or a certificate file that cannot be read.
    """
    parts = urlsplit(url)
    chosen, source = choose_proxy(parts, proxy)
    context, trust = tls_context(parts.scheme.lower() == "https", ca_certs, client_cert, client_key)
    return Route(
        url,
        proxy=chosen,
        proxy_source=source,
        ssl_context=context,
        trust=trust,
        client_cert=client_cert,
    )


def route_from_options(options: Options) -> Route:
    """The route to ``options.host``; warns once about a clear-text host when sending."""
    route = route_for(
        options.host,
        proxy=options.proxy,
        ca_certs=options.ca_certs,
        client_cert=options.client_cert,
        client_key=options.client_key,
    )
    if options.send:
        warn_if_clear_text(options.host)
    return route


def choose_proxy(parts: SplitResult, proxy: Optional[str]) -> Tuple[Optional[ProxyURL], str]:
    """The proxy for the host of ``parts``, and where that choice came from.

    The option wins outright (``""``: none); else the scheme's variable, then
    ``ALL_PROXY``, unless ``NO_PROXY`` names the host.
    """
    if proxy is not None:
        return (ProxyURL(proxy) if proxy else None), "the proxy option"
    found = getproxies_environment()
    scheme = parts.scheme.lower()
    key = scheme if found.get(scheme) else "all"
    value = found.get(key)
    if not value:
        return None, "no proxy variable"
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if proxy_bypass_environment(netloc, found) or in_a_network(host, found.get("no", "")):
        return None, "NO_PROXY"
    variable = next(
        (name for name in (f"{key}_proxy", f"{key.upper()}_PROXY") if os.environ.get(name)),
        f"{key.upper()}_PROXY",
    )
    try:
        return check_proxy(f"proxy (from {variable})", value) or None, variable
    except ValueError as exc:
        # The variable is the machine's (a SOCKS proxy for other tools, a typo), not a Segment
        # option: the application still starts, and says once what it ignored.
        _report.warn(
            f"ignored proxy variable {variable}={value}",
            f"{variable} is ignored, {host} is reached directly: {exc} (the proxy option or "
            "SEGMENT_PROXY sets a proxy for Segment alone)",
            interval=math.inf,
        )
        return None, f"{variable} ignored"


def in_a_network(host: str, no_proxy: str) -> bool:
    """Whether ``host`` is an IP address inside a CIDR entry of ``no_proxy`` (``10.0.0.0/8``,
    ``fd00::/8``): what ``requests`` matches besides ``proxy_bypass_environment``'s names."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    for entry in no_proxy.replace(" ", "").replace("[", "").replace("]", "").split(","):
        try:
            network = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
        except ValueError:
            continue  # not a CIDR: a name, matched (or not) by proxy_bypass_environment
        if network is not None and address in network:
            return True
    return False


def tls_context(
    https: bool,
    ca_certs: Optional[str],
    client_cert: Optional[str],
    client_key: Optional[str],
) -> Tuple[Optional[ssl.SSLContext], str]:
    """The TLS context the settings ask for (None: urllib3's default) and what it trusts.

    Verification is always on. For an ``http://`` host the variables are not
    read; options given are still loaded, so that a wrong path fails now.
    """
    if client_key is not None and client_cert is None:
        raise ValueError(
            "client_key needs client_cert: the certificate that goes with the key "
            "(or one file holding both, as client_cert alone)"
        )
    bundle, source = ca_certs, "ca_certs"
    if bundle is None and https:
        variable = next((name for name in CA_VARIABLES if os.environ.get(name)), None)
        if variable is not None:
            bundle, source = os.environ[variable], variable
    if bundle is None and client_cert is None:
        return None, SYSTEM_STORE
    trust = SYSTEM_STORE if bundle is None else f"{source} {bundle}"
    key = (_file_key(bundle), _file_key(client_cert), _file_key(client_key))
    with _contexts_lock:
        context = _contexts.get(key)
    if context is None:
        context = _new_context(bundle, source, client_cert, client_key)
        with _contexts_lock:
            _contexts[key] = context
            while len(_contexts) > _MAX_CONTEXTS:
                del _contexts[next(iter(_contexts))]
    return context, trust


# Loading a CA bundle takes about 40 ms (the system's, 140 CAs): each transport built with
# the same files, unchanged since, shares one context (which urllib3 only reads).
_MAX_CONTEXTS = 8
_contexts: Dict[Tuple[Any, ...], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _file_key(path: Optional[str]) -> Optional[Tuple[Any, ...]]:
    """What tells a file apart from itself once changed: path, inode, size, change time."""
    if path is None:
        return None
    full = os.path.abspath(os.path.expanduser(path))
    try:
        info = os.stat(full)
    except OSError:
        return (full,)  # loading it fails, and nothing is cached
    return (full, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _new_context(
    bundle: Optional[str], source: str, client_cert: Optional[str], client_key: Optional[str]
) -> ssl.SSLContext:
    context = create_urllib3_context()
    if bundle is None:
        context.load_default_certs()
    else:
        label = "ca_certs" if source == "ca_certs" else f"ca_certs (from {source})"
        _load_bundle(context, label, os.path.expanduser(bundle))
    return _with_client_cert(context, client_cert, client_key)


def _with_client_cert(
    context: ssl.SSLContext, client_cert: Optional[str], client_key: Optional[str]
) -> ssl.SSLContext:
    if client_cert is not None:
        _load_client_cert(context, client_cert, client_key)
    return context


def _load_bundle(context: ssl.SSLContext, label: str, path: str) -> None:
    try:
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
    except OSError as exc:  # ssl.SSLError too: a file that holds no certificate
        why = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else exc
        raise ValueError(f"{label}: cannot use the CA bundle {path!r}: {why}") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would ask for an encrypted key's passphrase on the terminal.
    return b""


def _load_client_cert(context: ssl.SSLContext, cert: str, key: Optional[str]) -> None:
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except OSError as exc:
        what = f"{cert!r}" + (f" with client_key {key!r}" if key else "")
        why = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else exc
        raise ValueError(
            f"client_cert: cannot load {what}: {why} (PEM files; the key unencrypted)"
        ) from None


# --------------------------------------------------------------------------- clear text


def is_loopback(hostname: str) -> bool:
    """``localhost`` (and names under it), 127.0.0.0/8 and ``::1``."""
    name = hostname.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def warn_if_clear_text(url: str) -> None:
    """Warn (``ClearTextWarning``) when ``url`` is ``http://`` to a host beyond loopback."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or is_loopback(parts.hostname or ""):
        return
    warnings.warn(
        f"segmentio_logging: host {url} is plain http://: the write key (in every request) "
        "and the events cross the network in clear text; use https://",
        ClearTextWarning,
        stacklevel=2,
    )


# --------------------------------------------------------------------------- refusals


def refusal(exc: BaseException, route: Route) -> Optional[Refusal]:
    """The :class:`Refusal` that ``exc`` (a failed request on ``route``) is, or None.

    None means a network failure worth retrying. urllib3 wraps the error it
    met (``SSLError``, ``ProxyError``, ``MaxRetryError``), so its causes are searched.
    """
    for error in _causes(exc):
        if isinstance(error, ssl.SSLCertVerificationError) or (
            type(error).__name__ == "CertificateError"  # urllib3 1.26's own hostname check
        ):
            return CertificateRefused(_verify_failure(error, route))
        reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
        if isinstance(reason, str) and reason in _CLIENT_CERT_ALERTS:
            return CertificateRefused(_client_cert_refused(reason, route))
        found = _TUNNEL_FAILED.search(str(error)) if isinstance(error, OSError) else None
        if found is not None:
            status = int(found.group(1))
            if 400 <= status < 500 and status not in (408, 429):
                return ProxyRefused(_proxy_refused(status, found.group(2).strip(), route))
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts, ``reason``, exceptions among its args."""
    pending = [exc]
    seen: Set[int] = set()
    while pending and len(seen) < 32:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        inner = [error.__cause__, error.__context__, getattr(error, "reason", None)]
        inner.extend(getattr(error, "args", ()))
        pending.extend(item for item in inner if isinstance(item, BaseException))


def _host_of(route: Route) -> str:
    return urlsplit(route.url).netloc


def _verify_failure(error: BaseException, route: Route) -> str:
    detail = (getattr(error, "verify_message", None) or str(error)).rstrip(".")
    host = _host_of(route)
    if getattr(error, "verify_code", None) == _HOSTNAME_MISMATCH or "match" in detail:
        return (
            f"certificate verify failed: {detail}: the certificate that {host} showed is not "
            "for that name; use the host name the certificate was issued for"
        )
    return (
        f"certificate verify failed: {detail} (the certificate of {host}, checked against "
        f"{route.trust}); when a private CA signed it (a self-hosted collector, a proxy that "
        "inspects TLS), set ca_certs (or REQUESTS_CA_BUNDLE) to that CA's bundle"
    )


def _client_cert_refused(reason: str, route: Route) -> str:
    host = _host_of(route)
    if route.client_cert is None:
        return (
            f"{host} ended the TLS handshake ({reason}): it wants a client certificate "
            "(mutual TLS); set client_cert and client_key"
        )
    return (
        f"{host} refused the client certificate {route.client_cert} ({reason}): is it "
        "signed by a CA that the server trusts, and still valid?"
    )


def _proxy_refused(status: int, words: str, route: Route) -> str:
    proxy = mask_password(route.proxy or "")
    answer = f"{status} {words}".strip()
    head = f"the proxy {proxy} ({route.proxy_source}) refused to connect to {_host_of(route)}"
    if status != 407:
        return f"{head}: {answer}"
    if urlsplit(route.proxy or "").username is None:
        return f"{head}: {answer}; it wants a user and password: http://user:password@host:port"
    return f"{head}: {answer}; check the user and password in the proxy URL"
