"""The Prometheus text format (0.0.4) and OpenMetrics (1.0.0), written from plain data.

Pure functions, no I/O and no shared state: the poller's thread uses them to pre-render each
task's lines once, when the task changes (:mod:`exporter.snapshot`), and the HTTP threads to write
a scrape from an immutable snapshot. A gauge's or counter's sample line is the same in both
formats, so a task's lines are rendered once and serve both; headers, counter family names,
histogram exemplars and the ``# EOF`` trailer are where the formats differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Format(Enum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return OPENMETRICS_CONTENT_TYPE if self is Format.OPENMETRICS else TEXT_CONTENT_TYPE

    @classmethod
    def for_accept(cls, accept: str) -> Format:
        """OpenMetrics when the scraper asks for it (as Prometheus does), else the text format."""
        for part in accept.split(","):
            media = part.split(";")[0].strip()
            if media == "application/openmetrics-text":
                return cls.OPENMETRICS
        return cls.TEXT


def escape_label_value(value: str) -> str:
    """Backslash, newline and double quote escaped, as both formats require."""
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """A sample value: Python's shortest round-tripping form, ``+Inf``/``-Inf``/``NaN``."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``{name="value",...}``, or the empty string for no labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def sample_line(name: str, labels: str, value: float) -> str:
    return f"{name}{labels} {format_value(value)}\n"


@dataclass(frozen=True)
class FamilySpec:
    """A family as the contract declares it (the name carries ``_total`` for counters)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def base_name(self) -> str:
        """The OpenMetrics family name: a counter's without its ``_total``."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def header(self, fmt: Format) -> bytes:
        """``# HELP`` and ``# TYPE``, once per family."""
        if fmt is Format.OPENMETRICS:
            help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
            return f"# HELP {self.base_name} {help_text}\n# TYPE {self.base_name} {self.type}\n".encode()
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {self.name} {help_text}\n# TYPE {self.name} {self.type}\n".encode()


@dataclass(frozen=True)
class Exemplar:
    """A histogram bucket's exemplar (OpenMetrics only): labels, value, timestamp."""

    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp: float | None

    def text(self) -> str:
        labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in self.labels)
        stamp = f" {format_value(self.timestamp)}" if self.timestamp is not None else ""
        return f" # {{{labels}}} {format_value(self.value)}{stamp}"


@dataclass(frozen=True)
class HistogramData:
    """One histogram series: cumulative bucket counts (the last is ``+Inf``) and exemplars."""

    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    exemplars: tuple[Exemplar | None, ...]


def render_samples(spec: FamilySpec, samples: Iterable[tuple[tuple[str, ...], float]]) -> bytes:
    """The sample lines of a gauge or counter family (no header)."""
    name, names = spec.name, spec.labels
    return "".join(sample_line(name, label_text(names, labels), value) for labels, value in samples).encode()


def render_histograms(spec: FamilySpec, series: Iterable[HistogramData], fmt: Format) -> bytes:
    """The sample lines of a histogram family (no header); exemplars only in OpenMetrics."""
    out: list[str] = []
    names = spec.labels
    with_exemplars = fmt is Format.OPENMETRICS
    for hist in series:
        prefix = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, hist.labels, strict=True))
        sep = "," if prefix else ""
        for index, count in enumerate(hist.cumulative):
            bound = "+Inf" if index == len(hist.bounds) else format_value(hist.bounds[index])
            exemplar = hist.exemplars[index] if with_exemplars else None
            line = f'{spec.name}_bucket{{{prefix}{sep}le="{bound}"}} {format_value(count)}'
            out.append(line + (exemplar.text() if exemplar is not None else "") + "\n")
        plain = f"{{{prefix}}}" if prefix else ""
        out.append(f"{spec.name}_count{plain} {format_value(hist.cumulative[-1])}\n")
        out.append(f"{spec.name}_sum{plain} {format_value(hist.sum)}\n")
    return "".join(out).encode()


EOF_MARKER = b"# EOF\n"
