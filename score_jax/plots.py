"""Line charts as PNG with PIL only (no matplotlib): metric against NFE or training step.

`save_charts(path, charts)` draws one panel per `Chart` side by side: axes with ticks (decades on
a log axis), one coloured polyline with markers per series, dashed horizontal reference lines
(baselines) and a legend.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from score_jax import paths

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#98df8a"]
HLINE_COLORS = ["#000000", "#b00000", "#00a000", "#a0a0a0", "#0000b0"]   # dashed baselines
_PANEL = (560, 420)
_MARGIN = dict(left=64, right=16, top=30, bottom=46)


@dataclasses.dataclass
class Chart:
    """One panel: series {label: (xs, ys)}, reference lines {label: y}, axis names and scales."""

    title: str
    series: dict
    hlines: dict = dataclasses.field(default_factory=dict)
    xlabel: str = "NFE"
    ylabel: str = ""
    log_x: bool = True
    log_y: bool = True


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Tick values inside [lo, hi]: 1-2-5 decades on a log axis, ~6 round steps otherwise."""
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [(m, m * 10.0 ** e) for e in decades for m in (1, 2, 5)]
        ticks = [(m, t) for m, t in ticks if lo <= t <= hi]
        # Many decades: label the powers of ten only.
        return [t for m, t in ticks if len(ticks) <= 8 or m == 1]
    step = 10.0 ** math.floor(math.log10((hi - lo) / 5.0))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 7)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0e}" if (abs(v) >= 1e4 or 0 < abs(v) < 1e-2) else f"{v:g}"


def _range(values: list[float], log: bool) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    lo, hi = min(vals), max(vals)
    if log:
        return lo / 1.3, hi * 1.3
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _draw_panel(draw: ImageDraw.ImageDraw, chart: Chart, x0: int, font) -> None:
    """Draw one chart into the panel whose left edge is x0."""
    w, h = _PANEL
    left, right = x0 + _MARGIN["left"], x0 + w - _MARGIN["right"]
    top, bottom = _MARGIN["top"], h - _MARGIN["bottom"]
    xs = [x for xs_, _ in chart.series.values() for x in xs_]
    ys = [y for _, ys_ in chart.series.values() for y in ys_] + list(chart.hlines.values())
    (xlo, xhi), (ylo, yhi) = _range(xs, chart.log_x), _range(ys, chart.log_y)
    tx = (lambda v: math.log10(v)) if chart.log_x else (lambda v: v)  # noqa: E731
    ty = (lambda v: math.log10(v)) if chart.log_y else (lambda v: v)  # noqa: E731

    def px(x, y):
        fx = (tx(x) - tx(xlo)) / (tx(xhi) - tx(xlo))
        fy = (ty(y) - ty(ylo)) / (ty(yhi) - ty(ylo))
        return left + fx * (right - left), bottom - fy * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for t in _ticks(xlo, xhi, chart.log_x):
        x, _ = px(t, ylo)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 3 * len(_fmt(t)), bottom + 6), _fmt(t), fill="black", font=font)
    for t in _ticks(ylo, yhi, chart.log_y):
        _, y = px(xlo, t)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left, y, right, y], fill="#e6e6e6")
        draw.text((left - 8 - 6 * len(_fmt(t)), y - 5), _fmt(t), fill="black", font=font)
    draw.text((x0 + w // 2 - 3 * len(chart.title), 8), chart.title, fill="black", font=font)
    draw.text(((left + right) // 2 - 3 * len(chart.xlabel), bottom + 22), chart.xlabel,
              fill="black", font=font)
    draw.text((x0 + 4, top - 20), chart.ylabel, fill="black", font=font)
    legend = []
    for i, (label, (sx, sy)) in enumerate(chart.series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [px(x, y) for x, y in zip(sx, sy) if math.isfinite(y) and (y > 0 or not chart.log_y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        legend.append((label, color, False))
    for j, (label, value) in enumerate(chart.hlines.items()):
        color = HLINE_COLORS[j % len(HLINE_COLORS)]
        _, y = px(xlo, value)
        for x in range(int(left), int(right), 10):
            draw.line([x, y, min(x + 5, right), y], fill=color, width=2)
        legend.append((label, color, True))
    for k, (label, color, dashed) in enumerate(legend):
        y = top + 6 + 12 * k
        draw.line([right - 150, y + 5, right - 134, y + 5], fill=color, width=1 if dashed else 3)
        draw.text((right - 130, y), label, fill="black", font=font)


def save_charts(path: str | os.PathLike, charts: Sequence[Chart]) -> None:
    """Write the charts side by side into one PNG at `path` (local or gs://)."""
    w, h = _PANEL
    image = Image.new("RGB", (w * len(charts), h), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, chart in enumerate(charts):
        _draw_panel(draw, chart, i * w, font)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    paths.write_bytes(path, buf.getvalue())
