"""Draw the dashboard's panels from a test Prometheus' data as one SVG (no Grafana, no plotting library).

Each panel becomes a small line chart of its queries over [start, end] (query_range), with the panel's
title, the value range and a legend: a picture of what Grafana would show, drawn from the same PromQL.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from finetune_observability import dashboard, promql

from tests.harness.prometheus import LocalPrometheus

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H, COLS, PAD = 420, 210, 3, 14


def _legend(fmt: str, labels: Mapping[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def _fmt(v: float, unit: str) -> str:
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if abs(v) < 1024 or suffix == "GiB":
                return f"{v:.0f} {suffix}" if suffix == "B" else f"{v:.1f} {suffix}"
            v /= 1024
    suffix = " s" if unit == "s" else ""
    if v == 0:
        return "0" + suffix
    if abs(v) >= 100:
        return f"{v:.0f}{suffix}"
    if abs(v) >= 1:
        return f"{v:.2f}{suffix}"
    return f"{v:.3g}{suffix}"


def collect(
    prom: LocalPrometheus, values: Mapping[str, str], start: float, end: float, step: str = "2s"
) -> list[dict[str, Any]]:
    """Every panel's series over [start, end]: [{title, unit, series: [(legend, [(t, v)])]}]."""
    panels = []
    for p in dashboard.PANELS:
        series = []
        for t in p.targets:
            expr = promql.substitute(t.expr, values)
            for s in prom.query_range(expr, start, end, step):
                pts = [
                    (float(ts), float(v))
                    for ts, v in s["values"]
                    if not math.isnan(float(v)) and not math.isinf(float(v))
                ]
                if pts:
                    series.append((_legend(t.legend, s["metric"]), pts))
        panels.append({"title": p.title, "unit": p.unit, "series": series})
    return panels


def svg(panels: list[dict[str, Any]], title: str, start: float, end: float, gap: float = 6.0) -> str:
    rows = math.ceil(len(panels) / COLS)
    width, height = COLS * W + PAD, rows * H + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{PAD}" y="24" font-size="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, panel in enumerate(panels):
        x0, y0 = PAD + (i % COLS) * W, 40 + (i // COLS) * H
        pw, ph = W - PAD, H - PAD
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#cccccc"/>')
        name = html.escape(panel["title"])
        out.append(f'<text x="{x0 + 6}" y="{y0 + 15}" font-weight="bold">{name}</text>')
        # plot area
        ax, ay, aw, ah = x0 + 56, y0 + 24, pw - 66, ph - 70
        out.append(f'<rect x="{ax}" y="{ay}" width="{aw}" height="{ah}" fill="#ffffff" stroke="#dddddd"/>')
        series = panel["series"]
        if not series:
            out.append(
                f'<text x="{ax + aw / 2}" y="{ay + ah / 2}" text-anchor="middle" fill="#999999">'
                "no data</text>"
            )
            continue
        vals = [v for _, pts in series for _, v in pts]
        lo, hi = min(0.0, min(vals)), max(vals)
        if hi == lo:
            hi = lo + 1
        for frac in (0.0, 0.5, 1.0):
            yy = ay + ah - frac * ah
            out.append(f'<line x1="{ax}" y1="{yy:.1f}" x2="{ax + aw}" y2="{yy:.1f}" stroke="#eeeeee"/>')
            out.append(
                f'<text x="{ax - 4}" y="{yy + 4:.1f}" text-anchor="end" fill="#555555">'
                f"{html.escape(_fmt(lo + frac * (hi - lo), panel['unit']))}</text>"
            )
        span = max(end - start, 1.0)
        for k, (legend, pts) in enumerate(series[:8]):
            color = COLORS[k % len(COLORS)]
            # A gap in the data (a pod gone, a series not yet there) breaks the line, as in Grafana.
            segments: list[list[tuple[float, float]]] = [[]]
            for t, v in pts:
                if segments[-1] and t - segments[-1][-1][0] > gap:
                    segments.append([])
                segments[-1].append((t, v))
            for seg in segments:
                xy = [(ax + (t - start) / span * aw, ay + ah - (v - lo) / (hi - lo) * ah) for t, v in seg]
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
                if len(seg) == 1:
                    cx, cy = coords.split(",")
                    out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
                else:
                    out.append(
                        f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>'
                    )
            lx, ly = x0 + 6 + (k % 2) * (pw // 2), y0 + ph - 30 + (k // 2) * 12
            if k < 4:
                out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}"/>')
                label = html.escape(legend[:34])
                out.append(f'<text x="{lx + 14}" y="{ly - 3}" fill="#333333">{label}</text>')
        if len(series) > 4:
            out.append(
                f'<text x="{x0 + pw - 6}" y="{y0 + 15}" text-anchor="end" fill="#777777">'
                f"{len(series)} series</text>"
            )
        minutes = (end - start) / 60
        out.append(
            f'<text x="{ax + aw}" y="{ay + ah + 12}" text-anchor="end" fill="#777777">'
            f"last {minutes:.0f} min</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
