"""PNG pictures of the dashboards' main panels, drawn from a live Prometheus with matplotlib (the ``docs`` extra).

``python -m tools.render_png PROMETHEUS_URL`` draws ``docs/img/<uid>.png`` for docs/dashboards.md,
from the dashboards with the shipped variables.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.mixin.dashboards.model import DashboardSpec, PanelSpec, Query
from exporter.mixin.dashboards.queries import example_values, substitute
from exporter.mixin.dashboards.specs import DASHBOARDS
from tools.paths import ROOT

IMG_DIR = ROOT / "docs" / "img"

# --- PNG rendering ---------------------------------------------------------------------------


def _legend(template: str, labels: Mapping[str, str]) -> str:
    if template in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


class _Prometheus:
    def __init__(self, url: str, end: float, span: float) -> None:
        import httpx

        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=30)
        self.end, self.span = end, span

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": expr, "time": str(self.end)})

    def range(self, expr: str) -> list[dict[str, Any]]:
        step = max(self.span / 120, 2.0)
        params = {"query": expr, "start": str(self.end - self.span), "end": str(self.end), "step": str(step)}
        return self._get("/api/v1/query_range", params)

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        body = self._client.get(path, params=params).json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params['query']}: {body}")
        return list(body["data"]["result"])


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "s":
        if 0 < abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        return f"{value:.1f} s"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "dateTimeAsIso":
        from datetime import UTC, datetime

        return datetime.fromtimestamp(value / 1000, UTC).strftime("%H:%M:%S")
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _render_png(spec: DashboardSpec, prom: _Prometheus, values: Mapping[str, str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    panels = [p for row in spec.rows for p in row.panels if p.main]
    columns = 3
    places: list[tuple[int, int]] = []  # (first slot, span) of each panel in a 3-column grid
    slot = 0
    for panel in panels:
        span = 3 if panel.kind == "table" or panel.w == 24 else 1
        if slot % columns + span > columns:
            slot += columns - slot % columns
        places.append((slot, span))
        slot += span
    rows = -(-slot // columns)
    fig = plt.figure(figsize=(19, 4.1 * rows), facecolor="#111217")
    fig.suptitle(f"{spec.title}  ({spec.uid})", color="white", fontsize=15, x=0.01, ha="left")
    grid = fig.add_gridspec(rows, columns, hspace=0.55, wspace=0.28)
    for panel, (first, span) in zip(panels, places, strict=True):
        ax: Axes = fig.add_subplot(grid[first // columns, first % columns : first % columns + span])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel.title, color="white", fontsize=11, loc="left")
        ax.tick_params(colors="#ccccdc", labelsize=8)
        for side in ax.spines.values():
            side.set_color("#333")
        exprs = [(substitute(q.expr, values), q) for q in panel.queries]
        try:
            _draw(panel, exprs, prom, ax)
        except Exception as exc:  # a panel that cannot render says so instead of sinking the page
            ax.text(0.5, 0.5, f"error: {exc}"[:120], color="red", ha="center", transform=ax.transAxes)
    for extra in range(slot, rows * columns):
        fig.add_subplot(grid[extra // columns, extra % columns]).set_visible(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor(), bbox_inches="tight")
    plt.close(fig)


def _no_data(ax: Any, why: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        "No data" + (f"\n{why}" if why else ""),
        color="#8e8e8e",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=10,
        wrap=True,
    )


def _draw(panel: PanelSpec, exprs: Sequence[tuple[str, Query]], prom: _Prometheus, ax: Any) -> None:
    from datetime import datetime

    from matplotlib.patches import Rectangle

    colors = [
        "#73bf69",
        "#f2cc0c",
        "#8ab8ff",
        "#ff9830",
        "#f2495c",
        "#5794f2",
        "#b877d9",
        "#fade2a",
        "#37872d",
        "#c4162a",
        "#1f60c4",
        "#8f3bb8",
    ]
    if panel.kind == "timeseries":
        series = [(s, q) for expr, q in exprs for s in prom.range(expr)]
        if not series:
            _no_data(ax, exprs[0][1].may_be_empty)
            return
        base = None
        for i, (s, q) in enumerate(sorted(series, key=lambda sq: _legend(sq[1].legend, sq[0]["metric"]))):
            xs = [float(t) for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            label = _legend(q.legend, s["metric"])
            color = colors[i % len(colors)]
            if panel.stacked:
                import numpy as np

                # Range results skip steps where a series is absent: that is 0, not a gap to bridge.
                if base is None:
                    base_t = np.array(sorted({float(t) for s2, _q in series for t, _ in s2["values"]}))
                    base = np.zeros_like(base_t)
                present = {float(t): float(v) for t, v in s["values"]}
                vals = np.array([present.get(t, 0.0) for t in base_t])
                ax.fill_between(
                    base_t,
                    base,
                    base + vals,
                    color=color,
                    alpha=0.55,
                    label=label,
                    step="post",
                    linewidth=0,
                )
                base = base + vals
            else:
                ax.plot(xs, ys, color=color, linewidth=1.4, label=label)
        ax.set_xlim(prom.end - prom.span, prom.end)
        ax.xaxis.set_major_formatter(lambda v, _pos: datetime.fromtimestamp(v).strftime("%H:%M"))
        ax.yaxis.set_major_formatter(lambda v, _pos: _fmt(v, panel.unit))
        ax.grid(color="#2a2d33", linewidth=0.6)
        ax.legend(
            fontsize=7,
            loc="upper left",
            facecolor="#181b1f",
            labelcolor="#ccccdc",
            edgecolor="#333",
            ncol=2 if len(series) > 6 else 1,
        )
        return
    if panel.kind == "heatmap":
        import numpy as np

        buckets = prom.range(exprs[0][0])
        if not buckets:
            _no_data(ax)
            return
        bounds = sorted({float(s["metric"]["le"]) for s in buckets})
        finite = [b for b in bounds if b != float("inf")]
        by_le = {float(s["metric"]["le"]): s["values"] for s in buckets}
        stamps = sorted({float(t) for s in buckets for t, _ in s["values"]})
        cum = np.zeros((len(bounds), len(stamps)))
        index = {t: i for i, t in enumerate(stamps)}
        for row_i, le in enumerate(bounds):
            for t, v in by_le[le]:
                cum[row_i, index[float(t)]] = float(v)
        cells = np.diff(np.vstack([np.zeros(len(stamps)), cum]), axis=0).clip(min=0)
        labels = [_fmt(b, "s") for b in finite] + ["+Inf"]
        ax.imshow(
            cells,
            aspect="auto",
            origin="lower",
            cmap="Oranges",
            interpolation="nearest",
            extent=(0, len(stamps), 0, len(bounds)),
        )
        ax.set_yticks([i + 0.5 for i in range(len(bounds))], labels=labels)
        ticks = list(range(0, len(stamps), max(len(stamps) // 5, 1)))
        ax.set_xticks(ticks, labels=[datetime.fromtimestamp(stamps[i]).strftime("%H:%M") for i in ticks])
        ax.set_ylabel("step duration (≤)", color="#ccccdc", fontsize=8)
        return
    results = [(s, q) for expr, q in exprs for s in prom.instant(expr)]
    if not results:
        _no_data(ax, exprs[0][1].may_be_empty)
        return
    if panel.kind in ("stat", "bargauge"):
        items = sorted(
            ((_legend(q.legend, s["metric"]), float(s["value"][1])) for s, q in results), key=lambda kv: kv[0]
        )
        if panel.kind == "bargauge" or len(items) > 4:
            names = [k for k, _ in items][-14:]
            bar_values = [v for _, v in items][-14:]
            ax.barh(names, bar_values, color=[_threshold_color(panel, v) for v in bar_values])
            for y, v in enumerate(bar_values):
                ax.text(v, y, " " + _fmt(v, panel.unit), color="white", va="center", fontsize=8)
            ax.xaxis.set_major_formatter(lambda v, _pos: _fmt(v, panel.unit))
            ax.tick_params(axis="y", labelsize=7)
            return
        ax.set_xticks([])
        ax.set_yticks([])
        width = 1 / len(items)
        for i, (name, value) in enumerate(items):
            mapped = _mapped(panel, value)
            ax.add_patch(
                Rectangle(
                    (i * width + 0.01, 0.05),
                    width - 0.02,
                    0.9,
                    color=_threshold_color(panel, value),
                    transform=ax.transAxes,
                )
            )
            ax.text(
                i * width + width / 2,
                0.62,
                mapped or _fmt(value, panel.unit),
                color="white",
                fontsize=20,
                ha="center",
                va="center",
                transform=ax.transAxes,
                weight="bold",
            )
            ax.text(
                i * width + width / 2,
                0.25,
                name,
                color="white",
                fontsize=9,
                ha="center",
                transform=ax.transAxes,
            )
        return
    _draw_table(panel, exprs, results, ax)


def _mapped(panel: PanelSpec, value: float) -> str:
    for mapping in panel.mappings:
        hit = mapping["options"].get(str(int(value)) if value == int(value) else str(value))
        if hit:
            return str(hit["text"])
    return ""


def _threshold_color(panel: PanelSpec, value: float) -> str:
    palette = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "blue": "#1f60c4"}
    color = panel.thresholds[0][0]
    for name, bound in panel.thresholds[1:]:
        if bound is not None and value >= bound:
            color = name
    return palette.get(color, color)


def _draw_table(
    panel: PanelSpec, exprs: Sequence[tuple[str, Query]], results: Sequence[Any], ax: Any
) -> None:
    """A table the way the panel's organize transformation shows it (merged on shared labels)."""
    organize = next((t for t in panel.transformations if t["id"] == "organize"), None)
    rename: dict[str, str] = organize["options"]["renameByName"] if organize else {}
    order: dict[str, int] = organize["options"]["indexByName"] if organize else {}
    hidden = set(organize["options"]["excludeByName"]) if organize else set()
    # A column's unit override (by its shown name), as Grafana applies it.
    units = {
        o["matcher"]["options"]: prop["value"]
        for o in panel.overrides
        if o["matcher"]["id"] == "byName"
        for prop in o["properties"]
        if prop["id"] == "unit"
    }
    rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for expr_i, (_expr, _q) in enumerate(exprs):
        value_col = "Value" if len(exprs) == 1 else f"Value #{'ABCDEFGHIJ'[expr_i]}"
        for s in (r for r in results if r[1] is _q):
            key = tuple(
                sorted(
                    (k, v)
                    for k, v in s[0]["metric"].items()
                    if k in ("site_id", "rack_id", "task_id", "run_id")
                )
            )
            row = rows.setdefault(key, {})
            row.update({k: v for k, v in s[0]["metric"].items() if k not in hidden})
            unit = units.get(
                rename.get(value_col, value_col), panel.unit if value_col in ("Value", "Value #A") else "none"
            )
            row[value_col] = (
                _fmt(float(s[0]["value"][1]), unit) if unit != "none" else f"{float(s[0]['value'][1]):.0f}"
            )
            row["_sort"] = s[0]["value"][1] if value_col in ("Value", "Value #A") else row.get("_sort", "0")
    body = [r for r in rows.values() if "Value" in r or "Value #A" in r]
    body.sort(key=lambda r: float(r["_sort"]), reverse=True)
    columns = sorted(
        {c for r in body for c in r if c != "_sort" and c not in hidden}, key=lambda c: order.get(c, 99)
    )
    ax.axis("off")
    if not body:
        _no_data(ax)
        return
    cells = [
        [(r.get(c, "")[:70] + ("…" if len(r.get(c, "")) > 70 else "")) for c in columns] for r in body[:10]
    ]
    table = ax.table(
        cellText=cells,
        colLabels=[rename.get(c, c) for c in columns],
        loc="upper left",
        cellLoc="left",
        colLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor("#333")
        cell.set_facecolor("#22252b" if r == 0 else "#181b1f")
        cell.get_text().set_color("white")


def render_pngs(prometheus_url: str, window_s: float = 900.0, out_dir: Path = IMG_DIR) -> list[Path]:
    """Draw each dashboard's main panels from ``prometheus_url`` over the last ``window_s`` seconds."""
    import time

    prom = _Prometheus(prometheus_url, end=time.time(), span=window_s)
    values = example_values(window=f"{max(int(window_s / 15), 60)}s")
    values["__range"] = f"{int(window_s)}s"
    written = []
    for spec in DASHBOARDS:
        path = out_dir / f"{spec.uid}.png"
        _render_png(spec, prom, values, path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.render_png", description=__doc__.split("\n")[0])
    parser.add_argument("prometheus_url", metavar="PROMETHEUS_URL", help="the Prometheus to query")
    parser.add_argument("--window", type=float, default=900.0, help="seconds of history the PNGs show")
    args = parser.parse_args(argv)
    for path in render_pngs(args.prometheus_url, args.window):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
