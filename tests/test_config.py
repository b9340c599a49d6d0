"""Configuration: the YAML contract, durations, every validation error, env overrides, secrets."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import cli, logs
from exporter.auth import ClientCredentials, StaticToken, TokenFile
from exporter.config import Config, ConfigError
from exporter.configload import load_config
from exporter.connect import client_kwargs, token_source
from exporter.durations import format_duration, parse_duration

SITE_A = "3f2c1a9e-8b7d-4c6e-9a5f-0d1e2f3a4b5c"
SITE_B = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
TOKEN = "tok-3kd93nfw9s8df7"
SECRET = "sec-9fj3mc02lq8zv5"

# docs/design.md (Configuration), verbatim.
PRODUCT_EXAMPLE = """\
api:
  url: https://nico-rest-api.nico.svc.cluster.local
  org: acme
  token_file: /var/run/secrets/nico/token    # or token, token_command, oidc, api_key: credentials.md
  max_requests_per_second: 10
sites: []                                   # site ids; empty = every Flow-enabled site
polling:                                    # durations: 15s, 5m, 1h or plain seconds
  active_interval: 15s                      # rack task lists, activeOnly + includeReport
  tray_interval: 60s                        # tray task lists, for racks with active tasks
  reconcile_interval: 5m                    # full rack lists, to catch tasks shorter than a poll
  discovery_interval: 5m                    # sites, racks, trays
state:
  path: /var/lib/nico-task-exporter/state.db
  finished_task_ttl: 1h
"""


def minimal(**api: Any) -> dict[str, Any]:
    """The smallest valid config as data: url, org and a token, with ``api`` keys replaced."""
    fields: dict[str, Any] = {"url": "https://nico.example.com", "org": "acme", "token": TOKEN}
    fields.update(api)
    return {"api": {k: v for k, v in fields.items() if v is not None}}


def with_section(section: str, **values: Any) -> dict[str, Any]:
    data = minimal()
    data[section] = values
    return data


def write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def load(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, data), env or {})


def error(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value.message


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate in PEM, made with ``openssl`` (``cryptography`` is not a dependency)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"),
            "-days", "1", "-subj", "/CN=nico-test-ca",
        ],
        check=True,
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    return directory / "ca.pem"


# --------------------------------------------------------------------------- the contract


def test_product_example_parses_with_defaults_filled(tmp_path: Path) -> None:
    config = load(tmp_path, PRODUCT_EXAMPLE)

    assert config.api.url == "https://nico-rest-api.nico.svc.cluster.local"
    assert config.api.org == "acme"
    assert config.api.token_file == Path("/var/run/secrets/nico/token")
    assert config.api.credential_kind == "token_file"
    assert config.api.max_requests_per_second == 10.0
    assert (config.api.api_name, config.api.route_version) == ("nico", "v2")
    # The burst is below NICo's 30 at the same rate: room for latency jitter (ratelimit.py).
    assert (config.api.timeout, config.api.burst, config.api.max_concurrency) == (30.0, 10, 8)
    assert config.api.insecure_skip_verify is False
    assert config.sites == []
    assert config.polling.active_interval == 15.0
    assert config.polling.tray_interval == 60.0
    assert config.polling.reconcile_interval == 300.0
    assert config.polling.discovery_interval == 300.0
    assert config.polling.final_fetch_interval == 2.0
    assert config.state.path == Path("/var/lib/nico-task-exporter/state.db")
    assert config.state.finished_task_ttl == 3600.0
    assert config.state.terminal_retention == 7 * 86400.0
    assert (config.sharding.shard, config.sharding.total_shards) == (0, 1)
    assert config.operations.extra_patterns == {}
    assert (config.web.listen_address, config.web.config_file) == (":9842", None)
    assert config.tracing.service_name == "nico"
    assert (config.log.level, config.log.format) == ("info", "logfmt")


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    data = minimal(
        api_name="nico2",
        route_version="v3",
        timeout="10s",
        max_requests_per_second=2.5,
        burst=5,
        max_concurrency=2,
        insecure_skip_verify=True,
    )
    data |= {
        "sites": [SITE_A.upper(), SITE_B, SITE_A],
        "polling": {"final_fetch_interval": "500ms"},
        "state": {"terminal_retention": "2d"},
        "sharding": {"shard": 2, "total_shards": 3},
        "operations": {"extra_patterns": {"power_cycle": [r"^reboot rack\b"], "other": ["noop"]}},
        "web": {"listen_address": "0.0.0.0:9100", "config_file": None},
        "tracing": {"service_name": "nico-prod"},
        "log": {"level": "WARNING", "format": "json"},
    }
    config = load(tmp_path, data)

    assert config.sites == [SITE_A, SITE_B]  # canonical lowercase, duplicates dropped
    assert config.api.timeout == 10.0
    assert config.polling.final_fetch_interval == 0.5
    assert config.state.terminal_retention == 2 * 86400.0
    assert config.sharding.shard == 2
    assert config.operations.extra_patterns == {"power_cycle": [r"^reboot rack\b"], "other": ["noop"]}
    assert config.log.level == "warn"
    assert config.describe().startswith("sites: 2 listed, active poll every 15s")


def test_blank_sections_mean_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, yaml.safe_dump(minimal()) + "sites:\npolling:\n")
    assert config.sites == []
    assert config.polling.active_interval == 15.0


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        (30, 30.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("0.25", 0.25),
        (" 10s ", 10.0),
    ],
)
def test_duration_forms(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "invalid duration 'fast' (use e.g. 15s, 5m, 1h)"),
        ("5M", "invalid duration '5M'"),
        ("", "invalid duration ''"),
        ("inf", "invalid duration 'inf'"),
        (float("nan"), "invalid duration nan"),
        (True, "invalid duration True"),
        ([15], "invalid duration of type list"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


def test_bad_duration_names_the_field(tmp_path: Path) -> None:
    message = error(tmp_path, with_section("polling", active_interval="fast"))
    assert message == "polling.active_interval: invalid duration 'fast' (use e.g. 15s, 5m, 1h)"


@pytest.mark.parametrize("field", ["tray_interval", "reconcile_interval", "discovery_interval"])
def test_zero_interval_is_rejected(tmp_path: Path, field: str) -> None:
    assert (
        error(tmp_path, with_section("polling", **{field: 0}))
        == f"polling.{field}: must be greater than zero"
    )


def test_active_interval_below_a_second_is_rejected(tmp_path: Path) -> None:
    assert "polling.active_interval: must be at least 1s" in error(
        tmp_path, with_section("polling", active_interval="500ms")
    )


def test_zero_finished_task_ttl_is_allowed_but_retention_must_cover_it(tmp_path: Path) -> None:
    assert load(tmp_path, with_section("state", finished_task_ttl=0)).state.finished_task_ttl == 0.0
    message = error(tmp_path, with_section("state", finished_task_ttl="2h", terminal_retention="1h"))
    assert message == "state.terminal_retention: must be at least state.finished_task_ttl (2h)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (15, "15s"),
        (60, "1m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (604800, "7d"),
        (1.25, "1.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


# --------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            minimal(tokn="x"), "api.tokn: unknown key (did you mean 'token'?)", id="unknown-key-in-section"
        ),
        pytest.param(
            minimal() | {"polling": {"active": "15s"}}, "polling.active: unknown key", id="unknown-nested"
        ),
        pytest.param(
            minimal() | {"sitez": []}, "sitez: unknown key (did you mean 'sites'?)", id="unknown-top"
        ),
        pytest.param({"sites": []}, "api: required", id="missing-api"),
        pytest.param(minimal(url=None), "api.url: required", id="missing-url"),
        pytest.param(minimal(org=""), "api.org: must not be empty", id="empty-org"),
        pytest.param(minimal(url="nico.example.com"), "api.url: must be an http(s) URL", id="url-no-scheme"),
        pytest.param(minimal(url="ftp://nico.example.com"), "api.url: must be an http(s) URL", id="url-ftp"),
        pytest.param(
            minimal(url="https://user:pw@nico.example.com"),
            "api.url: must not contain credentials",
            id="url-creds",
        ),
        pytest.param(
            minimal(token=None),
            "api.token: no API credentials: set api.token (or NICO_TOKEN), api.token_file, "
            "api.token_command, api.oidc, api.api_key, or api.client_id + api.client_secret "
            "(docs/credentials.md)",
            id="no-credentials",
        ),
        pytest.param(
            minimal(token_file="/run/token"),
            "api: more than one credential source (api.token, api.token_file): set exactly one",
            id="two-credentials",
        ),
        pytest.param(
            minimal(token=None, client_id="exporter"),
            "api.client_secret: required with api.client_id (or set NICO_CLIENT_SECRET)",
            id="client-id-without-secret",
        ),
        pytest.param(
            minimal(token=None, client_secret=SECRET),
            "api.client_id: required with api.client_secret",
            id="secret-without-client-id",
        ),
        pytest.param(minimal(token_file=""), "api.token_file: must not be empty", id="empty-token-file"),
        pytest.param(
            minimal(max_requests_per_second=0), "api.max_requests_per_second: must be greater than 0"
        ),
        pytest.param(minimal(burst=0), "api.burst: must be greater than or equal to 1", id="burst-zero"),
        pytest.param(minimal(burst="many"), "api.burst: must be a valid integer", id="burst-not-int"),
        pytest.param(
            minimal() | {"sites": [SITE_A, "rack-1"]}, "sites[1]: not a UUID: 'rack-1'", id="site-not-uuid"
        ),
        pytest.param(
            with_section("sharding", shard=2, total_shards=2),
            "sharding.shard: 2 is out of range for total_shards 2 (want 0..1)",
            id="shard-out-of-range",
        ),
        pytest.param(
            with_section("sharding", shard=-1), "sharding.shard: must be greater than or equal to 0"
        ),
        pytest.param(
            with_section("sharding", total_shards=0),
            "sharding.total_shards: must be greater than or equal to 1",
        ),
        pytest.param(
            minimal(ca_file="/nonexistent/ca.pem"),
            "api.ca_file: file not found: /nonexistent/ca.pem",
            id="ca-missing",
        ),
        pytest.param(
            with_section("operations", extra_patterns={"reboot": ["x"]}),
            "operations.extra_patterns.reboot: unknown operation 'reboot' (want one of power_on, ",
            id="unknown-operation",
        ),
        pytest.param(
            with_section("operations", extra_patterns={"power_on": ["ok", "(unclosed"]}),
            "operations.extra_patterns.power_on[1]: invalid regular expression '(unclosed': missing )",
            id="bad-regex",
        ),
        pytest.param(
            with_section("metrics", denylist=["nico_tray_.*", "nico_tray_task"]),
            "metrics.denylist: 'nico_tray_task' matches no metric family",
            id="denylist-typo",
        ),
        pytest.param(
            with_section("metrics", allowlist=["nico_(tasks"]),
            "metrics.allowlist: invalid regular expression 'nico_(tasks'",
            id="allowlist-bad-regex",
        ),
        pytest.param(
            with_section("metrics", task_status="latest"),
            "metrics.task_status: must be 'one_hot' or 'current'",
            id="task-status",
        ),
        pytest.param(
            with_section("web", listen_address="9842"), "web.listen_address: invalid listen address '9842'"
        ),
        pytest.param(
            with_section("log", level="verbose"), "log.level: must be 'debug', 'info', 'warn' or 'error'"
        ),
        pytest.param(with_section("log", format="text"), "log.format: must be 'logfmt' or 'json'"),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert error(tmp_path, data).startswith(expected)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    data = minimal() | {"polling": {"active_interval": "fast"}, "sites": ["x"]}
    message = error(tmp_path, data)
    assert "sites[0]: not a UUID" in message
    assert "; polling.active_interval: invalid duration" in message


def test_unreadable_ca_bundle(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    assert error(tmp_path, minimal(ca_file=str(bogus))).startswith(
        f"api.ca_file: not a PEM CA bundle: {bogus}"
    )


def test_ca_file_contradicts_insecure_skip_verify(tmp_path: Path, ca_file: Path) -> None:
    message = error(tmp_path, minimal(ca_file=str(ca_file), insecure_skip_verify=True))
    assert message == "api.insecure_skip_verify: contradicts api.ca_file: set one or the other"


# --------------------------------------------------------------------------- the file itself


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = "api:\n  url: https://nico.example.com\n  org: [acme\npolling: {}\n"
    message = error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'config.yaml'}, line 4, column ")
    assert "invalid YAML" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    text = "api:\n  url: https://a.example.com\n  org: acme\n  url: https://b.example.com\n"
    assert (
        error(tmp_path, text)
        == f"{tmp_path / 'config.yaml'}, line 4, column 3: invalid YAML: duplicate key 'url'"
    )


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = "api:\n  <<: {url: https://a.example.com, org: acme, token: t0ken}\n  url: https://b.example.com\n"
    assert load(tmp_path, text).api.url == "https://b.example.com"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert error(tmp_path, "- api\n- sites\n").endswith(
        "the top level must be a mapping (api:, sites:, ...), not a list"
    )
    assert error(tmp_path, "just text\n").endswith("not a scalar")


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    assert error(tmp_path, "# nothing yet\n") == "api: required"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, {})
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00api")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(binary, {})


def test_no_file_means_environment_only() -> None:
    env = {
        "NICO_EXPORTER_API__URL": "https://nico.example.com",
        "NICO_EXPORTER_API__ORG": "acme",
        "NICO_TOKEN": TOKEN,
    }
    config = load_config(None, env)
    assert (config.api.url, config.api.org, config.api.credential_kind) == (
        "https://nico.example.com",
        "acme",
        "token",
    )


# --------------------------------------------------------------------------- environment


def test_nico_token_supplies_the_token(tmp_path: Path) -> None:
    config = load(tmp_path, minimal(token=None), {"NICO_TOKEN": f"  {TOKEN}\n"})
    assert config.api.token is not None
    assert config.api.token.get_secret_value() == TOKEN


def test_nico_token_wins_over_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, minimal(token="from-file"), {"NICO_TOKEN": TOKEN})
    assert config.api.token is not None
    assert config.api.token.get_secret_value() == TOKEN


def test_nico_token_with_token_file_is_two_sources(tmp_path: Path) -> None:
    message = error(tmp_path, minimal(token=None, token_file="/run/token"), {"NICO_TOKEN": TOKEN})
    assert message == (
        "api: more than one credential source (api.token (from NICO_TOKEN), api.token_file): set exactly one"
    )


def test_nico_client_secret_completes_client_credentials(tmp_path: Path) -> None:
    config = load(tmp_path, minimal(token=None, client_id="exporter"), {"NICO_CLIENT_SECRET": SECRET})
    assert config.api.credential_kind == "nico_login"


def test_nested_overrides_win_over_the_file(tmp_path: Path) -> None:
    env = {
        "NICO_EXPORTER_API__URL": "https://override.example.com/",
        "NICO_EXPORTER_API__MAX_REQUESTS_PER_SECOND": "2.5",
        "NICO_EXPORTER_API__INSECURE_SKIP_VERIFY": "true",
        "NICO_EXPORTER_POLLING__ACTIVE_INTERVAL": "30s",
        "NICO_EXPORTER_SHARDING__TOTAL_SHARDS": "4",
        "NICO_EXPORTER_SHARDING__SHARD": "3",
        "NICO_EXPORTER_SITES": f'["{SITE_A.upper()}", "{SITE_B}"]',
        "NICO_EXPORTER_OPERATIONS__EXTRA_PATTERNS__POWER_ON": '["^wake\\\\b"]',
        "NICO_EXPORTER_LOG__FORMAT": "json",
    }
    data = minimal() | {"polling": {"active_interval": "15s", "tray_interval": "2m"}, "sites": [SITE_B]}
    config = load(tmp_path, data, env)

    assert config.api.url == "https://override.example.com"
    assert config.api.org == "acme"  # untouched keys keep the file's value
    assert config.api.max_requests_per_second == 2.5
    assert config.api.insecure_skip_verify is True
    assert config.polling.active_interval == 30.0
    assert config.polling.tray_interval == 120.0
    assert (config.sharding.shard, config.sharding.total_shards) == (3, 4)
    assert config.sites == [SITE_A, SITE_B]
    assert config.operations.extra_patterns == {"power_on": [r"^wake\b"]}
    assert config.log.format == "json"


def test_a_whole_section_as_json_then_refined(tmp_path: Path) -> None:
    env = {
        "NICO_EXPORTER_POLLING": '{"active_interval": "20s", "tray_interval": "40s"}',
        "NICO_EXPORTER_POLLING__TRAY_INTERVAL": "50s",
    }
    config = load(tmp_path, minimal(), env)
    assert (config.polling.active_interval, config.polling.tray_interval) == (20.0, 50.0)


def test_generic_token_override_wins_over_nico_token(tmp_path: Path) -> None:
    config = load(
        tmp_path, minimal(token=None), {"NICO_TOKEN": "first-token", "NICO_EXPORTER_API__TOKEN": TOKEN}
    )
    assert config.api.token is not None
    assert config.api.token.get_secret_value() == TOKEN


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    assert error(tmp_path, minimal(), {"NICO_EXPORTER_POLLING__ACTIVE_INTERVAL": "fast"}) == (
        "polling.active_interval: invalid duration 'fast' (use e.g. 15s, 5m, 1h)"
        " (from NICO_EXPORTER_POLLING__ACTIVE_INTERVAL)"
    )
    assert error(tmp_path, minimal(), {"NICO_EXPORTER_POLLING__ACTIVE": "5s"}) == (
        "polling.active: unknown key (did you mean 'active_interval'?) (from NICO_EXPORTER_POLLING__ACTIVE)"
    )
    assert error(tmp_path, minimal(), {"NICO_EXPORTER_SITES": f"{SITE_A},{SITE_B}"}).startswith(
        "NICO_EXPORTER_SITES: not valid JSON"
    )


def test_foreign_and_empty_variables_are_ignored(tmp_path: Path) -> None:
    env = {
        # What Kubernetes injects for a Service named nico-exporter.
        "NICO_EXPORTER_SERVICE_HOST": "10.0.0.1",
        "NICO_EXPORTER_PORT": "tcp://10.0.0.1:9842",
        "NICO_EXPORTER_POLLING__ACTIVE_INTERVAL": "",
        "NICO_TOKEN": "",
    }
    config = load(tmp_path, minimal(), env)
    assert config.polling.active_interval == 15.0
    assert config.api.token is not None
    assert config.api.token.get_secret_value() == TOKEN


# --------------------------------------------------------------------------- secrets


def test_secrets_never_shown(tmp_path: Path) -> None:
    config = load(tmp_path, minimal(token=None, client_id="exporter"), {"NICO_CLIENT_SECRET": SECRET})
    token_config = load(tmp_path, minimal())
    for cfg, secret in ((config, SECRET), (token_config, TOKEN)):
        shown = [
            repr(cfg),
            str(cfg),
            str(cfg.model_dump()),
            cfg.model_dump_json(),
            str(cfg.redacted_summary()),
        ]
        for text in shown:
            assert secret not in text
    assert token_config.redacted_summary()["api"]["token"] == "<redacted>"
    assert config.redacted_summary()["api"]["client_secret"] == "<redacted>"
    assert config.redacted_summary()["api"]["client_id"] == "exporter"


def test_secrets_are_registered_for_log_redaction(tmp_path: Path) -> None:
    load(tmp_path, minimal(token=None, client_id="exporter"), {"NICO_CLIENT_SECRET": SECRET})
    load(tmp_path, minimal())
    assert logs.redact(f"a {TOKEN} b {SECRET}") == "a <redacted> b <redacted>"


@pytest.mark.parametrize(
    ("data", "env"),
    [
        pytest.param(minimal(token=f"Bearer {TOKEN}"), {}, id="bearer-prefix"),
        pytest.param(minimal(token=f"{TOKEN}\nline2"), {}, id="multiline"),
        pytest.param(minimal(token=None), {"NICO_TOKEN": f"{TOKEN} {TOKEN}"}, id="env-with-space"),
        pytest.param(minimal(token=[TOKEN]), {}, id="not-a-string"),
        pytest.param(minimal(token_file="/run/t"), {"NICO_TOKEN": TOKEN}, id="two-sources"),
        pytest.param(minimal(url=f"https://x:{TOKEN}@nico.example.com"), {}, id="in-url"),
        pytest.param(minimal(url=TOKEN), {}, id="as-url"),
        pytest.param(minimal(client_id="exporter", client_secret=[SECRET]), {}, id="secret-not-a-string"),
        pytest.param(minimal(), {"NICO_EXPORTER_API__TOKEN": f"{TOKEN}\tx"}, id="env-generic"),
    ],
)
def test_errors_never_quote_a_secret(tmp_path: Path, data: dict[str, Any], env: dict[str, str]) -> None:
    message = error(tmp_path, data, env)
    assert TOKEN not in message
    assert SECRET not in message
    assert message.startswith("api")


def test_yaml_errors_never_quote_the_line(tmp_path: Path) -> None:
    text = f'api:\n  url: https://nico.example.com\n  org: acme\n  token: "{TOKEN}\n'
    message = error(tmp_path, text)
    assert "invalid YAML" in message
    assert TOKEN not in message


# --------------------------------------------------------------------------- helpers for the runtime


def test_token_source_types(tmp_path: Path) -> None:
    static = token_source(load(tmp_path, minimal()).api)
    assert isinstance(static, StaticToken)
    assert TOKEN not in repr(static)

    from_file = token_source(load(tmp_path, minimal(token=None, token_file="/run/secrets/token")).api)
    assert isinstance(from_file, TokenFile)
    assert from_file.path == Path("/run/secrets/token")

    seen: list[str] = []
    login = token_source(
        load(
            tmp_path,
            minimal(token=None, client_id="exporter", client_secret=SECRET, url="https://nico.example.com/"),
        ).api,
        on_request=lambda endpoint, code, duration: seen.append(endpoint),
    )
    assert isinstance(login, ClientCredentials)
    assert login.on_request is not None
    assert SECRET not in repr(login)


def test_client_kwargs_defaults(tmp_path: Path) -> None:
    assert client_kwargs(load(tmp_path, minimal()).api) == {
        "timeout_s": 30.0,
        "max_requests_per_second": 10.0,
        "burst": 10,
        "max_concurrency": 8,
        "api_name": "nico",
        "route_version": "v2",
        "verify": True,
    }
    assert client_kwargs(load(tmp_path, minimal(insecure_skip_verify=True)).api)["verify"] is False


def test_client_kwargs_verify_with_a_ca_file(tmp_path: Path, ca_file: Path) -> None:
    verify = client_kwargs(load(tmp_path, minimal(ca_file=str(ca_file))).api)["verify"]
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode == ssl.CERT_REQUIRED
    assert [cert["subject"] for cert in verify.get_ca_certs()] == [((("commonName", "nico-test-ca"),),)]


# --------------------------------------------------------------------------- check-config


def test_check_config_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    path = write(tmp_path, PRODUCT_EXAMPLE)
    assert cli.main(["check-config", "--config.file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config OK: {path} (sites: all Flow-enabled, active poll every 15s, ")
    assert "auth: token_file" in out


def test_check_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    path = write(tmp_path, with_section("polling", active_interval="fast"))
    assert cli.main(["check-config", "--config.file", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == "config error: polling.active_interval: invalid duration 'fast' (use e.g. 15s, 5m, 1h)\n"
    )


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config.file", str(tmp_path / "absent.yaml")]) == 1
    assert capsys.readouterr().err.startswith("config error: config file not found: ")
