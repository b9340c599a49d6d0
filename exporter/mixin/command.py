"""``nico-task-exporter mixin``: write the rule file, the PrometheusRule and the dashboards."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.mixin import alerts, dashboards

RULES_FILE = "nico-task-exporter.rules.yml"
PROMETHEUS_RULE_FILE = "prometheusrule.yaml"
DASHBOARD_DIR = "dashboards"


def render_outputs(config: alerts.AlertConfig) -> dict[str, str]:
    """Path relative to the output directory -> text, for every file the mixin writes."""
    return {
        RULES_FILE: alerts.render_rules(config),
        PROMETHEUS_RULE_FILE: alerts.render_prometheus_rule(config),
        **{f"{DASHBOARD_DIR}/{name}": text for name, text in dashboards.render_all(config).items()},
    }


def run_mixin_command(config_file: str | None, output_dir: str | None, print_config: bool) -> int:
    """Print the shipped variables, or render with ``config_file``'s over them into ``output_dir``.

    Returns the exit code: 1 for a variables file that is unreadable or wrong (the message names
    the variable), 2 when there is nothing to do.
    """
    if print_config:
        sys.stdout.write(alerts.CONFIG_PATH.read_text(encoding="utf-8"))
        return 0
    if output_dir is None:
        print("error: give --output-dir DIR (or --print-config)", file=sys.stderr)
        return 2
    try:
        config = alerts.load_alert_config(Path(config_file) if config_file else None)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(output_dir)
    for name, text in render_outputs(config).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0
