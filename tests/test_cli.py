"""The command line: flags over the config file and the environment, defaults, exit codes.

``check-config`` output is in test_config.py, ``check-config --online`` in test_probe.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import __version__, app, cli
from exporter.config import Config

TOKEN = "tok-3kd93nfw9s8df7"
FILE = f"""\
api: {{url: "https://nico.example.com", org: acme, token: {TOKEN}}}
sharding: {{shard: 0, total_shards: 2}}
web: {{listen_address: ":9000"}}
metrics: {{task_status: one_hot}}
log: {{level: warn}}
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NICO_* variables from the machine; the root logger as it was (cli.main configures it)."""
    for name in list(os.environ):
        if name.startswith("NICO_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(FILE, encoding="utf-8")
    return path


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """``run`` stops short of the exporter: the config it would run with is recorded instead."""
    configs: list[Config] = []

    async def fake_run(config: Config) -> None:
        configs.append(config)

    monkeypatch.setattr(app, "run", fake_run)
    return configs


def run(config_file: Path, *flags: str) -> list[str]:
    return ["run", "--config.file", str(config_file), *flags]


# --------------------------------------------------------------------------- flags and defaults


def test_without_flags_the_file_decides(config_file: Path, started: list[Config]) -> None:
    assert cli.main(run(config_file)) == 0
    [config] = started
    assert (config.sharding.shard, config.sharding.total_shards) == (0, 2)
    assert config.web.listen_address == ":9000"
    assert config.web.config_file is None
    assert (config.metrics.allowlist, config.metrics.denylist) == ([], [])
    assert config.metrics.task_status == "one_hot"
    assert logging.getLogger().level == logging.WARNING  # the file's log.level


def test_run_flags_default_to_no_override() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert cli.run_overrides(args) == []
    assert (args.config_file, args.log_level, args.log_format) == (None, None, None)


def test_every_run_flag_overrides_its_setting(
    config_file: Path, tmp_path: Path, started: list[Config]
) -> None:
    web_config = tmp_path / "web.yml"
    web_config.write_text("{}\n")
    flags = (
        "--shard=1",
        "--total-shards=3",
        "--web.listen-address=127.0.0.1:9300",
        f"--web.config.file={web_config}",
        "--metrics.allowlist=nico_task_.*, nico_tasks",
        "--metrics.denylist=nico_task_info",
        "--metrics.task-status=current",
        "--log.level=debug",
    )
    assert cli.main(run(config_file, *flags)) == 0
    [config] = started
    assert (config.sharding.shard, config.sharding.total_shards) == (1, 3)
    assert config.web.listen_address == "127.0.0.1:9300"
    assert config.web.config_file == web_config
    assert config.metrics.allowlist == ["nico_task_.*", "nico_tasks"]
    assert config.metrics.denylist == ["nico_task_info"]
    assert config.metrics.task_status == "current"
    assert logging.getLogger().level == logging.DEBUG


def test_a_flag_wins_over_the_environment_which_wins_over_the_file(
    config_file: Path, started: list[Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NICO_EXPORTER_WEB__LISTEN_ADDRESS", ":9100")
    monkeypatch.setenv("NICO_EXPORTER_SHARDING", '{"shard": 1, "total_shards": 4}')
    assert cli.main(run(config_file)) == 0
    assert cli.main(run(config_file, "--web.listen-address", ":9200", "--shard", "3")) == 0
    from_env, from_flags = started
    assert from_env.web.listen_address == ":9100"
    assert (from_env.sharding.shard, from_env.sharding.total_shards) == (1, 4)
    assert from_flags.web.listen_address == ":9200"
    # The flag refines the section the environment set as a whole.
    assert (from_flags.sharding.shard, from_flags.sharding.total_shards) == (3, 4)


def test_flags_are_not_turned_into_environment_variables(config_file: Path, started: list[Config]) -> None:
    before = dict(os.environ)
    assert cli.main(run(config_file, "--shard", "1", "--metrics.task-status", "current")) == 0
    assert dict(os.environ) == before


def test_an_empty_flag_value_leaves_the_setting_alone(config_file: Path, started: list[Config]) -> None:
    # As an empty NICO_EXPORTER_* variable does (and as the flags did when they went through it).
    assert cli.main(run(config_file, "--web.listen-address=", "--web.config.file=")) == 0
    [config] = started
    assert (config.web.listen_address, config.web.config_file) == (":9000", None)


def test_an_empty_list_flag_empties_the_list(tmp_path: Path, started: list[Config]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FILE.replace("task_status: one_hot", "denylist: [nico_task_info]"), encoding="utf-8")
    assert cli.main(run(path, "--metrics.denylist=")) == 0
    assert started[0].metrics.denylist == []


def test_run_is_the_default_command(config_file: Path, started: list[Config]) -> None:
    assert cli.main(["--config.file", str(config_file), "--shard", "1"]) == 0
    assert started[0].sharding.shard == 1


# --------------------------------------------------------------------------- exit codes


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"nico-task-exporter {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        pytest.param(["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag", id="unknown-flag"),
        pytest.param(["--no-such-flag"], "unrecognized arguments: --no-such-flag", id="unknown-default-run"),
        pytest.param(["run", "--shard", "one"], "--shard: invalid int value: 'one'", id="not-an-int"),
        pytest.param(["run", "--metrics.task-status", "all"], "invalid choice: 'all'", id="bad-choice"),
        pytest.param(["run", "--log.level", "trace"], "invalid choice: 'trace'", id="bad-log-level"),
        pytest.param(["check-config", "--shard", "1"], "unrecognized arguments: --shard", id="run-only-flag"),
    ],
)
def test_bad_command_lines_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_bad_config_exits_1_naming_the_field(
    tmp_path: Path, started: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FILE + "polling: {active_interval: fast}\n", encoding="utf-8")
    assert cli.main(run(path)) == 1
    assert started == []
    err = capsys.readouterr().err
    assert 'msg="config error" error="polling.active_interval: invalid duration \'fast\'' in err
    assert TOKEN not in err


def test_a_bad_flag_value_exits_1_naming_the_field_and_the_flag(
    config_file: Path, started: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(run(config_file, "--shard", "5")) == 1
    assert started == []
    assert "sharding.shard: 5 is out of range for total_shards 2 (want 0..1) (from --shard)" in (
        capsys.readouterr().err
    )


def test_a_denylist_typo_on_the_command_line_exits_1_naming_the_field(
    config_file: Path, started: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(run(config_file, "--metrics.denylist", "nico_tray_task")) == 1
    assert started == []
    assert (
        "metrics.denylist: 'nico_tray_task' matches no metric family (see docs/metrics.md)"
        " (from --metrics.denylist)" in capsys.readouterr().err
    )


def test_a_missing_web_config_file_exits_1_naming_the_flag(
    config_file: Path, tmp_path: Path, started: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(run(config_file, "--web.config.file", str(tmp_path / "absent.yml"))) == 1
    assert started == []
    assert f"web.config_file: file not found: {tmp_path / 'absent.yml'} (from --web.config.file)" in (
        capsys.readouterr().err
    )


def test_a_missing_config_file_exits_1(
    tmp_path: Path, started: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(run(tmp_path / "absent.yaml")) == 1
    assert started == []
    assert "config file not found: " in capsys.readouterr().err


def test_tasks_show_without_a_task_id_exits_2(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tasks", "show", "--config.file", str(config_file)]) == 2
    assert capsys.readouterr().err == "tasks show needs a task id\n"


def test_a_web_config_that_fails_at_start_up_is_one_error_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The web config exists (so the config validates) but is wrong: the server refuses it."""
    from exporter.simulator.harness import free_port

    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "api: {url: 'http://127.0.0.1:9', org: acme, token: t}\n"
        f"web: {{listen_address: '127.0.0.1:{free_port()}', config_file: '{web}'}}\n"
    )
    assert cli.main(["run", "--config.file", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot start" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv", [["tasks", "runs"], ["tasks", "runs", "show"], ["tasks", "runs", "list", "x"]]
)
def test_tasks_runs_without_its_subcommand_or_id_exits_2(
    argv: list[str], config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--config.file", str(config_file)]) == 2
    assert capsys.readouterr().err == "usage: tasks runs list | tasks runs show RUN_ID\n"
