"""Options: keyword arguments, then SEGMENT_* environment variables, then defaults."""

from __future__ import annotations

import json
import logging
import os.path
from pathlib import Path
from typing import Any, Dict

import pytest

from segmentio_logging import Client, SegmentHandler
from segmentio_logging._options import (
    DEFAULT_HOST,
    OPTION_CHECKS,
    OPTION_NAMES,
    Options,
    env_var,
    resolve_dotted,
    resolve_options,
)

from .helpers import ROOT

DEFAULTS: Dict[str, Any] = {
    "write_key": None,
    "host": "https://api.segment.io",
    "gzip": True,
    "batch_size": 1000,
    "flush_interval": 0.5,
    "max_queue_size": 10_000,
    "timeout": 15.0,
    "max_retries": None,
    "retry_budget": None,
    "max_in_flight": 8,
    "max_backoff": 30.0,
    "max_retry_after": 300.0,
    "shutdown_timeout": 5.0,
    "on_success": None,
    "on_failure": None,
    "send": True,
    "sync_mode": False,
    "capture_extra": False,
    "field_names": {},
    "spool_path": None,
    "spool_max_bytes": 64 * 1024 * 1024,
    "spool_max_age": None,
    "before_send": None,
    "default_context": {},
    "handle_sigterm": True,
    "proxy": None,
    "ca_certs": None,
    "client_cert": None,
    "client_key": None,
}

# One valid value per option, as a keyword argument and as the environment spells it.
VALID = [
    ("write_key", "wk", "wk", "wk"),
    ("host", "http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9"),
    ("gzip", False, "false", False),
    ("batch_size", 7, "7", 7),
    ("flush_interval", 0.25, "0.25", 0.25),
    ("max_queue_size", 50, "50", 50),
    ("timeout", 3, "3", 3.0),
    ("max_retries", 0, "0", 0),
    ("retry_budget", 1.5, "1.5", 1.5),
    ("max_in_flight", 3, "3", 3),
    ("max_backoff", 2, "2", 2.0),
    ("max_retry_after", 120, "120", 120.0),
    ("shutdown_timeout", 2, "2", 2.0),
    ("on_success", json.dumps, "json.dumps", json.dumps),
    ("on_failure", os.path.join, "os.path.join", os.path.join),
    ("send", False, "no", False),
    ("sync_mode", True, "1", True),
    ("capture_extra", True, "on", True),
    ("field_names", {"user_id": "uid"}, '{"user_id": "uid"}', {"user_id": "uid"}),
    ("spool_path", "/var/spool/app", "/var/spool/app", "/var/spool/app"),
    ("spool_max_bytes", 1_000_000, "1000000", 1_000_000),
    ("spool_max_age", 86_400, "86400", 86_400.0),
    ("before_send", json.dumps, "json.dumps", json.dumps),
    (
        "default_context",
        {"app": {"version": "1.2"}},
        '{"app": {"version": "1.2"}}',
        {"app": {"version": "1.2"}},
    ),
    ("handle_sigterm", False, "off", False),
    ("proxy", "http://proxy.example:3128", "proxy.example:3128", "http://proxy.example:3128"),
    ("ca_certs", "/etc/ssl/private-ca.pem", "/etc/ssl/private-ca.pem", "/etc/ssl/private-ca.pem"),
    ("client_cert", "/etc/ssl/me.pem", "/etc/ssl/me.pem", "/etc/ssl/me.pem"),
    ("client_key", "/etc/ssl/me.key", "/etc/ssl/me.key", "/etc/ssl/me.key"),
]

# The examples above by option name, for the tests that run over the table of options.
EXAMPLES = {row[0]: row for row in VALID}

# One invalid value per option: (name, value, expected exception type).
INVALID = [
    ("write_key", 12345, TypeError),
    ("host", "ftp://example.com", ValueError),
    ("host", "http://", ValueError),
    ("gzip", "maybe", TypeError),
    ("batch_size", "many", TypeError),
    ("batch_size", 2.5, TypeError),
    ("batch_size", 0, ValueError),
    ("batch_size", 2501, ValueError),
    ("flush_interval", -1, ValueError),
    ("max_queue_size", 0, ValueError),
    ("timeout", 0, ValueError),
    ("max_retries", -1, ValueError),
    ("max_retries", True, TypeError),
    ("retry_budget", float("nan"), ValueError),
    ("max_in_flight", 0, ValueError),
    ("max_in_flight", 65, ValueError),
    ("max_backoff", 0, ValueError),
    ("max_retry_after", -1, ValueError),
    ("shutdown_timeout", "soon", TypeError),
    ("on_success", 42, TypeError),
    ("on_failure", "no_such_module_xyz.fn", ValueError),
    ("on_failure", "json.no_such_function", ValueError),
    ("on_failure", "json.__doc__", TypeError),
    ("send", "perhaps", TypeError),
    ("sync_mode", 2, TypeError),
    ("capture_extra", [], TypeError),
    ("field_names", ["user_id"], TypeError),
    ("before_send", 42, TypeError),
    ("default_context", ["app"], TypeError),
    ("default_context", {1: "x"}, TypeError),
    ("default_context", {"when": object()}, TypeError),
    ("default_context", "{not json", ValueError),
    ("handle_sigterm", "later", TypeError),
    ("field_names", {"not_reserved": "x"}, ValueError),
    ("field_names", {"user_id": "not an identifier"}, ValueError),
    ("field_names", {"user_id": "msg"}, ValueError),
    ("field_names", {"user_id": "uid", "anonymous_id": "uid"}, ValueError),
    ("spool_path", 42, TypeError),
    ("spool_path", "   ", ValueError),
    ("spool_max_bytes", "lots", TypeError),
    ("spool_max_bytes", 1.5, TypeError),
    ("spool_max_bytes", 1000, ValueError),
    ("spool_max_age", 0, ValueError),
    ("spool_max_age", "a week", TypeError),
    ("proxy", 3128, TypeError),
    ("proxy", "socks5://127.0.0.1:1080", ValueError),
    ("proxy", "https://proxy.example:3128", ValueError),
    ("proxy", "http://proxy.example:port", ValueError),
    ("proxy", "http://proxy.example:3128/path", ValueError),
    ("ca_certs", 42, TypeError),
    ("ca_certs", "  ", ValueError),
    ("client_cert", b"/etc/ssl/me.pem", TypeError),
    ("client_key", "", ValueError),
]

# Values that are only invalid as text (what an environment variable holds).
INVALID_ENV = [
    ("host", "ftp://example.com", ValueError),
    ("gzip", "maybe", TypeError),
    ("batch_size", "3000", ValueError),
    ("batch_size", "ten", TypeError),
    ("flush_interval", "-2", ValueError),
    ("timeout", "fast", TypeError),
    ("on_failure", "no_such_module_xyz.fn", ValueError),
    ("field_names", "{not json", TypeError),
    ("field_names", '{"user_id": "msg"}', ValueError),
    ("spool_max_bytes", "64MiB", TypeError),
    ("spool_max_bytes", "10", ValueError),
    ("spool_max_age", "-1", ValueError),
    ("proxy", "ftp://proxy.example", ValueError),
]


def resolve(environ: Dict[str, str] | None = None, **given: Any) -> Options:
    return resolve_options(given, environ or {})


class TestDefaults:
    def test_every_option_has_the_documented_default(self) -> None:
        """Without arguments or environment, each option takes its documented default."""
        options = resolve(send=False)
        assert {name: getattr(options, name) for name in OPTION_NAMES} == {
            **DEFAULTS,
            "send": False,
        }

    def test_the_option_list_is_complete(self) -> None:
        """OPTION_NAMES lists exactly the documented options, and the default host is Segment's."""
        assert set(OPTION_NAMES) == set(DEFAULTS)
        assert DEFAULT_HOST == "https://api.segment.io"

    def test_the_write_key_is_kept_out_of_the_repr(self) -> None:
        """repr(Options) never shows the write key, a secret."""
        options = resolve(write_key="very-secret-key")
        assert "very-secret-key" not in repr(options)
        assert options.write_key == "very-secret-key"


class TestTheTable:
    def test_every_field_of_options_has_a_check(self) -> None:
        """The table of checks holds exactly the fields of Options, in their order."""
        assert tuple(OPTION_CHECKS) == OPTION_NAMES
        assert all(callable(check) for check in OPTION_CHECKS.values())

    @pytest.mark.parametrize("name", OPTION_NAMES)
    def test_the_default_passes_the_check(self, name: str) -> None:
        """Each option's default, given back to its own check, comes out unchanged."""
        default = getattr(Options(), name)
        assert default == DEFAULTS[name]
        assert OPTION_CHECKS[name](name, default) == default

    @pytest.mark.parametrize("name", OPTION_NAMES)
    def test_every_option_reads_its_variable(self, name: str) -> None:
        """Each option in the table, left unset, takes the value of SEGMENT_<NAME>."""
        assert name in EXAMPLES, f"add an example value for {name} to VALID"
        _, _, text, expected = EXAMPLES[name]
        assert expected != DEFAULTS[name]  # so the value can only have come from the variable
        environ = {env_var(name): text}
        if name != "write_key":
            environ["SEGMENT_WRITE_KEY"] = "k"
        assert getattr(resolve(environ), name) == expected

    @pytest.mark.parametrize("name", OPTION_NAMES)
    def test_a_wrong_type_raises_naming_the_option(self, name: str) -> None:
        """A value of no option's type raises TypeError whose message starts with the option."""
        with pytest.raises(TypeError) as info:
            resolve(**{"send": False, name: object()})
        assert str(info.value).startswith(name)
        with pytest.raises(TypeError, match=f"^{name}"):
            OPTION_CHECKS[name](name, object())

    @pytest.mark.parametrize("name", OPTION_NAMES)
    @pytest.mark.parametrize("build", [SegmentHandler, Client], ids=["SegmentHandler", "Client"])
    def test_constructors_check_every_option(self, build: Any, name: str) -> None:
        """SegmentHandler and Client raise for a wrong type of any option when they are built."""
        with pytest.raises(TypeError, match=f"^{name}"):
            build(**{"send": False, name: object()})


class TestEnvironment:
    @pytest.mark.parametrize(("name", "given", "text", "expected"), VALID)
    def test_an_unset_option_falls_back_to_its_variable(
        self, name: str, given: Any, text: str, expected: Any
    ) -> None:
        """Each option reads SEGMENT_<NAME> when it is not passed."""
        environ = {env_var(name): text}
        if name != "write_key":
            environ["SEGMENT_WRITE_KEY"] = "k"
        assert getattr(resolve(environ), name) == expected

    @pytest.mark.parametrize(("name", "given", "text", "expected"), VALID)
    def test_a_keyword_accepts_the_plain_value(
        self, name: str, given: Any, text: str, expected: Any
    ) -> None:
        """Each option accepts its natural Python value as a keyword argument."""
        extra = {} if name == "write_key" else {"write_key": "k"}
        assert getattr(resolve(**extra, **{name: given}), name) == expected

    def test_variable_names(self) -> None:
        """The variable of an option is SEGMENT_ and its name in capitals."""
        assert env_var("write_key") == "SEGMENT_WRITE_KEY"
        assert env_var("batch_size") == "SEGMENT_BATCH_SIZE"
        assert env_var("field_names") == "SEGMENT_FIELD_NAMES"

    def test_explicit_keywords_win_over_the_environment(self) -> None:
        """A keyword argument beats the variable of the same option."""
        environ = {
            "SEGMENT_WRITE_KEY": "from-env",
            "SEGMENT_HOST": "http://env.example",
            "SEGMENT_BATCH_SIZE": "9",
            "SEGMENT_GZIP": "false",
        }
        options = resolve(environ, write_key="given", host="http://kw.example", batch_size=3)
        assert options.write_key == "given"
        assert options.host == "http://kw.example"
        assert options.batch_size == 3
        assert options.gzip is False  # not passed: the environment still applies

    def test_none_and_empty_variables_count_as_unset(self) -> None:
        """A keyword of None and an empty variable both leave the default in place."""
        options = resolve({"SEGMENT_BATCH_SIZE": ""}, write_key="k", batch_size=None)
        assert options.batch_size == 1000

    def test_the_handler_and_client_read_the_process_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SegmentHandler and Client fall back to os.environ when built without arguments."""
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-key")
        monkeypatch.setenv("SEGMENT_HOST", "http://127.0.0.1:9")
        monkeypatch.setenv("SEGMENT_BATCH_SIZE", "11")
        monkeypatch.setenv("SEGMENT_GZIP", "false")
        handler = SegmentHandler()
        client = Client()
        try:
            for options in (handler.options, client.options):
                assert options.write_key == "env-key"
                assert options.host == "http://127.0.0.1:9"
                assert options.batch_size == 11
                assert options.gzip is False
        finally:
            handler.close()
            client.shutdown()


class TestValidation:
    @pytest.mark.parametrize(("name", "value", "error"), INVALID)
    def test_an_invalid_keyword_raises_naming_the_option(
        self, name: str, value: Any, error: type
    ) -> None:
        """A bad value raises TypeError or ValueError whose message starts with the option."""
        with pytest.raises(error) as info:
            resolve(**{"send": False, name: value})
        assert str(info.value).startswith(name)

    @pytest.mark.parametrize(("name", "text", "error"), INVALID_ENV)
    def test_an_invalid_variable_raises_naming_the_variable(
        self, name: str, text: str, error: type
    ) -> None:
        """A bad value from the environment names both the option and its variable."""
        environ = {env_var(name): text}
        with pytest.raises(error) as info:
            resolve(environ, write_key="k")
        assert str(info.value).startswith(f"{name} (from {env_var(name)})")

    def test_unknown_options_list_the_valid_ones(self) -> None:
        """An unknown keyword raises TypeError naming it and every valid option."""
        with pytest.raises(TypeError) as info:
            resolve(write_key="k", batchsize=10)
        message = str(info.value)
        assert "batchsize" in message
        for name in OPTION_NAMES:
            assert name in message

    def test_the_handler_rejects_unknown_options_at_construction(self) -> None:
        """SegmentHandler raises the same TypeError for a misspelt option."""
        with pytest.raises(TypeError, match="flush_intervall"):
            SegmentHandler("k", flush_intervall=1)

    @pytest.mark.parametrize("size", [1, 2500])
    def test_batch_size_accepts_its_bounds(self, size: int) -> None:
        """batch_size accepts 1 and 2,500, Segment's limit per request."""
        assert resolve(send=False, batch_size=size).batch_size == size

    @pytest.mark.parametrize(("text", "expected"), [("5", 5), (" 12 ", 12), (8.0, 8)])
    def test_integers_may_come_as_text_or_whole_floats(self, text: Any, expected: int) -> None:
        """Integer options accept numeric strings (from INI files) and whole floats (from YAML)."""
        assert resolve(send=False, batch_size=text).batch_size == expected

    def test_the_write_key_is_required_when_sending(self) -> None:
        """Without a write key (argument or variable), sending raises a ValueError saying how."""
        with pytest.raises(ValueError, match="SEGMENT_WRITE_KEY"):
            resolve()
        with pytest.raises(ValueError, match="write_key is required"):
            resolve(write_key="   ")

    def test_no_write_key_is_needed_without_sending(self) -> None:
        """send=False builds and validates messages without a write key."""
        assert resolve(send=False).write_key is None

    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("api.segment.io", "https://api.segment.io"),
            ("https://events.eu1.segmentapis.com/", "https://events.eu1.segmentapis.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ],
    )
    def test_hosts_are_normalised(self, given: str, expected: str) -> None:
        """A bare host name gets https://, and a trailing slash goes."""
        assert resolve(send=False, host=given).host == expected

    def test_spool_path_accepts_a_path_object_and_expands_the_home_directory(self) -> None:
        """spool_path takes a str or os.PathLike; a leading ~ is the user's home."""
        assert resolve(send=False, spool_path=Path("/tmp/s")).spool_path == "/tmp/s"
        expanded = resolve(send=False, spool_path="~/spool").spool_path
        assert expanded == os.path.join(os.path.expanduser("~"), "spool")

    def test_spool_path_cannot_be_combined_with_sync_mode(self) -> None:
        """sync_mode delivers on the caller's thread, so a spool there is refused by name."""
        with pytest.raises(ValueError) as info:
            resolve(send=False, spool_path="/tmp/s", sync_mode=True)
        assert str(info.value).startswith("spool_path")

    def test_spool_max_bytes_matches_the_spool_default(self) -> None:
        """The option's default is the spool module's own default."""
        from segmentio_logging._spool import DEFAULT_MAX_BYTES

        assert resolve(send=False).spool_max_bytes == DEFAULT_MAX_BYTES

    def test_field_names_cannot_read_the_session_id_alias(self) -> None:
        """Renaming a key to session_id clashes with the anonymous_id alias, unless it moves."""
        with pytest.raises(ValueError, match="session_id"):
            resolve(send=False, field_names={"user_id": "session_id"})
        options = resolve(send=False, field_names={"anonymous_id": "session_id"})
        assert options.field_names == {"anonymous_id": "session_id"}


class TestDottedPaths:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("json.dumps", json.dumps),
            ("os.path.join", os.path.join),
            ("os.path:join", os.path.join),
            ("ext://json.dumps", json.dumps),
            ("logging.Logger.info", logging.Logger.info),
        ],
    )
    def test_a_dotted_path_resolves_to_the_object(self, path: str, expected: Any) -> None:
        """Modules, packages, ':' separators, ext:// and nested attributes all resolve."""
        assert resolve_dotted("on_failure", path) is expected

    def test_a_callback_option_accepts_a_dotted_path(self) -> None:
        """on_success and on_failure given as strings become the callables they name."""
        options = resolve(send=False, on_success="json.dumps", on_failure="ext://os.path.join")
        assert options.on_success is json.dumps
        assert options.on_failure is os.path.join

    @pytest.mark.parametrize("path", ["", "json", "json.", "a..b", "not a path.x"])
    def test_a_malformed_path_raises_naming_the_option(self, path: str) -> None:
        """A string that is not a dotted path raises ValueError naming the option."""
        with pytest.raises(ValueError, match=r"^on_success"):
            resolve_dotted("on_success", path)


def test_the_docs_document_every_option() -> None:
    """Each option has a row in the option table of docs/options.md, with its variable."""
    page = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in page.splitlines()
        if line.startswith("| `")
    }
    for name in OPTION_NAMES:
        assert name in rows, f"docs/options.md: no row for option {name}"
        assert f"`{env_var(name)}`" in rows[name], f"docs/options.md: {name} without its variable"
