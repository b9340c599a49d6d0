"""The ``nico-task-exporter`` command: Go-exporter flag names on argparse subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exporter import __version__, logs
from exporter.addresses import parse_listen_address

if TYPE_CHECKING:
    from exporter.configload import Override
    from exporter.demo import DemoOptions
    from exporter.simulator import Simulation

log = logging.getLogger("exporter")

DEFAULT_SIMULATOR_ADDRESS = "127.0.0.1:8080"


def listen_address(value: str) -> tuple[str, int]:
    """argparse type for ``--web.listen-address``."""
    try:
        return parse_listen_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weights(value: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in value.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"want OP=WEIGHT,... not {value!r}") from None


def _ranges(value: str) -> dict[str, tuple[float, float]]:
    try:
        out: dict[str, tuple[float, float]] = {}
        for item in value.split(","):
            family, span = item.split("=", 1)
            low, high = span.split(":", 1)
            out[family.strip()] = (float(low), float(high))
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"want FAMILY=MIN:MAX,... not {value!r}") from None


def _site_fault(value: str) -> tuple[int, dict[str, Any]]:
    from exporter.simulator.fleet import parse_site_fault

    try:
        return parse_site_fault(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_range(value: str) -> tuple[int, int]:
    low, sep, high = value.partition(":")
    try:
        bounds = (int(low), int(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {value!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {value!r}")
    return bounds


def _common(parser: argparse.ArgumentParser) -> None:
    # No defaults here: absent flags leave the config file's ``log:`` section in charge.
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default=None,
        choices=["debug", "info", "warn", "error"],
        help="default info",
    )
    parser.add_argument(
        "--log.format", dest="log_format", default=None, choices=["logfmt", "json"], help="default logfmt"
    )


def _simulator_flags(parser: argparse.ArgumentParser, *, default_speed: float) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        type=listen_address,
        default=listen_address(DEFAULT_SIMULATOR_ADDRESS),
        help=f"where the simulated NICo API listens (default {DEFAULT_SIMULATOR_ADDRESS})",
    )
    parser.add_argument("--org", default="acme", help="the org in /v2/org/{org}/nico (default acme)")
    parser.add_argument("--seed", type=int, default=7, help="seed of every random choice (default 7)")
    parser.add_argument("--sites", type=int, default=2, help="Flow-enabled sites (default 2)")
    parser.add_argument("--racks", type=int, default=8, help="GB200 NVL72 racks per site (default 8)")
    parser.add_argument(
        "--site-racks",
        type=_site_racks,
        default={},
        metavar="N,N,...",
        help="racks of each Flow site in turn, where it differs from --racks (e.g. 100,10,10)",
    )
    parser.add_argument("--non-flow-sites", type=int, default=1, help="extra sites without Flow (default 1)")
    parser.add_argument(
        "--speed",
        type=float,
        default=default_speed,
        help=f"simulated seconds per second (default {default_speed:g})",
    )
    parser.add_argument("--arrivals-per-rack-per-hour", type=float, default=3.0)
    parser.add_argument("--failure-rate", type=float, default=0.08)
    parser.add_argument(
        "--tray-scoped-fraction",
        type=float,
        default=0.3,
        help="share of submissions made on tray endpoints (tasks on disjoint trays run at once)",
    )
    parser.add_argument("--stuck-tasks", type=int, default=1)
    parser.add_argument("--history-hours", type=float, default=2.0)
    parser.add_argument(
        "--horizon-hours", type=float, default=None, help="stop new tasks after this many hours"
    )
    parser.add_argument(
        "--operation-mix",
        type=_weights,
        default=None,
        metavar="OP=W,...",
        help="relative weights of operations, e.g. power_on=3,power_off=3,firmware_update=1",
    )
    parser.add_argument(
        "--stage-seconds",
        type=_ranges,
        default=None,
        metavar="FAMILY=MIN:MAX,...",
        help="simulated seconds per stage by family (power, firmware, bring_up), e.g. power=2:10",
    )
    parser.add_argument(
        "--quiet-scenario",
        action="store_true",
        help="inventory only: no task traffic, no history, no stuck tasks",
    )
    parser.add_argument(
        "--token",
        action="append",
        default=None,
        help="a bearer token the API accepts (repeatable; default sim-token)",
    )
    parser.add_argument("--client-id", default="nico-exporter", help="client id accepted by POST /auth/login")
    parser.add_argument("--client-secret", default="sim-secret", help="its secret")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    parser.add_argument(
        "--no-service-accounts",
        action="store_true",
        help='POST /auth/login by clientId answers 401 "Service accounts are not enabled"',
    )
    parser.add_argument(
        "--no-keycloak", action="store_true", help="no /auth routes (a server without Keycloak: 404)"
    )
    parser.add_argument(
        "--site-fault",
        type=_site_fault,
        action="append",
        default=[],
        metavar="INDEX:KEY=VALUE,...",
        help="fleet faults of the INDEX-th (0-based) Flow site, repeatable, e.g. 1:silent=true,"
        "siteStatus=Error or 2:clockSkewSeconds=8 (keys: silent, workflowTimeoutSeconds, siteStatus, "
        "offlineAfterSeconds, agentLacks, flowLacks, clockSkewSeconds, unorderedInventory, emptyCancel; "
        "list items joined by +, e.g. agentLacks=runs+rules)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="enable NICo's per-IP limiter at this many req/s (default off, as in NICo)",
    )
    parser.add_argument(
        "--rate-limit-burst", type=int, default=30, help="the limiter's burst (default 30, as in NICo)"
    )
    parser.add_argument(
        "--nico-version",
        choices=["2.0", "1.6"],
        default="2.0",
        help="the REST server to behave as (default 2.0; 1.6: no reports, no includeReport)",
    )
    parser.add_argument(
        "--task-runs",
        action="store_true",
        help="serve NICo main's Task Runs (/task/run); v2.0 has none (both serve /task/rule)",
    )
    parser.add_argument(
        "--scenario",
        choices=["rollout-gate-trip", "slow-nvswitch", "steady-firmware"],
        default=None,
        help="a preset (rollout-gate-trip: a phased firmware Task Run over one site whose safety gate "
        "trips, implies --task-runs, uses --racks and --seed; slow-nvswitch: steady firmware updates "
        "on 3 sites of 8 racks, site-b's NVSwitch stage 5x slower from 720 s on, uses --seed; "
        "steady-firmware: the same without the slow-down)",
    )
    parser.add_argument(
        "--task-list-paging",
        action="store_true",
        help="task lists accept pageNumber/pageSize as the OpenAPI spec says (no NICo release does)",
    )
    parser.add_argument(
        "--history-tasks-per-rack",
        type=_int_range,
        default=(0, 0),
        metavar="MIN:MAX",
        help="finished tasks each rack has before the simulation starts, e.g. 50:500",
    )
    parser.add_argument(
        "--list-order",
        choices=["heap", "insertion", "shuffle"],
        default="heap",
        help="row order of task lists (default heap: updated rows move to the end)",
    )
    parser.add_argument(
        "--leak-queue-timeout",
        type=float,
        default=0.0,
        help="simulated seconds before a Waiting leak-detection task expires (0: Flow's 1 h)",
    )
    parser.add_argument(
        "--legacy-routes-only", action="store_true", help="serve /rack/task/{id} only (NICo before 1.6)"
    )


def demo_flags(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` command's flags (``python -m tools.demo_stack`` takes them too)."""
    _common(parser)
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        type=listen_address,
        default=listen_address("127.0.0.1:9842"),
        help="where the exporter's /metrics listens (default 127.0.0.1:9842)",
    )
    parser.add_argument(
        "--simulator.listen-address",
        dest="simulator_listen",
        type=listen_address,
        default=listen_address(DEFAULT_SIMULATOR_ADDRESS),
        help=f"where the simulated NICo API listens (default {DEFAULT_SIMULATOR_ADDRESS})",
    )
    parser.add_argument("--speed", type=float, default=10.0, help="how much faster tasks run than in reality")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--racks", type=int, default=8)
    parser.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines")


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """What the ``demo`` flags ask for."""
    from exporter.demo import DemoOptions

    return DemoOptions(
        simulator=args.simulator_listen,
        exporter=args.listen,
        speed=args.speed,
        seed=args.seed,
        sites=args.sites,
        racks=args.racks,
        status_interval=args.status_interval,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nico-task-exporter",
        description="Prometheus metrics and OpenTelemetry traces for NVIDIA Infra Controller (NICo) tasks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    simulate = sub.add_parser("simulate", help="serve the built-in NICo simulator over HTTP")
    _common(simulate)
    _simulator_flags(simulate, default_speed=1.0)

    demo = sub.add_parser(
        "demo", help="the simulator and the exporter against it, time accelerated, metrics on localhost"
    )
    demo_flags(demo)

    run = sub.add_parser("run", help="run the exporter (the default command)")
    _common(run)
    config_flag(run)
    run.add_argument(
        "--web.listen-address",
        dest="listen",
        default=None,
        help="where /metrics listens (overrides web.listen_address; default :9842)",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="exporter-toolkit web config: TLS and basic auth (overrides web.config_file)",
    )
    run.add_argument(
        "--shard", type=int, default=None, help="this replica's shard (overrides sharding.shard)"
    )
    run.add_argument(
        "--metrics.allowlist",
        dest="metrics_allowlist",
        default=None,
        help="comma-separated families (names or regexes) to emit, all others left out",
    )
    run.add_argument(
        "--metrics.denylist",
        dest="metrics_denylist",
        default=None,
        help="comma-separated families (names or regexes) to leave out",
    )
    run.add_argument(
        "--metrics.task-status",
        dest="metrics_task_status",
        choices=("one_hot", "current"),
        default=None,
        help="nico_task_status: every status, 0 or 1 (one_hot), or only the current one (overrides "
        "metrics.task_status)",
    )
    run.add_argument(
        "--total-shards",
        type=int,
        default=None,
        help="how many replicas share the racks (overrides sharding.total_shards)",
    )

    tasks = sub.add_parser("tasks", help="list tasks, show one with its stage/step timings, cancel one")
    _common(tasks)
    config_flag(tasks)
    nicocli_flag(tasks)
    tasks.add_argument("action", choices=["list", "show", "cancel", "runs"])
    tasks.add_argument("task_id", nargs="?", help="the task (show, cancel); for runs: list or show")
    tasks.add_argument("run_id", nargs="?", help="the Task Run (runs show)")
    tasks.add_argument("--site", default=None, help="site id (default: every Flow-enabled site)")
    tasks.add_argument("--rack", default=None, help="rack id (list; default: every rack of the site)")
    tasks.add_argument("--all", action="store_true", help="list finished tasks too, not only active ones")
    tasks.add_argument("--yes", action="store_true", help="really cancel (cancel does nothing without it)")

    # --- check-config ---
    check = sub.add_parser(
        "check-config", help="validate the config file and environment overrides, then exit"
    )
    _common(check)
    config_flag(check)
    nicocli_flag(check)
    check.add_argument(
        "--online",
        action="store_true",
        help="also log in, list the sites and say what the exporter will see on each",
    )
    # --- end check-config ---

    mixin = sub.add_parser(
        "mixin", help="write the alert rules and Grafana dashboards with your selectors and thresholds"
    )
    mixin.add_argument(
        "--config",
        dest="mixin_config",
        metavar="FILE",
        default=None,
        help="your variables, over the shipped ones (default: the shipped ones; see --print-config)",
    )
    mixin.add_argument(
        "--output-dir",
        metavar="DIR",
        default=None,
        help="where to write nico-task-exporter.rules.yml, prometheusrule.yaml and dashboards/*.json",
    )
    mixin.add_argument(
        "--print-config", action="store_true", help="print the shipped variables file to start from"
    )
    return parser


# --- config (check-config; ``config_flag`` is for every command that reads the config) ---
def config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config.file PATH`` into ``args.config_file``; absent, the config comes from the environment."""
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        default=None,
        help="YAML configuration file (default: none, configure through NICO_EXPORTER_* env alone)",
    )


def nicocli_flag(parser: argparse.ArgumentParser) -> None:
    """``--nico-config PATH``: nicocli's config file under the exporter's (docs/credentials.md)."""
    parser.add_argument(
        "--nico-config",
        dest="nico_config",
        metavar="PATH",
        default=None,
        help="nicocli's config file, read under the exporter's own configuration "
        "(default: $NICO_CONFIG, else ~/.nico/config.yaml if it exists)",
    )


def nicocli_file(args: argparse.Namespace) -> dict[str, Any]:
    """``load_config``'s nicocli arguments for ``--nico-config`` (a named file must exist)."""
    from exporter.nicocli import default_path

    if args.nico_config:
        return {"nicocli_file": args.nico_config, "nicocli_required": True}
    path, named = default_path(os.environ)
    return {"nicocli_file": path, "nicocli_required": named}


def _check_config(args: argparse.Namespace) -> int:
    from exporter.config import ConfigError
    from exporter.configload import load_config

    try:
        config = load_config(args.config_file, **nicocli_file(args))
    except ConfigError as exc:
        print(f"config error: {exc.message}", file=sys.stderr)
        return 1
    print(f"config OK: {args.config_file or '<environment only>'} ({config.describe()})")
    if getattr(args, "online", False):
        from exporter.probe import check_online

        return asyncio.run(check_online(config, sys.stdout))
    return 0


# --- end config ---


def _traffic_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from exporter.simulator.scenario import DEFAULT_STAGE_SECONDS

    out: dict[str, Any] = {}
    if args.operation_mix:
        out["operation_mix"] = args.operation_mix
    if args.stage_seconds:
        out["stage_seconds"] = {**DEFAULT_STAGE_SECONDS, **args.stage_seconds}
    return out


def _site_racks(text: str) -> dict[int, int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want rack counts like 100,10,10, got {text!r}") from None
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError("rack counts must not be negative")
    return dict(enumerate(counts))


def _simulation(args: argparse.Namespace) -> Simulation:
    from exporter.simulator import FaultConfig, ScenarioConfig, Simulation, SimulatorConfig
    from exporter.simulator.fleet import NO_FAULTS, SiteFaults

    if args.scenario == "rollout-gate-trip":
        scenario = ScenarioConfig.rollout_gate_trip(racks_per_site=args.racks, seed=args.seed)
    elif args.scenario == "slow-nvswitch":
        scenario = ScenarioConfig.slow_nvswitch(seed=args.seed)
    elif args.scenario == "steady-firmware":
        scenario = ScenarioConfig.steady_firmware(seed=args.seed)
    elif args.quiet_scenario:
        scenario = ScenarioConfig.quiet(
            sites=args.sites, racks_per_site=args.racks, non_flow_sites=args.non_flow_sites, seed=args.seed
        )
    else:
        scenario = ScenarioConfig(
            seed=args.seed,
            sites=args.sites,
            racks_per_site=args.racks,
            non_flow_sites=args.non_flow_sites,
            arrivals_per_rack_per_hour=args.arrivals_per_rack_per_hour,
            failure_rate=args.failure_rate,
            tray_scoped_fraction=args.tray_scoped_fraction,
            stuck_tasks=args.stuck_tasks,
            history_hours=args.history_hours,
            history_tasks_per_rack=args.history_tasks_per_rack,
            horizon_hours=args.horizon_hours,
            site_racks=args.site_racks,
            **_traffic_overrides(args),
        )
    site_faults: dict[int, SiteFaults] = {}
    for index, changes in args.site_fault:
        if index >= scenario.sites:
            raise SystemExit(f"--site-fault: there is no Flow site {index} (Flow sites: {scenario.sites})")
        site_faults[index] = site_faults.get(index, NO_FAULTS).updated(changes)
    config = SimulatorConfig(
        org=args.org,
        scenario=scenario,
        faults=FaultConfig(),
        speed=args.speed,
        tokens=tuple(args.token or ("sim-token",)),
        client_credentials={args.client_id: args.client_secret},
        require_auth=not args.no_auth,
        nico_version=args.nico_version,
        task_list_paging=args.task_list_paging,
        task_runs=args.task_runs or bool(scenario.rollouts),
        rate_limit=args.rate_limit > 0,
        rate_limit_rate=args.rate_limit or 10.0,
        rate_limit_burst=args.rate_limit_burst,
        list_order=args.list_order,
        legacy_routes_only=args.legacy_routes_only,
        leak_queue_timeout_s=args.leak_queue_timeout,
        site_faults=site_faults,
        keycloak=not args.no_keycloak,
        service_accounts=not args.no_service_accounts,
    )
    for token in config.tokens:
        logs.register_secret(token)
    logs.register_secret(args.client_secret)
    return Simulation(config)


async def _serve(args: argparse.Namespace) -> None:
    from exporter.simulator.server import simulator_server

    sim = _simulation(args)
    host, port = args.listen
    server = simulator_server(sim, host, port)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host  # noqa: S104
    base = f"http://{shown}:{port}"
    auth = "no auth" if args.no_auth else f"Authorization: Bearer {sim.config.tokens[0]}"
    print(f"NICo simulator: {base}/v2/org/{args.org}/nico  ({auth})", flush=True)
    print(f"ground truth:   {base}/_sim/truth", flush=True)
    await server.serve()


COMMANDS = ("run", "simulate", "demo", "check-config", "tasks", "mixin")


def _tasks(args: argparse.Namespace) -> int:
    from exporter.config import ConfigError
    from exporter.configload import load_config
    from exporter.taskcmd import run_tasks_command

    if args.action in ("show", "cancel") and not args.task_id:
        print(f"tasks {args.action} needs a task id", file=sys.stderr)
        return 2
    if args.action == "runs" and (
        args.task_id not in ("list", "show") or (args.task_id == "show") != bool(args.run_id)
    ):
        print("usage: tasks runs list | tasks runs show RUN_ID", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config_file, **nicocli_file(args))
    except ConfigError as exc:
        print(f"config error: {exc.message}", file=sys.stderr)
        return 1
    if args.action == "runs":
        from exporter.taskcmd import run_runs_command

        return asyncio.run(run_runs_command(config, args.task_id, site=args.site, run_id=args.run_id))
    return asyncio.run(
        run_tasks_command(
            config,
            args.action,
            site=args.site,
            rack=args.rack,
            task_id=args.task_id,
            active_only=not args.all,
            confirmed=args.yes,
        )
    )


def run_overrides(args: argparse.Namespace) -> list[Override]:
    """The run command's flags as settings over the config file and the environment."""
    from exporter.configload import Override

    overrides: list[Override] = []
    if args.shard is not None:
        overrides.append(Override("sharding.shard", args.shard, "--shard"))
    if args.total_shards is not None:
        overrides.append(Override("sharding.total_shards", args.total_shards, "--total-shards"))
    # An empty value leaves the setting to the file and the environment, as an empty
    # NICO_EXPORTER_* variable does.
    if args.listen:
        overrides.append(Override("web.listen_address", args.listen, "--web.listen-address"))
    if args.web_config_file:
        overrides.append(Override("web.config_file", args.web_config_file, "--web.config.file"))
    for flag, key in ((args.metrics_allowlist, "allowlist"), (args.metrics_denylist, "denylist")):
        if flag is not None:
            patterns = [p.strip() for p in flag.split(",") if p.strip()]
            overrides.append(Override(f"metrics.{key}", patterns, f"--metrics.{key}"))
    if args.metrics_task_status is not None:
        overrides.append(Override("metrics.task_status", args.metrics_task_status, "--metrics.task-status"))
    return overrides


def _run(args: argparse.Namespace) -> int:
    from exporter import app
    from exporter.config import ConfigError
    from exporter.configload import load_config

    try:
        config = load_config(args.config_file, overrides=run_overrides(args))
    except ConfigError as exc:
        logs.setup(args.log_level or "info", args.log_format or "logfmt")
        log.error("config error", extra={"error": exc.message})
        return 1
    logs.setup(args.log_level or config.log.level, args.log_format or config.log.format)
    from exporter.tracing import TracingConfigError
    from exporter.web import WebConfigError

    try:
        asyncio.run(app.run(config))
    except (TracingConfigError, WebConfigError) as exc:  # found at start-up: one line, not a traceback
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")  # run is the default command
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            return _run(args)
        except KeyboardInterrupt:
            return 0
    if args.command == "mixin":
        from exporter.mixin.command import run_mixin_command  # the generators load only here

        return run_mixin_command(args.mixin_config, args.output_dir, args.print_config)
    # The tasks command prints for a person: only warnings and errors go to the log.
    quiet = args.command == "tasks"
    logs.setup(args.log_level or ("warn" if quiet else "info"), args.log_format or "logfmt")
    try:
        if args.command == "tasks":
            return _tasks(args)
        if args.command == "simulate":
            asyncio.run(_serve(args))
        elif args.command == "demo":
            from exporter.demo import run_demo

            asyncio.run(run_demo(demo_options(args)))
        elif args.command == "check-config":  # --- check-config ---
            return _check_config(args)
    except KeyboardInterrupt:
        return 0
    return 0
