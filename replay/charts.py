"""Inline SVG charts for the backtest report: curves on the unit square and a chart per day.

The charts are SVG strings meant to be pasted into an HTML page: no script, no external asset, no
``xmlns`` (HTML parsers do not need it). Colours and dashes come from the page's stylesheet through
class names, which keeps a thousand-point polyline to a few bytes per point. Every piece of text is
escaped here, so callers pass plain strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Frame", "Line", "curve_chart", "daily_chart", "downsample", "legend"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Frame:
    """Pixel geometry of a chart: the SVG size and the margins around the plot area."""

    width: int
    height: int
    left: int = 52
    right: int = 16
    top: int = 12
    bottom: int = 44

    def x(self, value: float, lo: float, hi: float) -> float:
        return self.left + (value - lo) / (hi - lo) * (self.width - self.left - self.right)

    def y(self, value: float, lo: float, hi: float) -> float:
        return self.height - self.bottom - (value - lo) / (hi - lo) * self.plot_height

    @property
    def plot_height(self) -> float:
        return float(self.height - self.top - self.bottom)

    @property
    def plot_right(self) -> float:
        return float(self.width - self.right)

    @property
    def plot_bottom(self) -> float:
        return float(self.height - self.bottom)


@dataclass(frozen=True, slots=True)
class Line:
    """One series: ``css`` names the stylesheet class that gives its colour and dash."""

    label: str
    x: Sequence[float] | FloatArray
    y: Sequence[float | None] | FloatArray
    css: str


def downsample(x: ArrayLike, y: ArrayLike, max_points: int = 1000) -> tuple[FloatArray, FloatArray]:
    """At most ``max_points`` points spread evenly along the curve's length, both ends kept.

    Spacing by length rather than by index matters for ROC curves of a million rows: nearly all
    thresholds sit in the flat, legitimate-only stretches, while the steep start that tells models
    apart has few of them and would vanish under index sampling.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) <= max_points:
        return xs, ys
    along = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(xs), np.diff(ys)))))
    targets = np.linspace(0.0, along[-1], max_points - 1)
    keep = np.unique(np.concatenate(([0], np.searchsorted(along, targets), [len(xs) - 1])))
    keep = keep[keep < len(xs)]
    return xs[keep], ys[keep]


def curve_chart(
    title: str,
    lines: Sequence[Line],
    *,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (420, 360),
) -> str:
    """Curves on the unit square with a grid every 0.2, e.g. ROC or precision-recall."""
    frame = Frame(*size)
    ticks = [i / 5 for i in range(6)]
    parts = [_open(frame, title)]
    for t in ticks:
        x, y = frame.x(t, 0, 1), frame.y(t, 0, 1)
        parts.append(_grid_x(frame, x) + _grid_y(frame, y))
        parts.append(_text(x, frame.plot_bottom + 16, f"{t:.1f}", "mid"))
        parts.append(_text(frame.left - 6, y + 4, f"{t:.1f}", "end"))
    parts.append(_axes(frame))
    for line in lines:
        xs = [frame.x(v, 0, 1) for v in line.x]
        ys = [None if v is None else frame.y(v, 0, 1) for v in line.y]
        parts.append(_polylines(xs, ys, line.css))
    parts.append(_axis_labels(frame, x_label, y_label))
    parts.append("</svg>")
    return "".join(parts)


def daily_chart(
    days: Sequence[str],
    lines: Sequence[Line],
    bars: Sequence[float],
    *,
    title: str,
    y_label: str,
    bar_label: str,
    tips: Sequence[str] | None = None,
    highlight: tuple[int, int] | None = None,
    size: tuple[int, int] = (900, 300),
) -> str:
    """Lines over [0, 1] on the left axis and bars (counts) on the right axis, one slot per day.

    ``lines`` use the day's slot index as x; a None value breaks a line. ``highlight`` shades the
    slots ``first..last`` (inclusive), e.g. a test window; ``tips`` become hover titles of the bars.
    """
    frame = Frame(*size, right=52)
    n = len(days)
    parts = [_open(frame, title)]
    if not n:
        parts.append(_text(frame.width / 2, frame.height / 2, "no labelled days", "mid"))
        parts.append("</svg>")
        return "".join(parts)
    slot = (frame.plot_right - frame.left) / n
    top_count = _nice_ceiling(max(bars, default=0.0))
    if highlight is not None:
        first, last = highlight
        x0 = frame.left + first * slot
        parts.append(
            f'<rect class="window" x="{x0:.1f}" y="{frame.top}" '
            f'width="{(last - first + 1) * slot:.1f}" height="{frame.plot_height:.1f}"/>'
        )
    for i in range(6):
        t = i / 5
        y = frame.y(t, 0, 1)
        parts.append(_grid_y(frame, y))
        parts.append(_text(frame.left - 6, y + 4, f"{t:.1f}", "end"))
        parts.append(_text(frame.plot_right + 6, y + 4, _count(top_count * t), "start"))
    for i, count in enumerate(bars):
        height = count / top_count * frame.plot_height
        tip = f"<title>{escape(tips[i])}</title>" if tips is not None else ""
        parts.append(
            f'<rect class="bar" x="{frame.left + (i + 0.15) * slot:.1f}" '
            f'y="{frame.plot_bottom - height:.1f}" width="{0.7 * slot:.1f}" '
            f'height="{height:.1f}">{tip}</rect>'
        )
    every = max(1, math.ceil(n / 8))
    for i in range(0, n, every):
        x = frame.left + (i + 0.5) * slot
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{frame.plot_bottom}" x2="{x:.1f}" ')
        parts.append(f'y2="{frame.plot_bottom + 4}"/>')
        parts.append(_text(x, frame.plot_bottom + 16, days[i], "mid"))
    parts.append(_axes(frame, right=True))
    for line in lines:
        xs = [frame.left + (float(v) + 0.5) * slot for v in line.x]
        ys = [None if v is None else frame.y(v, 0, 1) for v in line.y]
        parts.append(_polylines(xs, ys, line.css))
    parts.append(_axis_labels(frame, "day", y_label))
    y_mid = frame.top + frame.plot_height / 2
    parts.append(
        f'<text class="label mid" transform="translate({frame.width - 8},{y_mid:.1f}) rotate(90)">'
        f"{escape(bar_label)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def legend(lines: Sequence[Line]) -> str:
    """An HTML legend for ``lines``: a swatch in each line's class, then its label."""
    items = (
        f'<span class="key"><span class="swatch {escape(line.css)}"></span>'
        f"{escape(line.label)}</span>"
        for line in lines
    )
    return f'<div class="legend">{"".join(items)}</div>'


def _open(frame: Frame, title: str) -> str:
    label = escape(title)
    return (
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" width="{frame.width}" '
        f'height="{frame.height}" role="img" aria-label="{label}"><title>{label}</title>'
    )


def _axes(frame: Frame, right: bool = False) -> str:
    x0, x1, y0, y1 = frame.left, frame.plot_right, frame.top, frame.plot_bottom
    path = f"M{x0},{y0}V{y1}H{x1}" + (f"V{y0}" if right else "")
    return f'<path class="axis" d="{path}"/>'


def _grid_x(frame: Frame, x: float) -> str:
    return (
        f'<line class="grid" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.plot_bottom}"/>'
    )


def _grid_y(frame: Frame, y: float) -> str:
    return (
        f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.plot_right}" y2="{y:.1f}"/>'
    )


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{anchor}">{escape(text)}</text>'


def _axis_labels(frame: Frame, x_label: str, y_label: str) -> str:
    x_mid = (frame.left + frame.plot_right) / 2
    y_mid = frame.top + frame.plot_height / 2
    return (
        f'<text class="label mid" x="{x_mid:.1f}" y="{frame.height - 6}">{escape(x_label)}</text>'
        f'<text class="label mid" transform="translate(14,{y_mid:.1f}) rotate(-90)">'
        f"{escape(y_label)}</text>"
    )


def _polylines(xs: Sequence[float], ys: Sequence[float | None], css: str) -> str:
    """A polyline per run of defined points; a lone point between gaps becomes a dot."""
    out: list[str] = []
    run: list[str] = []
    for x, y in [*zip(xs, ys, strict=True), (0.0, None)]:
        if y is not None and math.isfinite(y):
            run.append(f"{x:.1f},{y:.1f}")
            continue
        if len(run) > 1:
            out.append(f'<polyline class="series {escape(css)}" points="{" ".join(run)}"/>')
        elif run:
            cx, cy = run[0].split(",")
            out.append(f'<circle class="dot {escape(css)}" cx="{cx}" cy="{cy}" r="2.5"/>')
        run = []
    return "".join(out)


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (min 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
