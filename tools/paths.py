"""Where the generated files live: the repository the tools run from (never an installed package)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The mixin's outputs (exporter/mixin/command.py names them), committed with the shipped variables.
RULES_PATH = ROOT / "alerts" / "nico-task-exporter.rules.yml"
PROMETHEUS_RULE_PATH = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
DASHBOARD_DIR = ROOT / "dashboards"
