"""What a scraper sees: a published snapshot rendered and parsed back with prometheus_client's parsers.

Tests assert on these parsed bodies, so they check the bytes ``/metrics`` serves, not the
exporter's data structures.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import Format
from exporter.snapshot import Snapshot


class Scrape:
    """One scrape of ``snapshot``: its text body, parsed, with the registry-like lookups tests use."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        # Rendered at the moment of publishing: both formats show the same snapshot age (0).
        self.now = snapshot.published_at
        self.text = snapshot.render(Format.TEXT, now=self.now)
        parsed = text_string_to_metric_families(self.text.decode())
        self.families: list[Metric] = list(parsed)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        wanted = labels or {}
        for family in self.families:
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return None

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of ``name``: (its labels, its value)."""
        return [
            (dict(sample.labels), float(sample.value))
            for family in self.families
            for sample in family.samples
            if sample.name == name
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of ``name`` whose labels include ``labels``."""
        found = [v for have, v in self.samples(name) if labels.items() <= have.items()]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def openmetrics(self) -> bytes:
        body = self.snapshot.render(Format.OPENMETRICS, now=self.now)
        list(om_parser.text_string_to_metric_families(body.decode()))  # type: ignore[no-untyped-call]  # parses or raises
        return body
