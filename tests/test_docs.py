"""``docs/metrics.md`` is generated from ``FAMILIES``: it must match what the generator renders now."""

from __future__ import annotations

from exporter.metrics import FAMILIES
from tools.metrics_doc import DOC_PATH, REFERENCE_FLEET, fleet_series, render_metrics_doc


def test_metrics_doc_is_up_to_date() -> None:
    on_disk = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    assert on_disk == render_metrics_doc(), (
        "docs/metrics.md differs from exporter/metrics.py: run `python -m tools.metrics_doc` and commit the result"
    )


def test_metrics_doc_lists_every_family_and_the_fleet_figure() -> None:
    doc = render_metrics_doc()
    for family in FAMILIES:
        assert f"| `{family.name}` | {family.type} |" in doc
    total = sum(fleet_series(REFERENCE_FLEET).values())
    assert f"**{total:,} series**" in doc
    assert REFERENCE_FLEET.describe() in doc
