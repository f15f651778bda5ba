"""A proxy password, percent-encoded or not, shows in no repr, error or warning: the option,
SEGMENT_PROXY and the standard variables, whatever characters the password holds."""

from __future__ import annotations

import contextlib
import io
import os
from typing import List
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segmentio_logging._connection import route_for
from segmentio_logging._options import ProxyURL, mask_password, resolve_options

from .helpers import clean_network_environment, property_settings

pytestmark = pytest.mark.usefixtures(clean_network_environment.__name__)

SECRET = "QX"  # in every password, and in no other part of the URL or of any message
HOST = "https://api.segment.io"

# Pieces of a password: what ends or splits a URL's parts, encodings, and the secret.
pieces = st.sampled_from(["@", "/", ":", "%", "#", "?", "%40", "%2F", "[", "]", " ", "!", "a", "9"])
passwords = st.tuples(st.lists(pieces, max_size=6), st.lists(pieces, max_size=6)).map(
    lambda halves: "".join(halves[0]) + SECRET + "".join(halves[1])
)
tails = st.sampled_from(["proxy.example:3128", "proxy.example:31x8", "127.0.0.1", "[::1]:3128"])


def texts_about(url: str) -> List[str]:
    """Everything the library says about ``url``: reprs, the error or the warning."""
    texts = [mask_password(url), repr(ProxyURL(url))]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            texts.append(repr(resolve_options({"write_key": "k", "proxy": url})))
            texts.append(repr(route_for(HOST, proxy=url)))
        except ValueError as exc:
            texts.append(str(exc))
        for variable in ("HTTPS_PROXY", "SEGMENT_PROXY"):
            with mock.patch.dict(os.environ, {variable: url}):
                try:
                    texts.append(repr(resolve_options({"write_key": "k"})))
                    texts.append(repr(route_for(HOST, proxy=resolve_options({}).proxy)))
                except ValueError as exc:
                    texts.append(str(exc))
    return [*texts, stderr.getvalue()]


@property_settings
@given(password=passwords, user=st.sampled_from(["alice", "a@b", ""]), tail=tails)
def test_the_password_never_shows(password: str, user: str, tail: str) -> None:
    """No text about a proxy URL holds its password, whichever characters it has."""
    url = f"http://{user}:{password}@{tail}"
    for text in texts_about(url):
        assert SECRET not in text, text


@pytest.mark.parametrize("url", ["http://proxy.example:3128", "http://alice@proxy.example:3128"])
def test_a_url_without_password_shows_whole(url: str) -> None:
    """Nothing to hide: the repr of the proxy and of its route show the URL as it is."""
    assert repr(ProxyURL(url)) == repr(url)
    assert f"proxy={url!r}" in repr(route_for(HOST, proxy=url))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:p@ss@proxy.example:3128", "http://alice:***@proxy.example:3128"),
        ("http://alice:p%40ss@proxy.example:3128", "http://alice:***@proxy.example:3128"),
        ("alice:pw@proxy.example:3128", "alice:***@proxy.example:3128"),
        ("http://alice:s3cr/et@proxy.example:3128", "http://***@proxy.example:3128"),
        ("http://alice:s#cr?et@proxy.example:3128", "http://***@proxy.example:3128"),
        ("http://alice:a/b@c@proxy.example:3128", "http://***@proxy.example:3128"),
        ("http://proxy.example:3128", "http://proxy.example:3128"),
        ("http://alice@proxy.example:3128", "http://alice@proxy.example:3128"),
        ("http://alice:@proxy.example:3128", "http://alice:***@proxy.example:3128"),
    ],
)
def test_what_the_mask_shows(url: str, shown: str) -> None:
    """The user and the host stay; where the password ends is ambiguous, the user goes too."""
    assert mask_password(url) == shown
