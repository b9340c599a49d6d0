"""nicocli's configuration works as it is: ``~/.nico/config.yaml`` and the ``NICO_*`` variables.

Independent expectations: nicocli's own sample config and variable table (rest-api/cli/README.md
"Configuration", cli/pkg/config.go, cli/pkg/env.go), written out here by hand, and the precedence
table of docs/credentials.md. The last tests run the real command line as a child process against
the simulator, with nothing but a nicocli config file and NICO_* variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter import cli
from exporter.config import Config, ConfigError
from exporter.configload import Override, load_config
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from tests.servers import serve_app

TOKEN_URL = "http://localhost:8080/realms/nico-dev/protocol/openid-connect/token"

# nicocli's `init` sample (cli/pkg/config.go:171-200, README "Configuration"), OIDC uncommented.
SAMPLE = f"""
api:
  base: http://localhost:8388
  org: test-org
  name: nico
auth:
  oidc:
    token_url: {TOKEN_URL}
    client_id: nico-api
    client_secret: nico-local-secret
"""


def nicocli_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".nico" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(
    tmp_path: Path,
    nico: str | None,
    env: dict[str, str] | None = None,
    exporter: str | None = None,
    overrides: tuple[Override, ...] = (),
) -> Config:
    exporter_path = None
    if exporter is not None:
        exporter_path = tmp_path / "exporter.yaml"
        exporter_path.write_text(exporter)
    return load_config(
        exporter_path,
        env or {},
        overrides,
        nicocli_file=None if nico is None else nicocli_file(tmp_path, nico),
    )


def error(
    tmp_path: Path, nico: str | None, env: dict[str, str] | None = None, exporter: str | None = None
) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, nico, env, exporter)
    return info.value.message


def secret(value: Any) -> str:
    return str(value.get_secret_value())


# --- nicocli's file ----------------------------------------------------------------------------------


def test_the_sample_config_maps_key_for_key(tmp_path: Path) -> None:
    api = load(tmp_path, SAMPLE).api
    assert (api.url, api.org, api.api_name, api.credential_kind) == (
        "http://localhost:8388",
        "test-org",
        "nico",
        "oidc",
    )
    assert api.oidc is not None
    assert (api.oidc.token_url, api.oidc.client_id, secret(api.oidc.client_secret)) == (
        TOKEN_URL,
        "nico-api",
        "nico-local-secret",
    )
    assert api.oidc.scope == "openid"  # what nicocli asks for (auth.go:463, :476)


@pytest.mark.parametrize(
    ("auth", "kind", "expected"),
    [
        # Each of nicocli's four options (README "Configuration").
        ("token: eyJ.direct.token", "token", {"token": "eyJ.direct.token"}),
        (
            "token_command: /usr/local/bin/get-nico-token.sh",
            "token_command",
            {"token_command": "/usr/local/bin/get-nico-token.sh"},
        ),
        ("api_key: {key: nvapi-abc}", "api_key", {"api_key.key": "nvapi-abc"}),
        (
            "api_key: {key: legacy-key, authn_url: 'https://authn.example.com/token?service=ngc'}",
            "api_key",
            {"api_key.key": "legacy-key", "api_key.authn_url": "https://authn.example.com/token?service=ngc"},
        ),
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_id: nico-api, username: ops, password: pw}}",
            "oidc",
            {"oidc.username": "ops", "oidc.password": "pw"},
        ),
        # What `nicocli login` leaves behind: the renewable source wins over its cached token
        # (LoginFromConfig, auth.go:189-199).
        (
            "token: cached-by-login\n  token_command: get-token",
            "token_command",
            {"token_command": "get-token"},
        ),
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_id: nico-api, client_secret: s, token: old.jwt.x,"
            " refresh_token: rt-1, expires_at: '2026-01-01T00:00:00Z'}",
            "oidc",
            {"oidc.refresh_token": "rt-1", "oidc.client_secret": "s"},
        ),
        ("api_key: {key: nvapi-k, token: nvapi-k}", "api_key", {"api_key.key": "nvapi-k"}),
        # Nothing renewable: the token nicocli would send (GetAuthToken, config.go:139-150).
        ("oidc: {token: persisted.oidc.token}", "token", {"token": "persisted.oidc.token"}),
        ("api_key: {token: persisted-ngc-token}", "token", {"token": "persisted-ngc-token"}),
    ],
)
def test_each_auth_option(tmp_path: Path, auth: str, kind: str, expected: dict[str, str]) -> None:
    api = load(tmp_path, f"api: {{base: https://nico.example.com, org: acme}}\nauth:\n  {auth}\n").api
    assert api.credential_kind == kind
    for dotted, value in expected.items():
        node: Any = api
        for part in dotted.split("."):
            node = getattr(node, part)
        assert (secret(node) if hasattr(node, "get_secret_value") else node) == value


def test_errors_name_the_nicocli_file_and_key(tmp_path: Path) -> None:
    message = error(tmp_path, "api: {base: ftp://nico, org: acme}\nauth: {token: t0k3n}\n")
    assert message.startswith("api.url: must be an http(s) URL")
    assert f"(from {tmp_path / '.nico' / 'config.yaml'} api.base)" in message
    legacy = error(
        tmp_path, "api: {base: https://n.example.com, org: acme}\nauth: {api_key: {key: legacy}}\n"
    )
    assert legacy.startswith("api.api_key.authn_url: required for a legacy NGC key")


def test_a_missing_file_is_empty_unless_named(tmp_path: Path) -> None:
    env = {"NICO_BASE_URL": "https://nico.example.com", "NICO_ORG": "acme", "NICO_TOKEN": "t0k3n"}
    absent = tmp_path / "absent.yaml"
    assert load_config(None, env, nicocli_file=absent).api.credential_kind == "token"
    with pytest.raises(ConfigError, match="nicocli config file not found"):
        load_config(None, env, nicocli_file=absent, nicocli_required=True)


# --- the NICO_* variables ----------------------------------------------------------------------------

# env.go:53-164, by hand: variable -> the exporter key it sets.
VARIABLES = [
    ("NICO_BASE_URL", "https://nico.example.com", "url"),
    ("NICO_ORG", "acme", "org"),
    ("NICO_API_NAME", "carbide", "api_name"),
]


@pytest.mark.parametrize(("name", "value", "key"), VARIABLES)
def test_connection_variables(tmp_path: Path, name: str, value: str, key: str) -> None:
    env = {
        "NICO_BASE_URL": "https://other.example.com",
        "NICO_ORG": "other",
        "NICO_TOKEN": "t0k3n",
        name: value,
    }
    assert getattr(load(tmp_path, None, env).api, key) == value


def test_credential_variables(tmp_path: Path) -> None:
    base = {"NICO_BASE_URL": "https://nico.example.com", "NICO_ORG": "acme"}
    api = load(tmp_path, None, base | {"NICO_TOKEN": "t0k3n"}).api
    assert secret(api.token) == "t0k3n"
    api = load(tmp_path, None, base | {"NICO_TOKEN_COMMAND": "get-token"}).api
    assert api.token_command == "get-token"
    # The alias, and the canonical name winning over it (env.go:77-99).
    assert load(tmp_path, None, base | {"NICO_AUTH_SCRIPT": "alias"}).api.token_command == "alias"
    both = base | {"NICO_AUTH_SCRIPT": "alias", "NICO_TOKEN_COMMAND": "canonical"}
    assert load(tmp_path, None, both).api.token_command == "canonical"
    oidc = base | {"NICO_TOKEN_URL": TOKEN_URL, "NICO_CLIENT_ID": "nico-api", "NICO_CLIENT_SECRET": "s3"}
    api = load(tmp_path, None, oidc).api
    assert api.oidc is not None and (api.oidc.client_id, secret(api.oidc.client_secret)) == ("nico-api", "s3")
    password = base | {
        "NICO_TOKEN_URL": TOKEN_URL,
        "NICO_CLIENT_ID": "nico-cli",
        "NICO_OIDC_USERNAME": "ops",
        "NICO_OIDC_PASSWORD": "pw",
        "NICO_OIDC_REFRESH_TOKEN": "rt",
    }
    api = load(tmp_path, None, password).api
    assert api.oidc is not None and api.oidc.username == "ops" and secret(api.oidc.refresh_token) == "rt"
    api = load(
        tmp_path, None, base | {"NICO_API_KEY": "legacy", "NICO_AUTHN_URL": "https://authn.example.com/t"}
    ).api
    assert api.api_key is not None and api.api_key.authn_url == "https://authn.example.com/t"
    # Without a token URL anywhere, the pair is NICo's own /auth/login client, as before.
    api = load(tmp_path, None, base | {"NICO_CLIENT_ID": "exporter", "NICO_CLIENT_SECRET": "s3"}).api
    assert (api.credential_kind, api.client_id) == ("nico_login", "exporter")


def test_nicocli_secret_in_the_environment_completes_its_file(tmp_path: Path) -> None:
    """The usual nicocli set-up: the file names the issuer, the secret comes from the shell."""
    text = f"api: {{base: https://nico.example.com, org: acme}}\nauth: {{oidc: {{token_url: {TOKEN_URL}, client_id: c}}}}\n"
    api = load(tmp_path, text, {"NICO_CLIENT_SECRET": "from-env"}).api
    assert api.oidc is not None and secret(api.oidc.client_secret) == "from-env"
    assert api.client_secret is None


@pytest.mark.parametrize(
    ("auth", "env", "check"),
    [
        # The password grant's user from the shell (NICO_OIDC_USERNAME / PASSWORD, env.go:119-128).
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_id: nico-cli}}",
            {"NICO_OIDC_USERNAME": "ops", "NICO_OIDC_PASSWORD": "pw"},
            lambda api: api.oidc.username == "ops" and api.oidc.client_id == "nico-cli",
        ),
        # The client id from the shell makes the file's token URL an OIDC source (HasOIDCConfig
        # after ApplyEnvOverrides).
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_secret: s}}",
            {"NICO_CLIENT_ID": "from-env"},
            lambda api: api.oidc.client_id == "from-env" and api.oidc.token_url == TOKEN_URL,
        ),
        # The same kind from both: the variable wins key by key, the file fills the rest.
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_id: c, client_secret: s}}",
            {"NICO_TOKEN_URL": "https://other.example.com/token"},
            lambda api: api.oidc.token_url == "https://other.example.com/token" and api.oidc.client_id == "c",
        ),
        # A legacy key in the file, its exchange URL from the shell.
        (
            "api_key: {key: legacy}",
            {"NICO_AUTHN_URL": "https://authn.example.com/token"},
            lambda api: api.api_key.authn_url == "https://authn.example.com/token",
        ),
        # Another kind from the shell wins outright, as nicocli's --token does.
        (
            f"oidc: {{token_url: {TOKEN_URL}, client_id: c, client_secret: s}}",
            {"NICO_TOKEN": "t0k3n"},
            lambda api: api.credential_kind == "token" and api.oidc is None,
        ),
    ],
)
def test_nicocli_variables_over_nicocli_file(
    tmp_path: Path, auth: str, env: dict[str, str], check: Any
) -> None:
    api = load(tmp_path, f"api: {{base: https://nico.example.com, org: acme}}\nauth:\n  {auth}\n", env).api
    assert check(api)


def test_a_lone_client_id_does_not_spoil_another_source(tmp_path: Path) -> None:
    env = {
        "NICO_BASE_URL": "https://n.example.com",
        "NICO_ORG": "acme",
        "NICO_TOKEN": "t0k3n",
        "NICO_CLIENT_ID": "nico-api",
    }
    assert load(tmp_path, None, env).api.credential_kind == "token"


# --- precedence ----------------------------------------------------------------------------------------


def test_precedence_of_every_layer(tmp_path: Path) -> None:
    """flags > NICO_EXPORTER_* > NICO_* > the exporter's file > nicocli's file, key by key."""
    nico = "api: {base: https://from-nicocli.example.com, org: nicocli-org, name: nicocli-name}\nauth: {token: t}\n"
    exporter = "api: {url: https://from-file.example.com, org: file-org}\n"
    env = {
        "NICO_BASE_URL": "https://from-nico-env.example.com",
        "NICO_EXPORTER_API__URL": "https://from-exporter-env.example.com",
    }
    config = load(
        tmp_path, nico, env, exporter, (Override("api.url", "https://from-flag.example.com", "--flag"),)
    )
    assert (config.api.url, config.api.org, config.api.api_name) == (
        "https://from-flag.example.com",
        "file-org",  # the exporter's file over nicocli's
        "nicocli-name",  # set nowhere else
    )
    assert load(tmp_path, nico, env, exporter).api.url == "https://from-exporter-env.example.com"
    env.pop("NICO_EXPORTER_API__URL")
    assert load(tmp_path, nico, env, exporter).api.url == "https://from-nico-env.example.com"
    assert load(tmp_path, nico, {}, exporter).api.url == "https://from-file.example.com"
    assert load(tmp_path, nico, {}, "api: {org: file-org}\n").api.url == "https://from-nicocli.example.com"


def test_nicocli_credentials_only_when_nothing_above_names_a_source(tmp_path: Path) -> None:
    """A workstation's nicocli login does not fight the exporter's own credentials."""
    config = load(tmp_path, SAMPLE, {}, "api: {token_file: /run/secrets/nico-token}\n")
    assert config.api.credential_kind == "token_file" and config.api.url == "http://localhost:8388"
    # NICO_TOKEN beats nicocli's file, as it beats nicocli's own config in nicocli
    # (commands.go:1176-1192).
    assert load(tmp_path, SAMPLE, {"NICO_TOKEN": "t0k3n"}).api.credential_kind == "token"
    # Two sources the exporter was told about directly stay an error naming both.
    message = error(
        tmp_path, None, {"NICO_TOKEN": "t0k3n"}, "api: {url: https://n.example.com, org: a, token_file: /t}\n"
    )
    assert (
        message
        == "api: more than one credential source (api.token (from NICO_TOKEN), api.token_file): set exactly one"
    )


def test_check_config_reads_the_nicocli_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("NICO_")]:
        monkeypatch.delenv(name)
    path = nicocli_file(tmp_path, SAMPLE)
    assert cli.main(["check-config", "--nico-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "auth: oidc" in out and "api: http://localhost:8388 org test-org" in out
    monkeypatch.setenv("NICO_CONFIG", str(tmp_path / "absent.yaml"))
    assert cli.main(["check-config"]) == 1
    assert "nicocli config file not found" in capsys.readouterr().err


# --- the real command line ---------------------------------------------------------------------------


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NICO_")}
    return env | {"HOME": str(home), "PYTHONUNBUFFERED": "1"} | extra


@pytest.fixture
def served() -> Any:
    clock = ManualClock()
    sim = Simulation(
        SimulatorConfig(org="acme", scenario=ScenarioConfig.quiet(sites=1, racks_per_site=1)), clock=clock
    )
    site = sim.flow_site_ids()[0]
    task = sim.create_task(site, sim.racks(site)[0].id, "firmware_update", outcome="stuck")
    clock.advance(30)
    with serve_app(create_app(sim)) as url:
        yield url, task


@pytest.mark.parametrize("how", ["oidc-file-secret-in-env", "variables-only", "ngc-key-in-file"])
def test_tasks_list_with_only_nicocli_configuration(tmp_path: Path, served: Any, how: str) -> None:
    """`nico-task-exporter tasks list` as a nicocli user runs it: no exporter config at all."""
    url, task = served
    home = tmp_path / "home"
    extra: dict[str, str] = {}
    if how == "oidc-file-secret-in-env":
        nicocli_file(
            home,
            f"api:\n  base: {url}\n  org: acme\nauth:\n  oidc:\n"
            f"    token_url: {url}/realms/nico/protocol/openid-connect/token\n    client_id: nico-exporter\n",
        )
        extra = {"NICO_CLIENT_SECRET": "sim-secret"}
    elif how == "variables-only":
        home.mkdir()
        extra = {
            "NICO_BASE_URL": url,
            "NICO_ORG": "acme",
            "NICO_TOKEN_URL": f"{url}/realms/nico/protocol/openid-connect/token",
            "NICO_CLIENT_ID": "nico-cli",
            "NICO_OIDC_USERNAME": "operator@example.com",
            "NICO_OIDC_PASSWORD": "sim-password",
        }
    else:
        nicocli_file(
            home,
            f"api: {{base: {url}, org: acme}}\nauth:\n  api_key:\n    key: sim-ngc-key\n"
            f"    authn_url: {url}/ngc/token\n",
        )
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "tasks", "list"],
        env=_clean_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert task in done.stdout
    assert "sim-secret" not in done.stdout + done.stderr and "sim-password" not in done.stdout + done.stderr
